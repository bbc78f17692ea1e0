"""The CLI imports only the module of the command it runs (start-up time, docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys

from gateway import cli


def test_a_command_imports_only_its_own_module() -> None:
    probe = (
        "import sys\n"
        "from gateway import cli\n"
        "try:\n"
        "    cli.main(['report', 'slices', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('gateway.commands.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = done.stdout.strip().splitlines()[-1]
    assert "gateway.commands.report" in loaded
    for heavy in ("distill", "datasets", "demo", "export", "serve"):
        assert f"gateway.commands.{heavy}'" not in loaded, loaded


def test_the_whole_help_still_lists_every_command() -> None:
    text = cli.build_parser().format_help()
    for command in cli._MODULES:
        assert command in text
    # an unknown word gets argparse's own error, with every command offered
    assert cli._command(["--config", "x.yaml"]) == "x.yaml"
    parser = cli.build_parser("x.yaml")
    assert set(cli._MODULES) <= set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
