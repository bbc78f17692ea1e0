from __future__ import annotations

import logging

import pytest

from gateway.background import RecurringFailure


def test_a_recurring_failure_is_logged_when_it_starts_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("shadow_gateway.test")
    failure = RecurringFailure(log, "refreshing routes")
    caplog.set_level(logging.INFO, logger="shadow_gateway.test")
    for _ in range(100):  # Postgres down for a hundred rounds
        failure.failed(ConnectionRefusedError(111, "Connect call failed\nsecond line"))
    failure.succeeded()
    failure.succeeded()
    failure.failed(TimeoutError())
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "refreshing routes failed (ConnectionRefusedError: [Errno 111] Connect call failed); "
            "retrying, logged again once it works",
        ),
        ("INFO", "refreshing routes works again"),
        (
            "WARNING",
            "refreshing routes failed (TimeoutError); retrying, logged again once it works",
        ),
    ]
    assert all(record.exc_info is None for record in caplog.records)  # one line each
