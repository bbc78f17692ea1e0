"""API keys in Postgres: the store, the KeyRing refreshing from it, and ``shadow-gateway keys``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncpg
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import DatabaseConfig
from gateway.db.engine import create_engine, plain_dsn
from gateway.db.keys import (
    DuplicateKeyName,
    InvalidKeySpec,
    KeyAlreadyRevoked,
    KeyStoreUnavailable,
    UnknownKey,
    create_key,
    list_keys,
    revoke_key,
)
from gateway.db.notify import KEYS_CHANNEL
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.services.auth import KeyRing
from tests.support.db import execute, fetch
from tests.support.gateway import write_config
from tests.support.process import BIN

T = TypeVar("T")
ADMIN_URL = os.environ.get("SGW_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def keys_db(database_url: str) -> str:
    execute(database_url, "TRUNCATE api_keys")
    return database_url


def with_engine(url: str, operation: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = create_engine(url, DatabaseConfig())
        try:
            return await operation(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def refreshed_ring(url: str) -> KeyRing:
    ring = KeyRing(())
    with_engine(url, ring.refresh)
    return ring


def test_create_list_authenticate_revoke(keys_db: str) -> None:
    key = with_engine(keys_db, lambda e: create_key(e, "ops-1", ["sre", "analyst", "sre"], "ana"))
    assert key.startswith("sgw_")
    assert len(key) > 40
    [info] = with_engine(keys_db, list_keys)
    assert (info.name, info.scopes, info.created_by, info.active) == (
        "ops-1",
        ("analyst", "sre"),
        "ana",
        True,
    )
    ring = refreshed_ring(keys_db)
    assert ring.authenticate(f"Bearer {key}", ["sre"]).name == "ops-1"
    with pytest.raises(PermissionDenied):
        ring.authenticate(f"Bearer {key}")  # no app scope

    revoked = with_engine(keys_db, lambda e: revoke_key(e, "ops-1", "bob"))
    assert (revoked.active, revoked.revoked_by) == (False, "bob")
    [info] = with_engine(keys_db, list_keys)
    assert info.revoked_at is not None
    assert info.revoked_by == "bob"
    with_engine(keys_db, ring.refresh)
    with pytest.raises(AuthenticationFailed):
        ring.authenticate(f"Bearer {key}", ["sre"])


def test_only_the_digest_is_stored(keys_db: str) -> None:
    key = with_engine(keys_db, lambda e: create_key(e, "app-1", ["app"], "ana"))
    [row] = fetch(keys_db, "SELECT key_sha256, t::text AS whole_row FROM api_keys t")
    assert bytes(row["key_sha256"]) == hashlib.sha256(key.encode()).digest()
    assert key not in row["whole_row"]
    assert key.removeprefix("sgw_") not in row["whole_row"]


def test_duplicate_names_are_refused_even_after_revoking(keys_db: str) -> None:
    with_engine(keys_db, lambda e: create_key(e, "app-1", ["app"], "ana"))
    with pytest.raises(DuplicateKeyName, match="'app-1' already exists"):
        with_engine(keys_db, lambda e: create_key(e, "app-1", ["sre"], "ana"))
    with_engine(keys_db, lambda e: revoke_key(e, "app-1", "ana"))
    with pytest.raises(DuplicateKeyName):
        with_engine(keys_db, lambda e: create_key(e, "app-1", ["app"], "ana"))
    assert len(with_engine(keys_db, list_keys)) == 1


def test_revoking_an_unknown_or_revoked_key_is_an_error(keys_db: str) -> None:
    with pytest.raises(UnknownKey, match="no key named 'ghost'"):
        with_engine(keys_db, lambda e: revoke_key(e, "ghost", "ana"))
    with_engine(keys_db, lambda e: create_key(e, "app-1", ["app"], "ana"))
    with_engine(keys_db, lambda e: revoke_key(e, "app-1", "ana"))
    with pytest.raises(KeyAlreadyRevoked, match="already revoked by ana"):
        with_engine(keys_db, lambda e: revoke_key(e, "app-1", "bob"))
    [info] = with_engine(keys_db, list_keys)
    assert info.revoked_by == "ana"  # the second attempt changed nothing


@pytest.mark.parametrize(
    ("name", "scopes", "message"),
    [
        ("", ["app"], "invalid key name"),
        ("x" * 65, ["app"], "invalid key name"),
        ("has space", ["app"], "invalid key name"),
        ("ok", [], "at least one scope"),
        ("ok", ["app", "root"], "unknown scope root"),
    ],
)
def test_names_and_scopes_are_validated(
    keys_db: str, name: str, scopes: list[str], message: str
) -> None:
    with pytest.raises(InvalidKeySpec, match=message):
        with_engine(keys_db, lambda e: create_key(e, name, scopes, "ana"))
    assert with_engine(keys_db, list_keys) == []


def test_changes_notify_the_keys_channel_on_commit(keys_db: str) -> None:
    async def run() -> list[str]:
        received: list[str] = []
        listener = await asyncpg.connect(plain_dsn(keys_db), timeout=5)
        await listener.add_listener(KEYS_CHANNEL, lambda *args: received.append(args[2]))
        engine = create_engine(keys_db, DatabaseConfig())
        try:
            await create_key(engine, "app-1", ["app"], "ana")
            await revoke_key(engine, "app-1", "ana")
            await create_key(engine, "app-2", ["app"], "ana")
            with pytest.raises(DuplicateKeyName):  # a refused change notifies nobody
                await create_key(engine, "app-2", ["app"], "ana")
            for _ in range(100):
                if len(received) >= 3:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            return received
        finally:
            await engine.dispose()
            await listener.close()

    assert asyncio.run(run()) == [KEYS_CHANNEL] * 3


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database nobody migrated."""
    name = f"sgw_empty_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(plain_dsn(ADMIN_URL), timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_an_unmigrated_database_says_to_migrate(empty_database: str) -> None:
    with pytest.raises(KeyStoreUnavailable, match="run `shadow-gateway migrate`"):
        with_engine(empty_database, list_keys)


