"""``shadow-gateway export``: logged rows → JSONL training set + manifest, on the real Postgres.

The rows are synthetic (inserted with SQL, like the guardian's tests) and built by rules, so
the test can work out independently which of them must become examples and why the others
were dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

import gateway
from gateway.core.agreement import normalize_text
from gateway.db.engine import plain_dsn
from tests.support.db import execute
from tests.support.gateway import write_config
from tests.support.process import BIN

ROOT = Path(__file__).resolve().parents[2]
ROUTE = "support-bot"
START = datetime(2026, 11, 1, tzinfo=UTC)
SYSTEM = {"role": "system", "content": "Answer with JSON."}
SCHEMA = {
    "type": "object",
    "required": ["label"],
    "properties": {"label": {"enum": ["yes", "no"]}},
}
ENUM_CHECK = "schema:properties.label.enum"
Cli = Callable[..., subprocess.CompletedProcess[str]]

# --- synthetic traffic, by rules ---------------------------------------------------------------


def tier(i: int) -> str:
    return "free" if i % 10 < 6 else "paid" if i % 10 < 9 else "enterprise"


def question(i: int) -> str:
    if i % 25 == 24:  # the same prompt as 16 rows earlier, shouted and spaced out
        return f"  QUESTION {i - 16}:   is it RAINING in city {i - 16}?  "
    return f"Question {i}: is it raining in city {i}?"


def synthetic(i: int, route: str = ROUTE) -> dict[str, Any]:
    text_endpoint = i % 8 == 1
    if i % 50 == 49:
        payload = None  # store_payloads was off
    elif text_endpoint:
        payload = {"model": route, "prompt": question(i), "max_tokens": 20}
    else:
        messages = [SYSTEM, {"role": "user", "content": question(i)}]
        payload = {"model": route, "messages": messages, "metadata": {"tier": tier(i)}}
    failed, truncated = i % 20 == 7, i % 20 == 13
    if failed:
        output = None
    elif i % 10 == 3:
        output = "Sure, yes!"  # not JSON
    elif i % 10 == 5:
        output = '{"label": "maybe"}'  # not in the enum
    else:
        output = orjson.dumps({"label": "yes" if i % 3 else "no", "i": i}).decode()
    agree = i % 4 != 0
    return {
        "request_id": f"{route}-{i:05d}",
        "route": route,
        "endpoint": "text" if text_endpoint else "chat",
        "created_at": START + timedelta(minutes=15 * i),
        "mode": "shadow",
        "served_by": "teacher",
        "status_code": 500 if failed else 200,
        "slices": orjson.dumps(
            {"tier": tier(i), "category": "billing" if i % 2 == 0 else "tech"}
        ).decode(),
        "request_payload": None if payload is None else orjson.dumps(payload).decode(),
        "teacher_status": 500 if failed else 200,
        "teacher_output": output,
        "teacher_finish_reason": "length" if truncated else "stop",
        "teacher_error": "teacher answered HTTP 500" if failed else None,
        "student_status": "ok",
        "student_output": output if agree else '{"label": "no"}',
        "agree": agree,
        "agreement_score": 1.0 if agree else 0.0,
    }


def insert(url: str, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    casts = {"slices": "::jsonb", "request_payload": "::jsonb"}
    values = ", ".join(f"${n}{casts.get(c, '')}" for n, c in enumerate(columns, 1))
    sql = f"INSERT INTO requests ({', '.join(columns)}) VALUES ({values})"

    async def run() -> None:
        connection = await asyncpg.connect(plain_dsn(url), timeout=5)
        try:
            await connection.executemany(sql, [tuple(row.values()) for row in rows])
        finally:
            await connection.close()

    asyncio.run(run())


def unfit(i: int, schema: bool = True) -> str | None:
    """Why row i cannot be an example whatever else is exported; None if it can."""
    row = synthetic(i)
    if row["teacher_output"] is None:
        return "teacher_failed"
    if row["teacher_finish_reason"] == "length":
        return "teacher_truncated"
    if row["request_payload"] is None:
        return "no_prompt"
    if schema and row["teacher_output"] == "Sure, yes!":
        return "invalid_json"
    if schema and "maybe" in row["teacher_output"]:
        return ENUM_CHECK
    return None


def prompt_of(i: int) -> str:
    return f"{synthetic(i)['endpoint']}:{normalize_text(question(i))}"


def expected(indices: Iterable[int], schema: bool = True) -> tuple[list[int], Counter[str]]:
    """Which rows become examples, in time order, and why the others do not."""
    kept: list[int] = []
    dropped: Counter[str] = Counter()
    seen: set[str] = set()
    for i in indices:
        if reason := unfit(i, schema):
            dropped[reason] += 1
        elif prompt_of(i) in seen:
            dropped["duplicate_prompt"] += 1
        else:
            seen.add(prompt_of(i))
            kept.append(i)
    return kept, dropped


QUESTIONS = {question(i): i for i in range(400)}


def index_of(example: dict[str, Any]) -> int:
    """The row an example came from, read back from its question."""
    return QUESTIONS[example["messages"][-2]["content"]]


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def traffic(clean_db: str) -> str:
    """400 rows of support-bot, one every 15 minutes from Nov 1 (the last on Nov 5, 03:45)."""
    insert(clean_db, [synthetic(i) for i in range(400)])
    return clean_db


def write_routes(path: Path, function: str | None = None) -> Path:
    def plain(name: str, **extra: Any) -> dict[str, Any]:
        teacher = {"base_url": "http://127.0.0.1:9/v1", "model": "t"}
        return {"name": name, "mode": "teacher", "teacher": teacher, **extra}

    verifier: dict[str, Any] = {"kind": "json_schema", "schema": SCHEMA}
    if function is not None:
        verifier = {"kind": "function", "function": function}
    routes = [plain(ROUTE, export={"verifier": verifier}), plain("plain-bot"), plain("quiet-bot")]
    return write_config(path, routes)


def make_cli(url: str, config: Path) -> Cli:
    env = {**os.environ, "DATABASE_URL": url, "SGW_TEST_APP_KEY": "test-app-key"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "shadow-gateway"), "export", "--config", str(config), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    return run


@pytest.fixture
def cli(traffic: str, tmp_path: Path) -> Cli:
    return make_cli(traffic, write_routes(tmp_path / "gateway.yaml"))


def export(cli: Cli, output: Path, *args: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    done = cli("--route", ROUTE, "--output", str(output), *args)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = output.read_bytes().splitlines()
    manifest = orjson.loads(output.with_name(output.name + ".manifest.json").read_bytes())
    return [orjson.loads(line) for line in lines], manifest


def assert_fails(done: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert done.returncode == code, done
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


# --- what is exported --------------------------------------------------------------------------


def test_exports_verified_deduplicated_teacher_answers_with_a_manifest(
    cli: Cli, tmp_path: Path
) -> None:
    output = tmp_path / "train.jsonl"
    done = cli("--route", ROUTE, "--output", str(output), "--json")
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    examples = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    manifest = orjson.loads((tmp_path / "train.jsonl.manifest.json").read_bytes())
    assert summary["output"] == str(output)
    assert summary["manifest"] == str(tmp_path / "train.jsonl.manifest.json")
    assert {k: v for k, v in summary.items() if k not in ("output", "manifest", "created_at")} == {
        k: v for k, v in manifest.items() if k != "created_at"
    }
    kept, dropped = expected(range(400))

    assert [index_of(example) for example in examples] == kept  # time order
    for example in examples:
        row = synthetic(index_of(example))
        payload = orjson.loads(row["request_payload"])
        prompt = payload.get("messages") or [{"role": "user", "content": payload["prompt"]}]
        assert example == {
            "messages": [*prompt, {"role": "assistant", "content": row["teacher_output"]}]
        }
    assert any(len(e["messages"]) == 2 for e in examples)  # /v1/completions rows
    assert any(e["messages"][0] == SYSTEM for e in examples)

    assert manifest["examples"] == len(kept)
    assert manifest["rows_matched"] == 400
    assert manifest["dropped"] == {
        "teacher_not_asked": 0,
        "teacher_failed": dropped["teacher_failed"],
        "teacher_truncated": dropped["teacher_truncated"],
        "judged_wrong": 0,
        "no_prompt": dropped["no_prompt"],
        "excluded_dataset": 0,
        "verifier": dropped["invalid_json"] + dropped[ENUM_CHECK],
        "duplicate_prompt": dropped["duplicate_prompt"],
        "sampling": 0,
    }
    assert manifest["examples"] + sum(manifest["dropped"].values()) == 400
    assert manifest["dropped_by_check"] == {
        "invalid_json": dropped["invalid_json"],
        ENUM_CHECK: dropped[ENUM_CHECK],
    }
    quoted = manifest["failed_checks_quoted"][ENUM_CHECK][0]
    assert quoted["message"] == "$.label: 'maybe' is not one of ['yes', 'no']"
    assert quoted["request_id"].startswith(f"{ROUTE}-")
    assert manifest["verifier"] == {"kind": "json_schema", "schema": SCHEMA}
    assert manifest["gateway_version"] == gateway.__version__
    assert manifest["sampling"] == "none"
    assert manifest["filters"]["route"] == ROUTE
    assert manifest["time_range"]["first_row"].startswith("2026-11-01T00:00:00")
    assert manifest["time_range"]["last_row"] == (START + timedelta(minutes=15 * 399)).isoformat()
    tiers = Counter(tier(i) for i in kept)
    assert manifest["slices"]["tier"] == {
        "enterprise": {"live": 40, "judged_wrong": 0, "examples": tiers["enterprise"]},
        "free": {"live": 240, "judged_wrong": 0, "examples": tiers["free"]},
        "paid": {"live": 120, "judged_wrong": 0, "examples": tiers["paid"]},
    }
    assert manifest["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gateway.yaml",
        "train.jsonl",
        "train.jsonl.manifest.json",
    ]


def test_filters_by_window_and_slices(cli: Cli, tmp_path: Path) -> None:
    # Nov 2 and 3 whole (a bare --until date includes that day): rows 96..287
    examples, manifest = export(
        cli,
        tmp_path / "out.jsonl",
        *("--since", "2026-11-02", "--until", "2026-11-03"),
        *("--slice", "tier=paid", "--slice", "tier=enterprise", "--slice", "category=tech"),
    )
    window = [i for i in range(96, 288) if tier(i) != "free" and i % 2 == 1]
    kept, _ = expected(window)
    assert [index_of(e) for e in examples] == kept
    assert manifest["rows_matched"] == len(window)
    assert manifest["filters"]["slices"] == {"tier": ["paid", "enterprise"], "category": ["tech"]}
    assert manifest["filters"]["since"] == "2026-11-02T00:00:00+00:00"
    assert manifest["filters"]["until"] == "2026-11-04T00:00:00+00:00"
    assert set(manifest["slices"]["category"]) == {"tech"}


def test_a_route_without_verifier_keeps_every_complete_answer(traffic: str, tmp_path: Path) -> None:
    execute(
        traffic, "UPDATE requests SET route = 'plain-bot' WHERE request_id < 'support-bot-00100'"
    )
    try:
        cli = make_cli(traffic, write_routes(tmp_path / "gateway.yaml"))
        examples, manifest = export_route(cli, "plain-bot", tmp_path / "plain.jsonl")
    finally:
        execute(traffic, "UPDATE requests SET route = 'support-bot'")
    kept, _ = expected(range(100), schema=False)
    assert [index_of(e) for e in examples] == kept
    assert manifest["verifier"] is None
    assert manifest["dropped"]["verifier"] == 0


def export_route(cli: Cli, route: str, output: Path) -> tuple[list[Any], dict[str, Any]]:
    done = cli("--route", route, "--output", str(output))
    assert done.returncode == 0, done.stderr
    manifest = orjson.loads(output.with_name(output.name + ".manifest.json").read_bytes())
    return [orjson.loads(line) for line in output.read_bytes().splitlines()], manifest


# --- sampling ----------------------------------------------------------------------------------


def test_limit_samples_strata_in_live_proportions(cli: Cli, tmp_path: Path) -> None:
    examples, manifest = export(cli, tmp_path / "a.jsonl", "--limit", "60", "--seed", "7")
    assert len(examples) == 60
    # live: free 60 %, paid 30 %, enterprise 10 %; billing and tech half each
    tiers = Counter(tier(index_of(e)) for e in examples)
    assert tiers == {"free": 36, "paid": 18, "enterprise": 6}
    categories = Counter(index_of(e) % 2 for e in examples)
    assert categories == {0: 30, 1: 30}
    assert manifest["sampling"] == "stratified_by_live_traffic"
    # strata (tier x category): 120, 120, 80, 40 and 40 rows → quotas 18, 18, 12, 6, 6
    assert sorted((s["quota"], s["examples"]) for s in manifest["strata"]) == [
        (6, 6), (6, 6), (12, 12), (18, 18), (18, 18)
    ]  # fmt: skip
    sampled = [index_of(e) for e in examples]
    assert not any(unfit(i) for i in sampled)  # verified and deduplicated before sampling
    assert len({prompt_of(i) for i in sampled}) == 60
    assert max(index_of(e) for e in examples) - min(index_of(e) for e in examples) > 200
    assert manifest["examples"] + sum(manifest["dropped"].values()) == 400
    assert manifest["dropped"]["sampling"] > 0

    again, _ = export(cli, tmp_path / "b.jsonl", "--limit", "60", "--seed", "7")
    other, _ = export(cli, tmp_path / "c.jsonl", "--limit", "60", "--seed", "8")
    assert again == examples  # a seed repeats the sample
    assert {index_of(e) for e in other} != {index_of(e) for e in examples}


def test_an_uneven_limit_stays_within_tolerance(cli: Cli, tmp_path: Path) -> None:
    examples, _ = export(cli, tmp_path / "s.jsonl", "--limit", "101", "--seed", "3")
    shares = Counter(tier(index_of(e)) for e in examples)
    assert len(examples) == 101
    for name, live_share in {"free": 0.6, "paid": 0.3, "enterprise": 0.1}.items():
        assert abs(shares[name] / 101 - live_share) <= 0.02, shares


def test_mix_sets_the_shares_of_one_dimension(cli: Cli, tmp_path: Path) -> None:
    examples, manifest = export(
        cli,
        tmp_path / "mix.jsonl",
        "--mix",
        "tier=free:0.2,paid:30%,enterprise:0.5",
        "--limit",
        "40",
    )
    assert Counter(tier(index_of(e)) for e in examples) == {"free": 8, "paid": 12, "enterprise": 20}
    assert manifest["sampling"] == "mix"
    assert manifest["filters"]["mix"] == {"tier": {"free": 0.2, "paid": 0.3, "enterprise": 0.5}}
    assert {s["slices"]["tier"]: s["share"] for s in manifest["strata"]} == {
        "free": 0.2,
        "paid": 0.3,
        "enterprise": 0.5,
    }


def test_a_mix_that_cannot_be_met_warns_and_writes_what_there_is(cli: Cli, tmp_path: Path) -> None:
    done = cli(
        *("--route", ROUTE, "--output", str(tmp_path / "short.jsonl")),
        *("--mix", "tier=enterprise:0.9,free:0.1", "--limit", "100"),
    )
    assert done.returncode == 0, done.stderr
    enterprise, _ = expected(i for i in range(400) if tier(i) == "enterprise")
    assert f"tier=enterprise: {len(enterprise)} examples of the 90" in done.stderr
    lines = (tmp_path / "short.jsonl").read_bytes().splitlines()
    assert len(lines) == len(enterprise) + 10


def test_only_disagreements_with_a_cap(cli: Cli, tmp_path: Path) -> None:
    everything, manifest = export(cli, tmp_path / "hard.jsonl", "--only-disagreements")
    disagreements, _ = expected(i for i in range(400) if i % 4 == 0)
    assert [index_of(e) for e in everything] == disagreements
    assert manifest["rows_matched"] == 100
    assert manifest["filters"]["only_disagreements"] is True

    capped, manifest = export(cli, tmp_path / "capped.jsonl", "--only-disagreements", "--max", "10")
    assert len(capped) == 10
    assert {index_of(e) for e in capped} <= set(disagreements)
    assert manifest["filters"]["limit"] == 10


def test_the_table_summary(cli: Cli, tmp_path: Path) -> None:
    done = cli("--route", ROUTE, "--output", str(tmp_path / "t.jsonl"))
    assert done.returncode == 0, done.stderr
    kept, dropped = expected(range(400))
    lines = done.stdout.splitlines()
    assert lines[0] == f"wrote {len(kept)} examples to {tmp_path / 't.jsonl'}"
    assert "rows matched" in done.stdout
    assert f"  duplicate_prompt{dropped['duplicate_prompt']:>11}" in done.stdout
    assert f"failed verifier checks: {ENUM_CHECK}" in done.stdout
    assert any(line.split()[:2] == ["tier=free", "240"] for line in lines)


# --- never a half-written file -----------------------------------------------------------------

KILL_AFTER = 300


def terminate_the_export(answer: str, request: Any) -> bool:
    """A verifier that, part-way through, cuts the export's database connection."""
    global _calls
    _calls += 1
    if _calls == KILL_AFTER:
        kill = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        thread = threading.Thread(target=execute, args=(os.environ["DATABASE_URL"], kill))
        thread.start()
        thread.join()
    return True


