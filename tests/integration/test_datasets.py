"""Datasets: every export registered (``datasets``, ``dataset_items``), held-out splits,
exclusions, live frequencies, repeats from a manifest, and ``datasets list|show``.

The traffic is ``test_export``'s 400 synthetic rows, built by rules, so the test works out on
its own which rows become examples, which prompts they share and how often live traffic
asked each.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.db.engine import sqlalchemy_url
from gateway.services.datasets import (
    DatasetError,
    dataset_prompt_keys,
    dataset_reference,
    prompt_key,
    request_prompt_key,
)
from tests.integration.test_export import (
    ROOT,
    ROUTE,
    START,
    expected,
    index_of,
    insert,
    synthetic,
    tier,
    unfit,
    write_routes,
)
from tests.support.db import execute, fetch
from tests.support.process import BIN

Shell = Callable[..., subprocess.CompletedProcess[str]]
ROWS = range(400)


@pytest.fixture
def traffic(clean_db: str) -> str:
    """test_export's 400 rows; the even ones answered by teacher version gpt-a/fp_1, the odd
    ones by gpt-b with no fingerprint."""
    insert(clean_db, [synthetic(i) for i in ROWS])
    execute(
        clean_db,
        "UPDATE requests SET teacher_model_reported = CASE WHEN right(request_id, 1)::int % 2 = 0 "
        "THEN 'gpt-a' ELSE 'gpt-b' END, teacher_fingerprint = CASE WHEN "
        "right(request_id, 1)::int % 2 = 0 THEN 'fp_1' END",
    )
    return clean_db


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_routes(tmp_path / "gateway.yaml")


@pytest.fixture
def shell(traffic: str, config: Path) -> Shell:
    env = {**os.environ, "DATABASE_URL": traffic, "SGW_TEST_APP_KEY": "test-app-key"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["USER"] = "ada"

    def run(command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "shadow-gateway"), *command.split(), "--config", str(config), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    return run


def export(shell: Shell, output: Path, *args: str) -> dict[str, Any]:
    """Export (the route given unless --from-manifest); the manifest of the training file."""
    route = [] if "--from-manifest" in args else ["--route", ROUTE]
    done = shell("export", *route, "--output", str(output), *args)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return manifest_of(output)


def manifest_of(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(
        path.with_name(path.name + ".manifest.json").read_bytes()
    )
    return document


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def key_of_example(example: dict[str, Any]) -> str:
    """The prompt key of an exported example: its messages but the assistant's answer."""
    return prompt_key(example["messages"][:-1], example.get("tools"))


def key_of_row(i: int) -> str | None:
    row = synthetic(i)
    payload = orjson.loads(row["request_payload"]) if row["request_payload"] else None
    return request_prompt_key(row["endpoint"], payload)


def live_counts(indices: Iterable[int]) -> Counter[str]:
    """How many of these rows asked each normalised prompt (failed answers included)."""
    return Counter(key for i in indices if (key := key_of_row(i)) is not None)


def datasets(url: str) -> list[dict[str, Any]]:
    return fetch(url, "SELECT * FROM datasets ORDER BY id")


def items(url: str, dataset_id: int) -> list[dict[str, Any]]:
    return fetch(
        url,
        "SELECT * FROM dataset_items WHERE dataset_id = $1 ORDER BY request_id",
        dataset_id,
    )


