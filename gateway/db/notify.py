"""Change notifications between replicas: Postgres LISTEN/NOTIFY, with polling as the net.

A writer of shared state (route knobs, API keys) sends ``NOTIFY <channel>`` in the same
transaction as its change. Each gateway process keeps one connection that LISTENs on the
channels it cares about and calls the channel's refresh function on every notification. A
notification can be missed (the connection dropped, Postgres restarted), so every refresh
function also runs every ``poll_s`` seconds, and once after each reconnect: a replica is never
more than ``poll_s`` behind, and usually a few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

import asyncpg

from gateway.background import RecurringFailure

_log = logging.getLogger("shadow_gateway.notify")

Refresh = Callable[[], Awaitable[None]]
ROUTES_CHANNEL = "shadow_gateway_routes"
KEYS_CHANNEL = "shadow_gateway_keys"
STUDENTS_CHANNEL = "shadow_gateway_students"


class ChangeListener:
    def __init__(self, dsn: str, refreshers: Mapping[str, Refresh], poll_s: float = 5.0) -> None:
        self._dsn = dsn
        self._refreshers = dict(refreshers)
        self._failures = {
            channel: RecurringFailure(_log, f"refreshing {channel}") for channel in refreshers
        }
        self._poll_s = poll_s
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connection: asyncpg.Connection | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="change-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._disconnect()

    def _on_notify(self, _conn: object, _pid: int, channel: str, _payload: object) -> None:
        self._pending.add(channel)
        self._wake.set()

    def _on_terminate(self, _conn: object) -> None:
        self._connection = None
        self._wake.set()

    async def _connect(self) -> None:
        connection = await asyncpg.connect(self._dsn, timeout=5)
        for channel in self._refreshers:
            await connection.add_listener(channel, self._on_notify)
        connection.add_termination_listener(self._on_terminate)
        self._connection = connection
        self._pending.update(self._refreshers)  # catch up on anything missed while away

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 2)

    async def _run(self) -> None:
        while True:
            if self._connection is None or self._connection.is_closed():
                try:
                    await self._connect()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                    self._connection = None  # polling carries on meanwhile
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            self._wake.clear()
            channels = self._pending or set(self._refreshers)  # a timeout means: poll all
            self._pending = set()
            for channel in channels:
                try:
                    await self._refreshers[channel]()
                except Exception as exc:  # a failed refresh keeps the cache; the next poll retries
                    self._failures[channel].failed(exc, "keeping the cached state")
                else:
                    self._failures[channel].succeeded()