_calls = 0


def test_a_failed_export_leaves_the_previous_file_alone(database_url: str, tmp_path: Path) -> None:
    execute(database_url, "TRUNCATE requests")
    execute(
        database_url,
        "INSERT INTO requests (request_id, route, endpoint, created_at, mode, slices, "
        "request_payload, teacher_status, teacher_output) "
        f"SELECT 'big-' || g, '{ROUTE}', 'chat', now() - g * interval '1 second', 'shadow', "
        "'{\"tier\": \"free\"}', jsonb_build_object('messages', jsonb_build_array("
        "jsonb_build_object('role', 'user', 'content', 'question ' || g))), 200, 'answer' "
        "FROM generate_series(1, 20000) AS g",
    )
    try:
        config = write_routes(tmp_path / "gateway.yaml", f"{__name__}:terminate_the_export")
        output = tmp_path / "train.jsonl"
        output.write_text("the previous export\n")
        done = make_cli(database_url, config)("--route", ROUTE, "--output", str(output))
    finally:
        execute(database_url, "TRUNCATE requests")
    assert_fails(done, 1, "shadow-gateway: cannot use Postgres")
    assert output.read_text() == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml", "train.jsonl"]


def test_rows_the_student_served_unaudited_are_not_asked_not_failed(
    database_url: str, tmp_path: Path
) -> None:
    """A rollout row the student answered without an audit has no teacher answer because
    the teacher was never asked; the manifest says so instead of calling it a failure."""
    execute(database_url, "TRUNCATE requests")
    execute(
        database_url,
        "INSERT INTO requests (request_id, route, endpoint, created_at, mode, slices, "
        "served_by, request_payload, teacher_status, teacher_output) VALUES "
        "('asked', 'plain-bot', 'chat', now(), 'rollout', '{}', 'teacher', "
        """'{"messages": [{"role": "user", "content": "a"}]}', 200, 'A'), """
        "('failed', 'plain-bot', 'chat', now(), 'rollout', '{}', 'teacher', "
        """'{"messages": [{"role": "user", "content": "b"}]}', 500, NULL), """
        "('served', 'plain-bot', 'chat', now(), 'rollout', '{}', 'student', "
        """'{"messages": [{"role": "user", "content": "c"}]}', NULL, NULL)""",
    )
    try:
        config = write_routes(tmp_path / "gateway.yaml")
        output = tmp_path / "train.jsonl"
        done = make_cli(database_url, config)(
            "--route", "plain-bot", "--output", str(output), "--no-register"
        )
    finally:
        execute(database_url, "TRUNCATE requests")
    assert done.returncode == 0, done.stderr
    manifest = orjson.loads(output.with_name(output.name + ".manifest.json").read_bytes())
    assert manifest["examples"] == 1
    assert manifest["dropped"]["teacher_not_asked"] == 1
    assert manifest["dropped"]["teacher_failed"] == 1


