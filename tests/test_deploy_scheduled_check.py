"""The scheduled check (deploy/k8s/components/scheduled-check): a CronJob that validates, runs
unprivileged, calls commands this gateway has, decides by its bars, and never promotes.

The check's shell script is run here with a stand-in ``shadow-gateway`` on PATH that prints
canned report JSON and records the commands it was given.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.cli import build_parser
from tests.test_deploy_k8s import K8S, _check_unprivileged, _validate, yaml_documents

CRONJOB = K8S / "components" / "scheduled-check" / "cronjob.yaml"


def cronjob() -> dict[str, Any]:
    (document,) = yaml_documents(CRONJOB)
    return document


def container() -> dict[str, Any]:
    spec = cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (found,) = spec["containers"]
    return dict(found)


def test_the_cronjob_validates_and_runs_unprivileged() -> None:
    document = cronjob()
    _validate(document, "scheduled-check")
    assert document["spec"]["concurrencyPolicy"] == "Forbid"
    job = {"metadata": document["metadata"], "spec": document["spec"]["jobTemplate"]["spec"]}
    _check_unprivileged(job, "scheduled-check")


def test_the_script_never_promotes() -> None:
    script = container()["args"][0]
    assert "promote" not in script
    assert "rollout" not in script


def _run(tmp_path: Path, drift: dict[str, Any], quality: dict[str, Any], action: str) -> Any:
    calls = tmp_path / "calls"
    stand_in = tmp_path / "bin" / "shadow-gateway"
    stand_in.parent.mkdir()
    canned = tmp_path / "canned"
    canned.mkdir()
    (canned / "drift.json").write_bytes(orjson.dumps(drift))
    (canned / "quality.json").write_bytes(orjson.dumps(quality))
    stand_in.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        f'case "$2" in drift) cat {canned}/drift.json;; quality) cat {canned}/quality.json;; '
        "esac\n"
    )
    stand_in.chmod(0o755)
    env = {item["name"]: item.get("value", "secret") for item in container()["env"]}
    env.update(ACTION=action, PATH=f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}")
    # the pod's /tmp is its own; here the script's files go to a folder of the test's
    script = container()["args"][0].replace("/tmp/", f"{tmp_path}/")
    done = subprocess.run(
        ["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    return done, calls.read_text().splitlines()


QUIET = {"flagged": []}
FINE = {"overall": {"teacher": {"error": {"rate": 0.01}}}}


@pytest.mark.parametrize(
    ("drift", "quality", "action", "code", "distilled"),
    [
        (QUIET, FINE, "distill", 0, False),
        ({"flagged": ["tier"]}, FINE, "alert", 1, False),
        (QUIET, {"overall": {"teacher": {"error": {"rate": 0.2}}}}, "alert", 1, False),
        ({"flagged": ["tier"]}, FINE, "distill", 0, True),
    ],
)
def test_the_check_decides_by_its_bars(
    tmp_path: Path,
    drift: dict[str, Any],
    quality: dict[str, Any],
    action: str,
    code: int,
    distilled: bool,
) -> None:
    done, calls = _run(tmp_path, drift, quality, action)
    assert done.returncode == code, done.stderr
    assert calls[:2] == [
        "report drift support-bot --config /etc/shadow-gateway/config.yaml --json",
        "report quality support-bot --config /etc/shadow-gateway/config.yaml --json",
    ]
    assert any(call.startswith("distill ") for call in calls) is distilled
    parser = build_parser()
    for call in calls:  # every command the check runs is one this gateway takes
        parser.parse_args(shlex.split(call))
