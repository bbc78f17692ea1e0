"""The command line is consistent: ``--json`` on every command that prints a result, ``--format``
only for export's dataset format, and one syntax for ages and durations (``7d``, ``30m``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from gateway.cli import build_parser
from gateway.errors import InvalidRequest
from gateway.protocol.reports import parse_duration, parse_time, window

# Commands that print no result to read: a server, the migrations, the demo's walkthrough.
NO_RESULT = {("serve",), ("migrate",), ("demo",)}


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable command (``rollout set``, ``replay`` …) and its parser."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path, parser
    for group in groups:
        for name, child in group.choices.items():
            yield from leaves(child, (*path, name))


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


COMMANDS = dict(leaves(build_parser()))


def test_the_tree_is_the_whole_command_line() -> None:
    assert {("rollout", "set"), ("students", "promote"), ("keys", "revoke"), ("replay",)} <= set(
        COMMANDS
    )
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("path", sorted(set(COMMANDS) - NO_RESULT), ids=" ".join)
def test_every_command_with_a_result_takes_json(path: tuple[str, ...]) -> None:
    found = options(COMMANDS[path]).get("--json")
    assert found is not None, f"{' '.join(path)} has no --json"
    assert isinstance(found, argparse._StoreTrueAction)
    assert "JSON" in (found.help or "")


def test_format_names_export_s_dataset_format_only() -> None:
    """``--format json`` was the old spelling of ``--json``; only export's stays visible."""
    visible = {
        path
        for path, parser in COMMANDS.items()
        if "--format" in options(parser) and options(parser)["--format"].help != argparse.SUPPRESS
    }
    assert visible == {("export",)}
    export = options(COMMANDS[("export",)])["--format"]
    assert "openai" in (export.help or "")
    assert "dpo" in (export.help or "")


def test_changing_commands_parse_json() -> None:
    parsed = build_parser().parse_args(
        ["rollout", "set", "support-bot", "--percent", "5", "--reason", "r", "--json"]
    )
    assert parsed.json is True
    parsed = build_parser().parse_args(
        ["students", "promote", "support-bot", "small", "--reason", "r", "--json"]
    )
    assert parsed.json is True
    parsed = build_parser().parse_args(["keys", "create", "ci", "--scope", "app", "--json"])
    assert parsed.json is True


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
        ("2w", 14 * 86400.0),
        (" 2H ", 7200.0),
    ],
)
def test_rollout_plan_holds_take_the_age_syntax(text: str, seconds: float) -> None:
    parsed = build_parser().parse_args(
        ["rollout", "plan", "support-bot", "5,50", "--hold", text, "--reason", "r"]
    )
    assert parsed.hold == seconds


@pytest.mark.parametrize("text", ["0", "-5", "0m", "abc", "5y", "inf", "1e400"])
def test_rollout_plan_refuses_a_hold_that_is_not_one(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(
            ["rollout", "plan", "support-bot", "5,50", "--hold", text, "--reason", "r"]
        )
    assert exit_.value.code == 2
    assert "--hold" in capsys.readouterr().err


def test_one_parser_for_durations_and_ages() -> None:
    now = datetime(2024, 5, 10, 12, tzinfo=UTC)
    assert parse_duration("7d", "--since") == timedelta(days=7)
    assert parse_duration("2w", "--since") == timedelta(weeks=2)
    assert parse_time("2w", "--since", now) == now - timedelta(weeks=2)
    assert parse_time("90m", "since", now) == now - timedelta(minutes=90)
    assert window("7d", None, timedelta(days=1), now=now).since == now - timedelta(days=7)
    with pytest.raises(InvalidRequest, match="not a duration for --hold"):
        parse_duration("soon", "--hold")
    with pytest.raises(InvalidRequest, match="or an age like 90m"):
        parse_time("9" * 400 + "d", "--since", now)


@pytest.mark.parametrize(
    "path", sorted(path for path, parser in COMMANDS.items() if "--since" in options(parser))
)
def test_every_since_option_says_it_takes_an_age(path: tuple[str, ...]) -> None:
    assert "age" in (options(COMMANDS[path])["--since"].help or ""), path
