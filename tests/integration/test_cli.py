"""CLI behaviour that is not one command group's own: migrate without secrets, bad databases."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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
