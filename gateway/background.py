"""What every background loop of a gateway process shares: its task's lifecycle, and logging
a failure that repeats every round once rather than every round."""

from __future__ import annotations

import asyncio
import contextlib
import logging


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


class RecurringFailure:
    """Logs a failure that repeats every round (Postgres down, say) once when it starts and
    once when it ends, not every round: one line with the cause, details at DEBUG."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self.failing = False

    def failed(self, exc: BaseException, retry: str = "retrying") -> None:
        if self.failing:
            self._log.debug("%s failed again", self._what, exc_info=exc)
            return
        self.failing = True
        cause = str(exc).splitlines()[0] if str(exc) else ""
        self._log.warning(
            "%s failed (%s%s); %s, logged again once it works",
            self._what,
            type(exc).__name__,
            f": {cause}" if cause else "",
            retry,
        )
        self._log.debug("%s failed", self._what, exc_info=exc)

    def succeeded(self) -> None:
        if self.failing:
            self.failing = False
            self._log.info("%s works again", self._what)
