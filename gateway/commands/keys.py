"""``keys create|list|revoke``: the API keys kept in the database.

A new key is printed once, on stdout alone, so ``KEY=$(shadow-gateway keys create …)`` captures
exactly the key; the reminder that it cannot be shown again goes to stderr (with ``--json``,
stdout is one JSON object with the key, its name and scopes). Keys from the config file are
listed beside the database's but are changed only by editing the file.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.commands.common import (
    CommandError,
    add_json_option,
    default_actor,
    print_json,
    with_engine,
)
from gateway.config import Settings, load_settings
from gateway.db.keys import (
    SCOPES,
    InvalidKeySpec,
    KeyInfo,
    UnknownKey,
    create_key,
    list_keys,
    revoke_key,
    validate_name,
)

T = TypeVar("T")


def _config_key_names(settings: Settings) -> set[str]:
    return {key.name for key in settings.config.auth.keys}


def cmd_create(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.name in _config_key_names(settings):
        raise CommandError(f"the config file already has a key named {args.name!r}")

    async def create(engine: AsyncEngine) -> str:
        return await create_key(engine, args.name, args.scope, args.created_by)

    key = with_engine(settings, create)
    scopes = ", ".join(sorted(set(args.scope)))
    if args.json:
        print_json({"name": args.name, "scopes": sorted(set(args.scope)), "key": key})
    else:
        print(key)
    print(
        f"created key {args.name!r} (scopes: {scopes}); it is shown only this once: store it now",
        file=sys.stderr,
    )
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)

    async def revoke(engine: AsyncEngine) -> KeyInfo:
        try:
            return await revoke_key(engine, args.name, args.by)
        except UnknownKey as exc:
            if args.name in _config_key_names(settings):
                raise UnknownKey(
                    f"{args.name!r} is a key from the config file: remove it there and restart"
                ) from exc
            raise

    info = with_engine(settings, revoke)
    if args.json:
        print_json(_rows(settings, [info])[-1])
        return 0
    print(f"revoked key {info.name!r}; gateways stop accepting it within seconds")
    return 0


def _timestamp(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")


def _rows(settings: Settings, stored: list[KeyInfo]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {
            "name": key.name,
            "scopes": sorted(key.scopes),
            "source": "config",
            "created_at": None,
            "created_by": None,
            "revoked_at": None,
            "revoked_by": None,
        }
        for key in sorted(settings.config.auth.keys, key=lambda key: key.name)
    ]
    rows.extend(
        {
            "name": key.name,
            "scopes": list(key.scopes),
            "source": "database",
            "created_at": _timestamp(key.created_at),
            "created_by": key.created_by,
            "revoked_at": _timestamp(key.revoked_at),
            "revoked_by": key.revoked_by,
        }
        for key in stored
    )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("NAME", "SCOPES", "SOURCE", "CREATED", "BY", "STATUS")
    lines = [header]
    for row in rows:
        status = "active"
        if row["revoked_at"] is not None:
            status = f"REVOKED {row['revoked_at']} by {row['revoked_by']}"
        lines.append(
            (
                row["name"],
                ",".join(row["scopes"]),
                row["source"],
                row["created_at"] or "-",
                row["created_by"] or "-",
                status,
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def cmd_list(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    rows = _rows(settings, with_engine(settings, list_keys))
    if args.json:
        print_json(rows)
    else:
        print(_table(rows))
    return 0


def _key_name(value: str) -> str:
    try:
        return validate_name(value)
    except InvalidKeySpec as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    keys = commands.add_parser(
        "keys",
        help="Create, list and revoke the API keys kept in the database.",
        description="Create, list and revoke the API keys kept in the database.",
    )
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    create = actions.add_parser(
        "create",
        parents=[parent],
        help="Create a key and print it (once).",
        description="Create a key and print it on stdout; only its SHA-256 is stored.",
    )
    create.add_argument(
        "name", metavar="NAME", type=_key_name, help="unique, 1-64 of A-Z a-z 0-9 . _ -"
    )
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=sorted(SCOPES),
        help="what the key may do; repeat for several",
    )
    create.add_argument(
        "--created-by", default=default_actor(), help="who asked for it (default: $USER)"
    )
    add_json_option(create, "the key with its name and scopes, as one JSON object")
    create.set_defaults(handler=cmd_create)

    listing = actions.add_parser(
        "list",
        parents=[parent],
        help="List the keys, revoked ones marked.",
        description="List the keys (config file and database), revoked ones marked.",
    )
    add_json_option(listing, "JSON instead of a table")
    listing.set_defaults(handler=cmd_list)

    revoke = actions.add_parser(
        "revoke",
        parents=[parent],
        help="Revoke a key: every gateway refuses it within seconds.",
        description="Revoke a key: every gateway refuses it within seconds.",
    )
    revoke.add_argument("name", metavar="NAME", help="the key's name")
    revoke.add_argument("--by", default=default_actor(), help="who revokes it (default: $USER)")
    add_json_option(revoke, "the revoked key (never its secret), as JSON")
    revoke.set_defaults(handler=cmd_revoke)