# --- the command line, as a real process -------------------------------------------------


@pytest.fixture
def cli(keys_db: str, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``shadow-gateway keys …`` against the test database; its config has one app key."""
    config = write_config(tmp_path / "gateway.yaml", [_route()])
    env = {**os.environ, "DATABASE_URL": keys_db, "SGW_TEST_APP_KEY": "test-app-key"}

    def run(*args: str, database: str | None = None) -> subprocess.CompletedProcess[str]:
        options = ["--config", str(config)] if args else []  # a bare `keys` takes none
        return subprocess.run(
            [str(BIN / "shadow-gateway"), "keys", *args, *options],
            env={**env, "DATABASE_URL": database or keys_db},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


def _route() -> dict[str, object]:
    return {
        "name": "r",
        "mode": "teacher",
        "teacher": {"base_url": "http://127.0.0.1:9/v1", "model": "t"},
    }


def assert_fails(result: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert result.returncode == code, result
    assert message in result.stderr
    assert result.stdout == ""
    if code == 1:  # our own errors: one plain line
        assert result.stderr.startswith("shadow-gateway: ")
        assert result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr


def test_cli_create_list_revoke(cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    created = cli("create", "ops-1", "--scope", "sre", "--scope", "analyst", "--created-by", "ana")
    assert created.returncode == 0, created
    key = created.stdout.strip()
    assert created.stdout == f"{key}\n"
    assert key.startswith("sgw_")
    assert "shown only this once" in created.stderr
    assert key not in created.stderr

    table = cli("list")
    assert table.returncode == 0, table
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SCOPES", "SOURCE", "CREATED", "BY", "STATUS"]
    assert lines[1].split()[:3] == ["tests", "app", "config"]
    assert lines[2].split()[:3] == ["ops-1", "analyst,sre", "database"]
    assert lines[2].split()[-2:] == ["ana", "active"]
    assert key not in table.stdout

    revoked = cli("revoke", "ops-1", "--by", "bob")
    assert revoked.returncode == 0, revoked
    assert "revoked key 'ops-1'" in revoked.stdout

    listing = cli("list", "--json")
    assert listing.returncode == 0, listing
    by_name = {row["name"]: row for row in orjson.loads(listing.stdout)}
    assert by_name["tests"]["source"] == "config"
    assert by_name["ops-1"]["scopes"] == ["analyst", "sre"]
    assert by_name["ops-1"]["created_by"] == "ana"
    assert by_name["ops-1"]["revoked_by"] == "bob"
    assert by_name["ops-1"]["revoked_at"] is not None
    assert "REVOKED" in cli("list").stdout


def test_cli_key_authenticates_until_revoked(
    cli: Callable[..., subprocess.CompletedProcess[str]], keys_db: str
) -> None:
    key = cli("create", "app-1", "--scope", "app").stdout.strip()
    [row] = fetch(keys_db, "SELECT created_by FROM api_keys")
    assert row["created_by"] == (os.environ.get("USER") or "cli")
    assert refreshed_ring(keys_db).authenticate(f"Bearer {key}").name == "app-1"
    assert cli("revoke", "app-1").returncode == 0
    with pytest.raises(AuthenticationFailed):
        refreshed_ring(keys_db).authenticate(f"Bearer {key}")


def test_cli_errors_are_one_line_and_exit_1(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    assert cli("create", "app-1", "--scope", "app").returncode == 0
    assert_fails(cli("create", "app-1", "--scope", "app"), 1, "'app-1' already exists")
    assert_fails(cli("create", "tests", "--scope", "sre"), 1, "config file already has a key")
    assert_fails(cli("revoke", "ghost"), 1, "no key named 'ghost'")
    assert_fails(cli("revoke", "tests"), 1, "is a key from the config file")
    assert cli("revoke", "app-1").returncode == 0
    assert_fails(cli("revoke", "app-1"), 1, "already revoked")


def test_cli_bad_arguments_exit_2(cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    assert_fails(cli("create", "x", "--scope", "root"), 2, "invalid choice: 'root'")
    assert_fails(cli("create", "--scope", "app"), 2, "required: NAME")
    assert_fails(cli("create", "x"), 2, "required: --scope")
    assert_fails(cli("create", "bad name", "--scope", "app"), 2, "invalid key name")
    assert_fails(cli("revoke"), 2, "required: NAME")
    assert_fails(cli(), 2, "required: ACTION")


def test_cli_database_problems(
    cli: Callable[..., subprocess.CompletedProcess[str]], empty_database: str
) -> None:
    assert_fails(cli("list", database=empty_database), 1, "run `shadow-gateway migrate`")
    assert_fails(
        cli("create", "a", "--scope", "app", database=empty_database),
        1,
        "run `shadow-gateway migrate`",
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"postgresql://postgres@127.0.0.1:{sock.getsockname()[1]}/x"
    assert_fails(cli("list", database=closed), 1, "cannot reach Postgres")