# --- bad input: a plain message and an exit status, never a traceback --------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--route", "nope"], 1, "unknown route 'nope'; the routes are: support-bot, plain-bot"),
        (["--since", "2027-01-01"], 1, "no rows for route 'support-bot' from 2027-01-01T00:00"),
        (["--since", "2027-01-01"], 1, "its 400 rows are from 2026-11-01 to 2026-11-05"),
        (["--route", "quiet-bot"], 1, "no rows: route 'quiet-bot' has no logged requests"),
        (["--slice", "teir=free"], 1, "no row has the slice 'teir' (slices seen: category, tier)"),
        (
            ["--slice", "tier=gold"],
            1,
            "no row has tier=gold (values seen for tier: enterprise, free, paid)",
        ),
        (
            ["--slice", "tier=enterprise", "--slice", "category=billing", "--since", "2026-11-05"],
            1,
            "match all of tier=enterprise, category=billing at once",
        ),
        (["--since", "yesterday"], 2, "'yesterday' is not a time for --since"),
        (["--since", "3d"], 1, "its 400 rows are from 2026-11-01 to 2026-11-05"),  # an age
        (["--until", "2026-13-01"], 2, "'2026-13-01' is not a time for --until"),
        (["--slice", "tier"], 2, "a slice is DIM=VALUE, like tier=free; not 'tier'"),
        (["--limit", "0"], 2, "must be at least 1, not 0"),
        (["--max", "5"], 1, "--max caps --only-disagreements"),
        (["--only-disagreements", "--max", "5", "--limit", "5"], 1, "give --max or --limit"),
        (["--mix", "tier=free:0.5,paid:0.5"], 1, "--mix needs --limit N"),
        (["--mix", "tier=free:0.5,paid:0.4", "--limit", "9"], 2, "add up to 0.9"),
        (["--mix", "tier=free:0.5,category=tech:0.5"], 2, "a mix is over one dimension"),
        (["--mix", "free", "--limit", "9"], 2, "a mix is dimension=value:share"),
        (
            ["--mix", "tier=free:0.5,gold:0.5", "--limit", "9"],
            1,
            "the mix cannot be met: no row has tier=gold",
        ),
        (
            ["--since", "2026-11-03", "--until", "2026-11-02T00:00"],
            1,
            "--since 2026-11-03 00:00 is not before --until",
        ),
        (
            ["--only-disagreements", "--slice", "tier=paid", "--since", "2026-11-05T03:15"],
            1,
            "no disagreement (agree = false)",
        ),
        (["--output", "/nonexistent/dir/x.jsonl"], 1, "the folder /nonexistent/dir does not exist"),
        (["--output", "/tmp"], 1, "the output /tmp is a folder"),
    ],
)
def test_bad_input(cli: Cli, tmp_path: Path, args: list[str], code: int, message: str) -> None:
    defaults = {"--route": ROUTE, "--output": str(tmp_path / "x.jsonl")}
    for option, value in defaults.items():
        if option not in args:
            args = [option, value, *args]
    assert_fails(cli(*args), code, message)
    assert not (tmp_path / "x.jsonl").exists()