def run_service(url: str, call: Callable[[Any], Any]) -> Any:
    async def go() -> Any:
        engine = create_async_engine(sqlalchemy_url(url))
        try:
            async with engine.connect() as connection:
                return await call(connection)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def assert_fails(done: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert done.returncode == code, done
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# --- registration ------------------------------------------------------------------------------


def test_an_export_registers_a_dataset_with_its_items(
    shell: Shell, traffic: str, config: Path, tmp_path: Path
) -> None:
    output = tmp_path / "train.jsonl"
    manifest = export(shell, output)
    kept, _ = expected(ROWS)

    (dataset,) = datasets(traffic)
    assert manifest["dataset_id"] == dataset["id"]
    assert orjson.loads(dataset["manifest"]) == manifest  # the file's manifest, id and all
    assert dataset["route"] == ROUTE
    assert dataset["kind"] == "train"
    assert dataset["split_of"] is None
    assert dataset["created_by"] == "ada" == manifest["created_by"]
    assert dataset["path"] == str(output)
    assert dataset["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    assert dataset["items"] == len(kept) == manifest["examples"]
    assert manifest["config_sha256"] == hashlib.sha256(config.read_bytes()).hexdigest()
    assert manifest["kind"] == "train"

    registered = items(traffic, dataset["id"])
    assert [item["request_id"] for item in registered] == [f"{ROUTE}-{i:05d}" for i in kept]
    assert [item["request_created_at"] for item in registered] == [
        START + timedelta(minutes=15 * i) for i in kept
    ]
    assert [item["prompt_key"] for item in registered] == [key_of_row(i) for i in kept]
    assert sorted(item["prompt_key"] for item in registered) == sorted(
        key_of_example(example) for example in lines(output)
    )
    live = live_counts(ROWS)
    assert [item["frequency"] for item in registered] == [live[key_of_row(i)] for i in kept]

    versions = Counter(i % 2 for i in kept)
    assert manifest["teacher_versions"] == sorted(
        [
            {"model": "gpt-a", "fingerprint": "fp_1", "examples": versions[0]},
            {"model": "gpt-b", "fingerprint": None, "examples": versions[1]},
        ],
        key=lambda version: -version["examples"],
    )
    # reproducible: the window as absolute times, every option that shapes the file
    assert manifest["window"]["since"] == START.isoformat()
    assert manifest["window"]["until"] > (START + timedelta(minutes=15 * 399)).isoformat()
    assert manifest["filters"] | {"route": ROUTE} == {
        "route": ROUTE,
        "since": None,
        "until": None,
        "slices": {},
        "only_disagreements": False,
        "limit": None,
        "mix": None,
        "seed": 0,
        "use_corrections": False,
        "holdout": None,
        "exclude_datasets": [],
        "format": "openai",
    }
    assert manifest["verifier"]["kind"] == "json_schema"


def test_live_frequency_keeps_the_skew_the_dedupe_hides(
    shell: Shell, traffic: str, tmp_path: Path
) -> None:
    # row 2's prompt asked 30 more times (10 of them failed): one example stands for 31
    popular = []
    for n in range(30):
        row = synthetic(2) | {"request_id": f"{ROUTE}-popular-{n:02d}"}
        row["created_at"] = START + timedelta(days=6, minutes=n)
        if n < 10:
            row |= {"teacher_status": 500, "teacher_output": None, "teacher_error": "boom"}
        popular.append(row)
    insert(traffic, popular)
    live = live_counts(ROWS) + Counter({key_of_row(2): 30})

    manifest = export(shell, tmp_path / "all.jsonl")
    frequency = manifest["frequency"]
    registered = items(traffic, manifest["dataset_id"])
    assert all(item["frequency"] == live[item["prompt_key"]] for item in registered)
    assert frequency["prompts"] == manifest["examples"] == len(registered)
    assert frequency["live_requests"] == sum(item["frequency"] for item in registered)
    assert frequency["max"] == 31
    assert frequency["top"][0] == {
        "prompt_key": key_of_row(2),
        "request_id": f"{ROUTE}-00002",
        "frequency": 31,
    }
    assert len(frequency["top"]) == 10
    assert sum(frequency["by_frequency"].values()) == frequency["prompts"]
    assert frequency["by_frequency"]["11-100"] == 1
    assert frequency["by_frequency"]["2"] == sum(1 for i in registered if i["frequency"] == 2)

    # a sample counts every matching row too, not only the sampled ones
    sampled = export(shell, tmp_path / "sample.jsonl", "--limit", "60", "--seed", "4")
    registered = items(traffic, sampled["dataset_id"])
    assert len(registered) == 60
    assert all(item["frequency"] == live[item["prompt_key"]] for item in registered)
    assert sampled["frequency"]["live_requests"] == sum(i["frequency"] for i in registered)


def test_a_dpo_export_registers_too(shell: Shell, traffic: str, tmp_path: Path) -> None:
    execute(
        traffic,
        "INSERT INTO reviews (route, request_id, request_created_at, student, group_key, batch, "
        "created_by, verdict, reviewer, judged_at) SELECT route, request_id, created_at, 's', "
        "request_id, 'b', 'test', 'teacher_correct', 'ada', created_at FROM requests "
        "WHERE request_id IN ('support-bot-00020', 'support-bot-00026')",
    )
    execute(
        traffic,
        "INSERT INTO student_answers (request_id, student, source, created_at, route, endpoint, "
        "student_status, student_output) SELECT request_id, 's', 'live', created_at, route, "
        "endpoint, 'ok', 'nope' FROM requests "
        "WHERE request_id IN ('support-bot-00020', 'support-bot-00026')",
    )
    manifest = export(shell, tmp_path / "pairs.jsonl", "--format", "dpo")
    (dataset,) = datasets(traffic)
    assert manifest["dataset_id"] == dataset["id"]
    assert manifest["pairs"] == 2
    assert dataset["kind"] == "train"
    assert orjson.loads(dataset["manifest"]) == manifest
    registered = items(traffic, dataset["id"])
    assert [(i["request_id"], i["prompt_key"]) for i in registered] == [
        (f"{ROUTE}-00020", key_of_row(20)),
        (f"{ROUTE}-00026", key_of_row(26)),
    ]
    assert manifest["filters"]["format"] == "dpo"

    # --exclude-dataset leaves the pairs of prompts a dataset holds out, counted
    first = export(shell, tmp_path / "some.jsonl", "--until", "2026-11-01T05:10")
    assert key_of_row(20) in {i["prompt_key"] for i in items(traffic, first["dataset_id"])}
    again = export(
        shell,
        tmp_path / "fewer.jsonl",
        *("--format", "dpo", "--exclude-dataset", str(first["dataset_id"])),
    )
    assert again["pairs"] == 1
    assert again["skipped"]["excluded_dataset"] == 1


# --- the held-out split ------------------------------------------------------------------------


def test_holdout_is_stratified_like_live_traffic_and_shares_no_prompt(
    shell: Shell, traffic: str, tmp_path: Path
) -> None:
    output = tmp_path / "train.jsonl"
    manifest = export(shell, output, "--limit", "100", "--holdout", "0.2", "--seed", "5")
    evaluation = tmp_path / "train.eval.jsonl"
    held = manifest_of(evaluation)
    train_examples, eval_examples = lines(output), lines(evaluation)
    assert (len(train_examples), len(eval_examples)) == (80, 20)

    # live: free 60 %, paid 30 %, enterprise 10 %, in each file
    def tiers(examples: list[dict[str, Any]]) -> Counter[str]:
        return Counter(tier(index_of(example)) for example in examples)

    assert tiers(train_examples) == {"free": 48, "paid": 24, "enterprise": 8}
    assert tiers(eval_examples) == {"free": 12, "paid": 6, "enterprise": 2}
    # strata tier x category (120, 120, 80, 40, 40 live rows): 20 % of each stratum's quota
    assert sorted((s["quota"], s["train"], s["eval"]) for s in manifest["strata"]) == [
        (10, 8, 2), (10, 8, 2), (20, 16, 4), (30, 24, 6), (30, 24, 6)
    ]  # fmt: skip
    assert held["strata"] == manifest["strata"]

    # no normalised prompt on both sides: in the files and in the registry
    train_keys = {key_of_example(e) for e in train_examples}
    eval_keys = {key_of_example(e) for e in eval_examples}
    assert (len(train_keys), len(eval_keys)) == (80, 20)
    assert not train_keys & eval_keys
    train_set, eval_set = datasets(traffic)
    assert (train_set["kind"], eval_set["kind"]) == ("train", "eval")
    assert eval_set["split_of"] == train_set["id"] == manifest["dataset_id"]
    assert eval_set["id"] == held["dataset_id"]
    assert eval_set["path"] == str(evaluation)
    assert {i["prompt_key"] for i in items(traffic, train_set["id"])} == train_keys
    assert {i["prompt_key"] for i in items(traffic, eval_set["id"])} == eval_keys
    registered = run_service(traffic, lambda c: dataset_prompt_keys(c, [eval_set["id"]]))
    assert registered == eval_keys

    # both manifests describe their own file and name each other
    assert (manifest["kind"], held["kind"]) == ("train", "eval")
    assert (manifest["examples"], held["examples"]) == (80, 20)
    assert manifest["split"] == held["split"]
    assert manifest["split"]["eval"] == {
        "file": "train.eval.jsonl",
        "dataset_id": eval_set["id"],
        "examples": 20,
        "sha256": hashlib.sha256(evaluation.read_bytes()).hexdigest(),
    }
    assert manifest["split"]["holdout"] == 0.2
    assert held["slices"]["tier"]["enterprise"]["examples"] == 2
    assert manifest["rows_matched"] == 80 + 20 + sum(manifest["dropped"].values())

    # the same seed splits the same way; another seed another way
    again = export(
        shell, tmp_path / "again.jsonl", "--limit", "100", "--holdout", "0.2", "--seed", "5"
    )
    assert again["split"]["eval"]["sha256"] == manifest["split"]["eval"]["sha256"]
    assert again["sha256"] == manifest["sha256"]
    export(shell, tmp_path / "other.jsonl", "--limit", "100", "--holdout", "0.2", "--seed", "6")
    assert {key_of_example(e) for e in lines(tmp_path / "other.eval.jsonl")} != eval_keys


def test_holdout_of_everything_splits_each_stratum(
    shell: Shell, traffic: str, tmp_path: Path
) -> None:
    output = tmp_path / "all.jsonl"
    manifest = export(shell, output, "--holdout", "0.25")
    kept, _ = expected(ROWS)
    strata = Counter((tier(i), i % 2) for i in kept)
    assert manifest["sampling"] == "none"
    assert manifest["split"]["train"]["examples"] + manifest["split"]["eval"]["examples"] == len(
        kept
    )
    for stratum in manifest["strata"]:
        n = strata[
            stratum["slices"]["tier"], 0 if stratum["slices"]["category"] == "billing" else 1
        ]
        assert stratum["examples"] == n
        assert stratum["eval"] in (int(n * 0.25), int(n * 0.25) + 1)  # largest remainders
        assert stratum["train"] + stratum["eval"] == n
    train_keys = {key_of_example(e) for e in lines(output)}
    eval_keys = {key_of_example(e) for e in lines(tmp_path / "all.eval.jsonl")}
    assert not train_keys & eval_keys
    assert len(train_keys | eval_keys) == len(kept)


# --- exclusions --------------------------------------------------------------------------------


def test_exclude_dataset_leaves_out_the_prompts_earlier_datasets_used(
    shell: Shell, traffic: str, tmp_path: Path
) -> None:
    first = export(shell, tmp_path / "first.jsonl", "--limit", "40", "--holdout", "0.25")
    used = {key_of_example(e) for e in lines(tmp_path / "first.jsonl")}
    used |= {key_of_example(e) for e in lines(tmp_path / "first.eval.jsonl")}
    train_id, eval_id = first["dataset_id"], first["split"]["eval"]["dataset_id"]

    output = tmp_path / "next.jsonl"
    manifest = export(
        shell,
        output,
        *("--exclude-dataset", str(train_id), "--exclude-dataset", str(eval_id)),
    )
    examples = lines(output)
    assert not {key_of_example(e) for e in examples} & used

    # the rows whose prompt a dataset used are dropped and counted, before the verifier
    excluded = 0
    fresh = []
    for i in ROWS:
        reason = unfit(i)
        if reason in ("teacher_failed", "teacher_truncated", "no_prompt"):
            continue
        if key_of_row(i) in used:
            excluded += 1
        else:
            fresh.append(i)
    kept, _ = expected(fresh)
    assert manifest["dropped"]["excluded_dataset"] == excluded > 40
    assert manifest["examples"] == len(kept) == len(examples)
    assert manifest["examples"] + sum(manifest["dropped"].values()) == 400
    assert manifest["filters"]["exclude_datasets"] == [train_id, eval_id]

    done = shell("export", "--route", ROUTE, "--output", str(tmp_path / "x.jsonl"),
                 "--exclude-dataset", "9999")  # fmt: skip
    assert_fails(done, 1, "--exclude-dataset: 9999 is no dataset")
    with pytest.raises(DatasetError, match="9998, 9999 are no datasets"):
        run_service(traffic, lambda c: dataset_prompt_keys(c, [9999, train_id, 9998]))


# --- reproducible ------------------------------------------------------------------------------


def test_from_manifest_writes_the_same_bytes_again(
    shell: Shell, traffic: str, tmp_path: Path
) -> None:
    original = tmp_path / "original.jsonl"
    manifest = export(
        shell,
        original,
        *("--since", "2026-11-02", "--slice", "category=tech", "--limit", "50"),
        *("--holdout", "0.2", "--seed", "9"),
    )
    eval_sha = manifest["split"]["eval"]["sha256"]

    # by dataset id: the same files, registered again with where they came from
    repeat = tmp_path / "repeat.jsonl"
    done = shell("export", "--from-manifest", str(manifest["dataset_id"]), "--output", str(repeat))
    assert done.returncode == 0, done.stderr
    assert "the same sha256 as the original" in done.stderr
    repeated = manifest_of(repeat)
    assert repeated["sha256"] == manifest["sha256"]
    assert repeated["split"]["eval"]["sha256"] == eval_sha
    assert repeated["reproduces"] == {"dataset_id": manifest["dataset_id"]}
    assert repeated["filters"] == manifest["filters"] | {
        "since": manifest["window"]["since"],
        "until": manifest["window"]["until"],
    }
    assert len(datasets(traffic)) == 4

    # by manifest file, without registering it
    scratch = tmp_path / "scratch.jsonl"
    manifest_file = original.with_name("original.jsonl.manifest.json")
    done = shell(
        "export", "--from-manifest", str(manifest_file), "--output", str(scratch), "--no-register"
    )
    assert done.returncode == 0, done.stderr
    assert manifest_of(scratch)["sha256"] == manifest["sha256"]
    assert manifest_of(scratch)["dataset_id"] is None
    assert len(datasets(traffic)) == 4

    # the rows changed: a different file, and a warning that says so
    exported = items(traffic, manifest["dataset_id"])[0]["request_id"]
    execute(traffic, f"DELETE FROM requests WHERE request_id = '{exported}'")
    done = shell("export", "--from-manifest", str(manifest_file), "--output", str(scratch))
    assert done.returncode == 0, done.stderr
    assert "differs from the original" in done.stderr


# --- datasets list | show ----------------------------------------------------------------------


def test_datasets_list_and_show(shell: Shell, traffic: str, tmp_path: Path) -> None:
    output = tmp_path / "train.jsonl"
    manifest = export(shell, output, "--limit", "40", "--holdout", "0.25")
    scratch = export(shell, tmp_path / "other.jsonl", "--slice", "tier=paid")
    train_id, eval_id = manifest["dataset_id"], manifest["split"]["eval"]["dataset_id"]

    listed = shell("datasets list")
    assert listed.returncode == 0, listed.stderr
    table = listed.stdout.splitlines()
    assert table[0].split() == ["ID", "ROUTE", "KIND", "ITEMS", "CREATED", "BY", "SPLIT", "PATH"]
    assert [line.split()[:4] for line in table[1:]] == [
        [str(scratch["dataset_id"]), ROUTE, "train", str(scratch["examples"])],
        [str(eval_id), ROUTE, "eval", "10"],
        [str(train_id), ROUTE, "train", "30"],
    ]
    assert f"eval of {train_id}" in table[2]
    as_json = orjson.loads(shell("datasets list", "--kind", "eval", "--json").stdout)
    assert [d["id"] for d in as_json] == [eval_id]
    assert as_json[0]["split_of"] == train_id
    assert as_json[0]["path"] == str(tmp_path / "train.eval.jsonl")
    assert orjson.loads(shell("datasets list", "--route", "plain-bot", "--json").stdout) == []
    assert (
        shell("datasets list", "--route", "plain-bot").stdout
        == "no datasets of route 'plain-bot'\n"
    )

    shown = shell("datasets show", str(train_id))
    assert shown.returncode == 0, shown.stderr
    assert f"dataset {train_id}: train, route {ROUTE}" in shown.stdout
    assert f"{output}: present, same sha256" in shown.stdout
    assert f"held-out split: dataset {eval_id}" in shown.stdout
    assert "filters limit 40; seed 0; holdout 0.25; format openai" in shown.stdout
    assert "teacher versions: gpt-" in shown.stdout
    assert "live frequency: 30 prompts stood for" in shown.stdout
    assert any(line.split()[:2] == ["tier=free", "240"] for line in shown.stdout.splitlines())
    document = orjson.loads(shell("datasets show", str(eval_id), "--json").stdout)
    assert document["file_state"] == "ok"
    assert document["items"] == 10
    assert document["split_of"] == train_id
    assert document["manifest"] == manifest_of(tmp_path / "train.eval.jsonl")

    output.write_text("edited\n")
    assert "CHANGED since it was written" in shell("datasets show", str(train_id)).stdout
    output.unlink()
    assert orjson.loads(shell("datasets show", str(train_id), "--json").stdout)["file_state"] == (
        "missing"
    )
    assert_fails(shell("datasets show", "4242"), 1, "4242 is no dataset")
    assert_fails(shell("datasets list", "--kind", "test"), 2, "invalid choice: 'test'")


# --- a dataset as drift's reference ------------------------------------------------------------


def test_dataset_reference_counts_the_labels_and_lengths_of_its_requests(
    shell: Shell, traffic: str, tmp_path: Path
) -> None:
    manifest = export(shell, tmp_path / "train.jsonl", "--limit", "50", "--seed", "2")
    dataset_id = manifest["dataset_id"]
    chosen = [int(i["request_id"].rsplit("-", 1)[1]) for i in items(traffic, dataset_id)]
    reference = run_service(traffic, lambda c: dataset_reference(c, dataset_id))
    assert reference.items == reference.rows == 50
    assert reference.missing == 0
    assert reference.labels("tier") == {"tier": dict(Counter(tier(i) for i in chosen))}
    assert reference.labels()["category"] == dict(
        Counter("billing" if i % 2 == 0 else "tech" for i in chosen)
    )
    prompts = []
    for i in chosen:
        payload = orjson.loads(synthetic(i)["request_payload"])
        prompts.append(payload.get("prompt") or payload["messages"][-1]["content"])
    assert reference.lengths == dict(Counter(len(p) for p in prompts))

    gone = chosen[0]
    execute(traffic, f"DELETE FROM requests WHERE request_id = '{ROUTE}-{gone:05d}'")
    reference = run_service(traffic, lambda c: dataset_reference(c, dataset_id))
    assert (reference.items, reference.rows, reference.missing) == (50, 49, 1)
    with pytest.raises(DatasetError, match="77 is no dataset"):
        run_service(traffic, lambda c: dataset_reference(c, 77))


def test_prompt_key_is_the_key_of_the_normalised_prompt() -> None:
    assert prompt_key("Where is  my INVOICE?") == prompt_key("where is my invoice")
    assert prompt_key("hello") == prompt_key([{"role": "user", "content": "hello"}])
    assert prompt_key("hello") != prompt_key([{"role": "system", "content": "hello"}])
    assert request_prompt_key("text", {"prompt": "hello"}) == prompt_key("hello")
    assert request_prompt_key("chat", None) is None
    assert len(prompt_key("hello")) == 64


# --- bad input: a message, an exit status, nothing written or registered -----------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--holdout", "0"], 2, "--holdout must be above 0 and at most 0.5"),
        (["--holdout", "0.6"], 2, "at most 0.5 (the share held out), not 0.6"),
        (["--holdout", "half"], 2, "--holdout is a fraction, not 'half'"),
        (["--exclude-dataset", "0"], 2, "must be at least 1, not 0"),
        (["--format", "dpo", "--holdout", "0.2"], 1, "--holdout is for --format openai"),
        (["--limit", "2", "--holdout", "0.1"], 1, "--holdout 0.1 of 2 examples leaves the"),
        (["--exclude-dataset", "31337"], 1, "--exclude-dataset: 31337 is no dataset"),
        (["--from-manifest", "1", "--limit", "5"], 2, "--limit cannot be combined with it"),
        (["--from-manifest", "31337"], 1, "--from-manifest: 31337 is no dataset"),
        (["--from-manifest", "/nonexistent/m.json"], 1, "cannot read the manifest /nonexistent/"),
        (["--since", "2027-01-01"], 1, "no rows for route 'support-bot' from 2027-01-01"),
    ],
)  # fmt: skip
def test_bad_input_writes_and_registers_nothing(
    shell: Shell, traffic: str, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    output = tmp_path / "x.jsonl"
    route = [] if "--from-manifest" in args else ["--route", ROUTE]
    assert_fails(shell("export", *route, "--output", str(output), *args), code, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml"]
    assert datasets(traffic) == []


def test_missing_route_or_output(shell: Shell, tmp_path: Path) -> None:
    assert_fails(shell("export", "--route", ROUTE), 2, "--output is required")
    assert_fails(shell("export", "--output", str(tmp_path / "x.jsonl")), 2, "--route is required")
    assert_fails(shell("export", "--from-manifest", "3"), 2, "--from-manifest needs --output")


def test_a_failed_registration_writes_nothing(shell: Shell, traffic: str, tmp_path: Path) -> None:
    execute(
        traffic,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'no items today'; END $$; "
        "CREATE TRIGGER refuse BEFORE INSERT ON dataset_items "
        "FOR EACH ROW EXECUTE FUNCTION refuse()",
    )
    try:
        output = tmp_path / "train.jsonl"
        output.write_text("the previous export\n")
        done = shell("export", "--route", ROUTE, "--output", str(output), "--holdout", "0.2")
        assert_fails(done, 1, "cannot register the dataset, so nothing was written")
        assert "no items today" in done.stderr
        assert output.read_text() == "the previous export\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml", "train.jsonl"]
        assert datasets(traffic) == []  # the datasets row went with the items

        # a scratch export does not need the registry
        manifest = export(shell, output, "--no-register")
        assert manifest["dataset_id"] is None
        assert datasets(traffic) == []
    finally:
        execute(traffic, "DROP TRIGGER refuse ON dataset_items; DROP FUNCTION refuse()")
