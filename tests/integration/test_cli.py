"""CLI behaviour that is not one command group's own: migrate without secrets, bad databases."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from tests.support.process import BIN

CONFIG = """
routes:
  - name: r
    teacher: {base_url: "http://127.0.0.1:9/v1", model: t, api_key_env: SGW_UNSET_TEACHER_KEY}
    mode: teacher
auth: {keys: [{name: app, key_env: SGW_UNSET_APP_KEY}]}
"""


def run(tmp_path: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gw.yaml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGW_UNSET")}
    return subprocess.run(
        [str(BIN / "shadow-gateway"), *args, "--config", str(config)],
        env={**env, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_migrate_needs_no_secrets(tmp_path: Path, database_url: str) -> None:
    result = run(tmp_path, database_url, "migrate")
    assert result.returncode == 0, result.stderr
    assert "is at revision" in result.stdout


def test_serve_names_the_missing_secret(tmp_path: Path, database_url: str) -> None:
    result = run(tmp_path, database_url, "serve", "--port", "0")
    assert result.returncode == 2
    assert "SGW_UNSET" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_against_a_missing_or_unreachable_database(tmp_path: Path) -> None:
    for url, words in (
        ("postgresql://postgres@127.0.0.1:5432/sgw_no_such_db", "does not exist"),
        ("postgresql://postgres@127.0.0.1:1/x", "cannot migrate the database"),
    ):
        result = run(tmp_path, url, "migrate")
        assert result.returncode == 1
        assert words in result.stderr
        assert "Traceback" not in result.stderr


def test_commands_bring_a_fresh_embedded_database_up_to_date(server_dir: Path) -> None:
    """Before the first `serve`, `keys` and `partitions` work on the embedded default too."""
    created = run(server_dir, "", "keys", "create", "oncall", "--scope", "sre")
    assert created.returncode == 0, created.stderr
    listed = run(server_dir, "", "keys", "list")
    assert "oncall" in listed.stdout, listed.stderr
    planned = run(server_dir, "", "partitions", "--dry-run")
    assert planned.returncode == 0, planned.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(
    tmp_path: Path, database_url: str
) -> None:
    """`shadow-gateway … | head -1`: the pipe closes early; no traceback, exit 141."""
    config = tmp_path / "gw.yaml"
    config.write_text(CONFIG)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        result = subprocess.run(
            [str(BIN / "shadow-gateway"), "rollout", "status", "--config", str(config)],
            env={**os.environ, "DATABASE_URL": database_url},
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert result.returncode == 141, result.stderr
    assert "Traceback" not in result.stderr
    assert "Exception ignored" not in result.stderr


STUDENT_CONFIG = """
routes:
  - name: r
    teacher: {base_url: "http://127.0.0.1:9/v1", model: t}
    student: {base_urls: ["http://127.0.0.1:9/v1"], model: s}
"""


def test_every_change_prints_json_with_json(
    tmp_path: Path,
    clean_db: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--json` on the changing commands too: one JSON document on stdout, notes on stderr."""
    config = tmp_path / "gw.yaml"
    config.write_text(STUDENT_CONFIG)
    monkeypatch.setenv("DATABASE_URL", clean_db)

    def shell(*args: str) -> Any:
        code = cli.main([*args, "--config", str(config), "--json"])
        out = capsys.readouterr().out
        assert code == 0, out
        return json.loads(out)

    why = ("--reason", "json")
    changed = shell("rollout", "set", "r", "--percent", "5", *why)
    assert (changed["route"], changed["rollout_percent"], changed["changed"]) == ("r", 5, True)
    assert changed["version"] == 2
    assert shell("rollout", "set", "r", "--percent", "5", *why)["changed"] is False
    override = shell("rollout", "set", "r", "--slice", "tier=free", "--mode", "teacher", *why)
    assert override["slice"] == {
        "slice": "tier=free",
        "dimension": "tier",
        "value": "free",
        "mode": "teacher",
        "rollout_percent": None,
        "confidence_threshold": None,
    }
    assert override["warnings"]  # no request carried a tier yet
    assert shell("rollout", "clear", "r", "--slice", "tier=free", *why)["cleared"]["mode"] == (
        "teacher"
    )
    ramp = shell("rollout", "plan", "r", "5,50", "--hold", "2w", *why)
    assert (ramp["mode"], ramp["ramp"]["hold_s"], ramp["ramp"]["step"]) == ("rollout", 1209600, 1)
    assert shell("rollout", "cancel", "r", *why)["ramp"]["status"] == "cancelled"
    assert shell("rollout", "rollback", "r", *why)["mode"] == "shadow"
    added = shell(
        "students",
        "add",
        "r",
        "second",
        "--model",
        "m2",
        "--base-url",
        "http://127.0.0.1:9/v1",
        *why,
    )
    assert (added["student"]["name"], added["student"]["status"]) == ("second", "candidate")
    retired = shell("students", "retire", "r", "second", *why)
    assert (retired["student"]["status"], retired["changed"]) == ("retired", True)
    key = shell("keys", "create", "ci", "--scope", "analyst")
    assert (key["name"], key["scopes"]) == ("ci", ["analyst"])
    assert key["key"]
    revoked = shell("keys", "revoke", "ci")
    assert (revoked["name"], revoked["source"]) == ("ci", "database")
    assert revoked["revoked_at"]