def reject_everything(answer: str, request: Any) -> tuple[bool, str]:
    return False, "never_good_enough"


def test_nothing_left_after_the_verifier_is_an_error_and_no_file(
    traffic: str, tmp_path: Path
) -> None:
    config = write_routes(tmp_path / "gateway.yaml", f"{__name__}:reject_everything")
    output = tmp_path / "none.jsonl"
    done = make_cli(traffic, config)("--route", ROUTE, "--output", str(output))
    assert_fails(done, 1, "no examples left: all 400 matching rows were dropped")
    assert "failed verifier checks: function:never_good_enough" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml"]


def test_no_complete_teacher_answer_is_an_error(traffic: str, tmp_path: Path) -> None:
    broken = [synthetic(i, route="plain-bot") for i in range(400) if i % 20 in (7, 13)]
    insert(traffic, broken)
    cli = make_cli(traffic, write_routes(tmp_path / "gateway.yaml"))
    done = cli("--route", "plain-bot", "--output", str(tmp_path / "x.jsonl"))
    assert_fails(
        done,
        1,
        "no complete teacher answer: of the 40 matching rows, 20 failed and 20 were cut off "
        "at max_tokens",
    )


def test_a_verifier_function_that_cannot_be_imported_is_a_config_error(
    traffic: str, tmp_path: Path
) -> None:
    config = write_routes(tmp_path / "gateway.yaml", "no_such_module:check")
    done = make_cli(traffic, config)("--route", ROUTE, "--output", str(tmp_path / "x.jsonl"))
    assert_fails(done, 2, "export.verifier.function 'no_such_module:check' cannot be imported")


