"""``shadow-gateway demo`` refuses early, with what to do, when it cannot start the student."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main


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
