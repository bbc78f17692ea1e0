"""Which time partitions of a partitioned table should exist: a pure plan, no I/O.

``requests`` and ``student_answers`` are range-partitioned on ``created_at`` (UTC), and kept
alike: the same interval, ahead-count and retention, each table planned on its own from its
own partitions. Partitions are created *ahead* (the current period and the next ``ahead``
ones), partitions wholly older than the retention are dropped, and periods that hold rows in
the default partition (a replayed journal, a skewed clock) get a partition of their own so the
default stays small. The plan works from the partitions that really exist, whatever their
bounds: switching ``interval`` from month to day (or back) only fills the gaps after what is
there, it never overlaps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

Interval = Literal["day", "month"]


def default_partition(parent: str) -> str:
    """The DEFAULT partition of ``parent`` (rows outside every range): ``requests_default``."""
    return f"{parent}_default"


@dataclass(frozen=True, order=True)
class Span:
    """A half-open range ``[start, end)`` of ``created_at``, in UTC."""

    start: datetime
    end: datetime

    def overlaps(self, other: Span) -> bool:
        return self.start < other.end and other.start < self.end

    def name_in(self, parent: str) -> str:
        """The table name of ``parent``'s partition for this span: ``requests_p20261201`` (a
        day), ``requests_p202612`` (a month), else ``requests_p20261215_20270101``."""
        if self.end == next_period(self.start, "day") and self.start == period_start(
            self.start, "day"
        ):
            return f"{parent}_p{self.start:%Y%m%d}"
        if self.end == next_period(self.start, "month") and self.start == period_start(
            self.start, "month"
        ):
            return f"{parent}_p{self.start:%Y%m}"
        return f"{parent}_p{_stamp(self.start)}_{_stamp(self.end)}"


@dataclass(frozen=True)
class Partition:
    name: str
    span: Span


@dataclass(frozen=True)
class Plan:
    """What to change in one table's partitions (``create``: named and not there yet)."""

    create: list[Partition] = field(default_factory=list)
    drop: list[Partition] = field(default_factory=list)
    cutoff: datetime | None = None  # rows before it are past the retention (None: keep all)


def _stamp(moment: datetime) -> str:
    utc = moment.astimezone(UTC)
    return f"{utc:%Y%m%d}" if utc.time() == datetime.min.time() else f"{utc:%Y%m%d%H%M%S}"


def period_start(moment: datetime, interval: Interval) -> datetime:
    """The start (UTC midnight, or the 1st of the month) of the period holding ``moment``."""
    utc = moment.astimezone(UTC)
    day = datetime(utc.year, utc.month, utc.day, tzinfo=UTC)
    return day if interval == "day" else day.replace(day=1)


def next_period(start: datetime, interval: Interval) -> datetime:
    if interval == "day":
        return start + timedelta(days=1)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def period(moment: datetime, interval: Interval) -> Span:
    start = period_start(moment, interval)
    return Span(start, next_period(start, interval))


def _gaps(wanted: Span, taken: Sequence[Span]) -> list[Span]:
    """The parts of ``wanted`` no span of ``taken`` covers."""
    gaps, cursor = [], wanted.start
    for span in sorted(s for s in taken if s.overlaps(wanted)):
        if span.start > cursor:
            gaps.append(Span(cursor, span.start))
        cursor = max(cursor, span.end)
    if cursor < wanted.end:
        gaps.append(Span(cursor, wanted.end))
    return gaps


def plan(
    now: datetime,
    existing: Iterable[Partition],
    *,
    parent: str,
    interval: Interval,
    ahead: int,
    retention_days: int | None,
    strays: Iterable[datetime] = (),
) -> Plan:
    """What to create and drop among ``parent``'s partitions (``existing``) so that the
    current period and ``ahead`` more are covered, nothing wholly older than
    ``retention_days`` is kept, and each period with rows in the default partition
    (``strays``: their ``created_at`` values, or any moment in the period) has a partition,
    unless it is past the retention.
    """
    if ahead < 0:
        raise ValueError(f"ahead must be 0 or more, not {ahead}")
    if retention_days is not None and retention_days < 1:
        raise ValueError(f"retention_days must be at least 1, not {retention_days}")
    partitions = list(existing)
    cutoff = None if retention_days is None else now - timedelta(days=retention_days)
    drop = [p for p in partitions if cutoff is not None and p.span.end <= cutoff]
    kept = [p.span for p in partitions if p not in drop]
    wanted: set[Span] = set()
    start = period_start(now, interval)
    for _ in range(ahead + 1):
        wanted.add(Span(start, next_period(start, interval)))
        start = next_period(start, interval)
    for moment in strays:
        span = period(moment, interval)
        if cutoff is None or span.end > cutoff:
            wanted.add(span)
    create: list[Span] = []
    for span in sorted(wanted):
        create.extend(_gaps(span, kept + create))
    return Plan(
        create=[Partition(span.name_in(parent), span) for span in create],
        drop=sorted(drop, key=lambda p: p.span),
        cutoff=cutoff,
    )
