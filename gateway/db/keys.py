"""API keys in Postgres: created and revoked from the CLI, read by every replica's KeyRing.

Only a key's SHA-256 digest is stored; the plaintext exists once, in the return value of
:func:`create_key`, and nowhere else. Every change sends ``NOTIFY shadow_gateway_keys`` in the
same transaction, so replicas reload their keys as soon as (and only once) the change is
committed. Revoking keeps the row — it is the record of who held which key, and when — so a
revoked key's name is never reused.

The store's problems are domain errors, translated here from SQLAlchemy and asyncpg so the
CLI (or an admin API) can print them as they are:

    KeyStoreError
    ├── InvalidKeySpec        a name outside [A-Za-z0-9._-]{1,64}, unknown or no scopes, no actor
    ├── DuplicateKeyName      a key (live or revoked) already has that name
    ├── UnknownKey            no key has that name
    ├── KeyAlreadyRevoked     the key was revoked before
    └── KeyStoreUnavailable   Postgres unreachable, or its schema not migrated
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import get_args

from sqlalchemy import RowMapping, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.config import ApiKey, Scope
from gateway.db.notify import KEYS_CHANNEL
from gateway.db.tables import api_keys

SCOPES: frozenset[str] = frozenset(get_args(Scope))
KEY_PREFIX = "sgw_"  # lets secret scanners and people recognise a leaked gateway key
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_UNDEFINED_TABLE = "42P01"
# connection exceptions, invalid catalog (no such database), invalid authorization
_UNREACHABLE_CLASSES = ("08", "3D", "28")


_INFO_COLUMNS = (
    api_keys.c.name,
    api_keys.c.scopes,
    api_keys.c.created_at,
    api_keys.c.created_by,
    api_keys.c.revoked_at,
    api_keys.c.revoked_by,
)


class KeyStoreError(Exception):
    """A key operation cannot be done; the message says why, in one line."""


class InvalidKeySpec(KeyStoreError):
    pass


class DuplicateKeyName(KeyStoreError):
    pass


class UnknownKey(KeyStoreError):
    pass


class KeyAlreadyRevoked(KeyStoreError):
    pass


class KeyStoreUnavailable(KeyStoreError):
    pass


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: everything but its digest."""

    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    revoked_by: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidKeySpec(
            f"invalid key name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ -"
        )
    return name


def validate_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes, deduplicated and sorted (a stable order in the table and in listings)."""
    chosen = set(scopes)
    if not chosen:
        raise InvalidKeySpec(f"a key needs at least one scope ({', '.join(sorted(SCOPES))})")
    unknown = chosen - SCOPES
    if unknown:
        raise InvalidKeySpec(
            f"unknown scope {', '.join(sorted(unknown))}: choose from {', '.join(sorted(SCOPES))}"
        )
    return tuple(sorted(chosen))


def _validate_actor(actor: str) -> str:
    if not actor.strip():
        raise InvalidKeySpec("the actor (who creates or revokes the key) must not be empty")
    return actor.strip()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@contextlib.asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    """Turn driver errors that say "the database is not there (yet)" into KeyStoreUnavailable."""
    try:
        yield
    except (OSError, TimeoutError) as exc:
        raise KeyStoreUnavailable(f"cannot reach Postgres: {exc}") from exc
    except DBAPIError as exc:
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
        if sqlstate == _UNDEFINED_TABLE:
            raise KeyStoreUnavailable(
                "the database has no api_keys table: run `shadow-gateway migrate`"
            ) from exc
        if sqlstate[:2] in _UNREACHABLE_CLASSES or exc.connection_invalidated:
            reason = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
            raise KeyStoreUnavailable(f"cannot use Postgres: {reason}") from exc
        raise


async def _notify(connection: AsyncConnection, name: str) -> None:
    # pg_notify rather than NOTIFY: it takes bind parameters. Delivered only on commit.
    await connection.execute(select(func.pg_notify(KEYS_CHANNEL, name)))


async def create_key(engine: AsyncEngine, name: str, scopes: Iterable[str], created_by: str) -> str:
    """Store a new key's digest and return the key: the only time its plaintext exists."""
    name = validate_name(name)
    chosen = validate_scopes(scopes)
    created_by = _validate_actor(created_by)
    key = generate_key()
    statement = (
        insert(api_keys)
        .values(name=name, key_sha256=digest(key), scopes=list(chosen), created_by=created_by)
        .on_conflict_do_nothing(index_elements=[api_keys.c.name])
        .returning(api_keys.c.id)
    )
    async with _translated(), engine.begin() as connection:
        if (await connection.execute(statement)).first() is None:
            raise DuplicateKeyName(
                f"a key named {name!r} already exists (revoked keys keep their names)"
            )
        await _notify(connection, name)
    return key


async def revoke_key(engine: AsyncEngine, name: str, revoked_by: str) -> KeyInfo:
    """Mark the key revoked (the row stays, as the record); returns it as it now is."""
    revoked_by = _validate_actor(revoked_by)
    statement = (
        update(api_keys)
        .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=func.now(), revoked_by=revoked_by)
        .returning(*_INFO_COLUMNS)
    )
    async with _translated(), engine.begin() as connection:
        row = (await connection.execute(statement)).first()
        if row is None:
            existing = await connection.execute(
                select(api_keys.c.revoked_at, api_keys.c.revoked_by).where(api_keys.c.name == name)
            )
            found = existing.first()
            if found is None:
                raise UnknownKey(f"no key named {name!r} in the database")
            raise KeyAlreadyRevoked(
                f"the key {name!r} was already revoked by {found.revoked_by} "
                f"at {found.revoked_at:%Y-%m-%d %H:%M:%S %Z}"
            )
        await _notify(connection, name)
    return _info(row._mapping)


async def list_keys(engine: AsyncEngine) -> list[KeyInfo]:
    """Every key, revoked ones included, by name."""
    statement = select(*_INFO_COLUMNS).order_by(api_keys.c.name)
    async with _translated(), engine.connect() as connection:
        return [_info(row._mapping) for row in await connection.execute(statement)]


async def active_keys(engine: AsyncEngine) -> tuple[ApiKey, ...]:
    """The keys that may authenticate now, as the KeyRing holds them."""
    statement = select(api_keys.c.name, api_keys.c.scopes, api_keys.c.key_sha256).where(
        api_keys.c.revoked_at.is_(None)
    )
    async with _translated(), engine.connect() as connection:
        rows = await connection.execute(statement)
        return tuple(
            ApiKey(name=row.name, scopes=frozenset(row.scopes), sha256=bytes(row.key_sha256))
            for row in rows
        )


def _info(row: RowMapping) -> KeyInfo:
    return KeyInfo(
        name=row["name"],
        scopes=tuple(row["scopes"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
        revoked_at=row["revoked_at"],
        revoked_by=row["revoked_by"],
    )
