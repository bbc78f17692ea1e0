"""The repository's own checks run with the tests: lint, format, types, import boundaries."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "gateway", "student_server", "tests", "migrations", "bench"],
        ["ruff", "format", "--check", "gateway", "student_server", "tests", "migrations", "bench"],
        ["mypy"],
        ["lint-imports"],
    ],
    ids=["ruff-check", "ruff-format", "mypy", "import-linter"],
)
def test_tool_passes(command: list[str]) -> None:
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _shell_blocks(markdown: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", markdown, flags=re.DOTALL)


def test_the_readme_gives_a_newcomer_two_commands_that_ci_runs_too() -> None:
    """The first shell block installs and runs the main job on the embedded defaults, with
    nothing external (the demo); the one under Tests is what .ci/run runs. Each is one line,
    names only files of this checkout, and the demo it runs exists with that option."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = _shell_blocks(readme[: readme.index("## Tests")])[0].strip()
    assert "\n" not in first
    assert first.startswith("python3 -m venv .venv && .venv/bin/pip install -e '.[embedded]' && ")
    assert first.endswith(".venv/bin/shadow-gateway demo --install-student")
    assert "API_KEY" not in first  # no key, no account: it runs anywhere
    tests = _shell_blocks(readme[readme.index("## Tests") :])[0].strip()
    assert "\n" not in tests
    install, run = tests.split(" && ")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert install.replace(".venv/bin/pip install", ".venv/bin/python -m pip install -q") in ci
    assert ci.rstrip().endswith(run)
    help_text = subprocess.run(
        [str(BIN / "shadow-gateway"), "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "--install-student" in help_text
