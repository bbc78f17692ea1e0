"""``shadow-gateway demo`` refuses early, with what to do, when it cannot start the student."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.commands.common import CommandError
from gateway.commands.demo import DATA_DIR_MARK, clear_data_dir
from gateway.demo.walkthrough import runnable_cli


def test_without_the_students_environment_it_says_how_to_make_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "no-venv" / "bin" / "python"
    assert main(["demo", "--student-python", str(missing), "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "student_server/install-cpu.sh" in err
    assert "--install-student" in err
    assert str(missing) in err
    assert not (tmp_path / "postgres").exists()  # nothing was started


def test_a_model_directory_without_a_config_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["demo", "--model", str(tmp_path)]) == 1
    assert "config.json is missing" in capsys.readouterr().err


def test_request_counts_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--requests", "0"])
    assert exited.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_demo_takes_no_config_and_every_option_has_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["demo", "--config", "x.yaml"])
    assert refused.value.code == 2
    assert "unrecognized arguments: --config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "slices", "--help"])
    shown = capsys.readouterr().out
    assert "--log-level" in shown
    assert "how much the command logs" in shown


def test_each_demo_starts_clean_in_its_own_directory_and_never_empties_another(
    tmp_path: Path,
) -> None:
    data = tmp_path / "demo"
    assert clear_data_dir(data) is False  # new: made and marked
    (data / "postgres").mkdir()
    (data / "postgres" / "PG_VERSION").write_text("16")
    (data / "student-v1.log").write_text("old")
    assert clear_data_dir(data) is True
    assert sorted(p.name for p in data.iterdir()) == [DATA_DIR_MARK]
    # a PostgreSQL still running there (this process's pid stands in for it) is not pulled away
    (data / "postgres").mkdir()
    (data / "postgres" / "postmaster.pid").write_text(f"{os.getpid()}\n/data\n")
    with pytest.raises(CommandError, match="still runs"):
        clear_data_dir(data)
    assert (data / "postgres" / "postmaster.pid").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(CommandError, match="did not make"):
        clear_data_dir(other)
    assert (other / "notes.txt").read_text() == "keep me"


def test_the_printed_commands_run_without_an_active_venv() -> None:
    command = runnable_cli()
    assert command.startswith(str(Path(sys.executable).parent)) or "-m gateway" in command
    result = subprocess.run(
        [*shlex.split(command), "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
