"""The lifecycle every background loop of a gateway process shares (guardian, drift, partitions)."""

from __future__ import annotations

import asyncio
import contextlib


class BackgroundLoop:
    """``start()`` runs :meth:`_run` as a task; ``stop()`` cancels it and waits for it to end."""

    task_name = "background-loop"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        raise NotImplementedError
