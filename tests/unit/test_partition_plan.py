"""The pure partition plan: periods, names, gaps, retention, strays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.core.partitions import Partition, Span, default_partition, period, plan


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def day(y: int, m: int, d: int) -> Partition:
    span = period(at(y, m, d), "day")
    return Partition(span.name_in("requests"), span)


def test_periods_are_utc_days_and_months_across_the_year_end() -> None:
    late = datetime(2026, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # Jan 1 in UTC
    assert period(late, "day") == Span(at(2027, 1, 1), at(2027, 1, 2))
    assert period(at(2026, 12, 15), "month") == Span(at(2026, 12, 1), at(2027, 1, 1))


def test_names_say_the_table_and_the_range() -> None:
    assert Span(at(2026, 12, 1), at(2026, 12, 2)).name_in("requests") == "requests_p20261201"
    assert Span(at(2026, 12, 1), at(2027, 1, 1)).name_in("requests") == "requests_p202612"
    assert (
        Span(at(2026, 12, 15), at(2027, 1, 1)).name_in("requests") == "requests_p20261215_20270101"
    )
    assert (
        Span(at(2026, 12, 1, 6), at(2026, 12, 2)).name_in("requests")
        == "requests_p20261201060000_20261202"
    )
    assert (
        Span(at(2026, 12, 1), at(2026, 12, 2)).name_in("student_answers")
        == "student_answers_p20261201"
    )
    assert default_partition("student_answers") == "student_answers_default"


def test_the_current_period_and_ahead_are_created_once() -> None:
    first = plan(
        at(2026, 12, 30, 10), [], parent="requests", interval="day", ahead=3, retention_days=None
    )
    assert [s.name for s in first.create] == [
        "requests_p20261230",
        "requests_p20261231",
        "requests_p20270101",
        "requests_p20270102",
    ]
    again = plan(
        at(2026, 12, 30, 10),
        first.create,
        parent="requests",
        interval="day",
        ahead=3,
        retention_days=None,
    )
    assert again.create == []
    assert again.drop == []
    assert again.cutoff is None


def test_only_gaps_are_filled_when_the_interval_changes() -> None:
    december = Partition("requests_p202612", Span(at(2026, 12, 1), at(2027, 1, 1)))
    by_day = plan(
        at(2026, 12, 30),
        [december],
        parent="requests",
        interval="day",
        ahead=3,
        retention_days=None,
    )
    assert [s.name for s in by_day.create] == ["requests_p20270101", "requests_p20270102"]
    days = [day(2026, 11, 29), day(2026, 11, 30)]
    by_month = plan(
        at(2026, 11, 29), days, parent="requests", interval="month", ahead=1, retention_days=None
    )
    assert [s.name for s in by_month.create] == [
        "requests_p20261101_20261129",  # the month's part before the days (in the window)
        "requests_p202612",
    ]


def test_retention_drops_only_partitions_wholly_past_it() -> None:
    existing = [day(2026, 11, d) for d in range(1, 31)]
    done = plan(
        at(2026, 11, 30, 12),
        existing,
        parent="requests",
        interval="day",
        ahead=1,
        retention_days=10,
    )
    assert done.cutoff == at(2026, 11, 20, 12)
    assert [p.name for p in done.drop] == [f"requests_p202611{d:02}" for d in range(1, 20)]


def test_strays_get_a_partition_unless_past_the_retention() -> None:
    done = plan(
        at(2026, 12, 1),
        [],
        parent="requests",
        interval="day",
        ahead=1,
        retention_days=30,
        strays=[at(2027, 6, 1, 8), at(2026, 11, 15), at(2026, 10, 1)],
    )
    assert [s.name for s in done.create] == [
        "requests_p20261115",
        "requests_p20261201",
        "requests_p20261202",
        "requests_p20270601",
    ]


@pytest.mark.parametrize(("ahead", "retention"), [(-1, None), (1, 0)])
def test_nonsense_settings_are_refused(ahead: int, retention: int | None) -> None:
    with pytest.raises(ValueError, match=r"ahead|retention"):
        plan(
            at(2026, 12, 1),
            [],
            parent="requests",
            interval="day",
            ahead=ahead,
            retention_days=retention,
        )


def test_each_table_is_planned_under_its_own_names() -> None:
    requests = plan(
        at(2026, 12, 30), [], parent="requests", interval="day", ahead=1, retention_days=None
    )
    answers = plan(
        at(2026, 12, 30), [], parent="student_answers", interval="day", ahead=1, retention_days=None
    )
    assert [p.span for p in answers.create] == [p.span for p in requests.create]
    assert [p.name for p in answers.create] == [
        "student_answers_p20261230",
        "student_answers_p20261231",
    ]