# --- how fast, how much memory (measured and printed, not asserted) ----------------------------


def measure(url: str, config: Path, output: Path) -> tuple[float, float]:
    env = {**os.environ, "DATABASE_URL": url, "SGW_TEST_APP_KEY": "test-app-key"}
    command = [str(BIN / "shadow-gateway"), "export", "--config", str(config)]
    started = time.perf_counter()
    with subprocess.Popen(
        [*command, "--route", ROUTE, "--output", str(output)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stderr is not None
        errors = process.stderr.read()  # to the end: the process has exited
        _, status, usage = os.wait4(process.pid, 0)  # its own peak RSS, nobody else's
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, errors.decode()
    return elapsed, usage.ru_maxrss / 1024  # Linux: KiB → MiB


@pytest.mark.slow
def test_export_time_and_peak_memory(database_url: str, tmp_path: Path) -> None:
    config = write_routes(tmp_path / "gateway.yaml")
    figures = []
    for rows in (10_000, 100_000):
        execute(database_url, "TRUNCATE requests")
        execute(
            database_url,
            "INSERT INTO requests (request_id, route, endpoint, created_at, mode, slices, "
            "request_payload, teacher_status, teacher_output, teacher_finish_reason, agree) "
            f"SELECT 'bench-' || g, '{ROUTE}', 'chat', "
            "timestamptz '2026-11-01' + g * interval '1 second', 'shadow', "
            "jsonb_build_object('tier', (ARRAY['free', 'paid', 'enterprise'])[1 + g % 3], "
            "'category', (ARRAY['billing', 'tech', 'account', 'other'])[1 + g % 4]), "
            "jsonb_build_object('model', 'support-bot', 'messages', jsonb_build_array("
            "jsonb_build_object('role', 'system', 'content', 'You answer support questions.'), "
            "jsonb_build_object('role', 'user', 'content', 'Customer question number ' || g "
            "|| ': ' || repeat('my invoice looks wrong, ', 1 + g % 20)))), 200, "
            "'{\"label\": \"' || (CASE WHEN g % 3 = 0 THEN 'no' ELSE 'yes' END) || '\"}', "
            "'stop', g % 5 <> 0 "
            f"FROM generate_series(1, {rows}) AS g",
        )
        execute(database_url, "ANALYZE requests")
        output = tmp_path / f"bench-{rows}.jsonl"
        elapsed, peak_mib = measure(database_url, config, output)
        size_mib = output.stat().st_size / 2**20
        figures.append((rows, elapsed, peak_mib, size_mib))
    execute(database_url, "TRUNCATE requests")
    for rows, elapsed, peak_mib, size_mib in figures:
        print(
            f"\nexport of {rows:,} rows: {elapsed:.2f} s wall ({rows / elapsed:,.0f} rows/s), "
            f"peak RSS {peak_mib:.0f} MiB, file {size_mib:.0f} MiB"
        )
