"""Time partitions of ``requests`` and ``student_answers`` against the real Postgres: created
ahead, rows moved out of the default partition, dropped past the retention, both tables alike
and each on its own, two keepers at once, the writer's upserts into partitions, and the
``partitions`` command."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.config import DatabaseConfig, LogWriterConfig, PartitionsConfig
from gateway.db.engine import create_engine, plain_dsn, sqlalchemy_url
from gateway.db.migrate import upgrade
from gateway.db.partitions import ADVISORY_KEY, Maintenance, PartitionError, maintain
from gateway.db.writer import LogWriter
from gateway.metrics import Metrics
from tests.support.db import execute, fetch, wait_for
from tests.support.gateway import GatewayServer, route, write_config
from tests.support.process import BIN

ADMIN_URL = os.environ.get("SGW_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
NOW = datetime(2027, 3, 10, 15, 30, tzinfo=UTC)  # past the month the migration made
TABLES = ("requests", "student_answers")
T = TypeVar("T")


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(plain_dsn(ADMIN_URL), timeout=10)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def _scratch(revision: str = "head") -> Iterator[str]:
    name = f"sgw_part_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url, revision)
    yield url
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def url() -> Iterator[str]:
    """A database of its own, with only the default partitions (the migrations' months for
    today are dropped, so what the tests expect does not move with the calendar)."""
    for fresh in _scratch():
        for table in TABLES:
            for name in partitions(fresh, table):
                if name != f"{table}_default":
                    execute(fresh, f"DROP TABLE {name}")
        yield fresh


def on_engine(url: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = create_engine(url, DatabaseConfig())
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def keep(url: str, now: datetime = NOW, **config: Any) -> Maintenance:
    dry_run = config.pop("dry_run", False)
    lock_timeout_s = config.pop("lock_timeout_s", 5.0)
    settings = PartitionsConfig(**config)
    return on_engine(
        url,
        lambda engine: maintain(
            engine, settings, now=now, dry_run=dry_run, lock_timeout_s=lock_timeout_s
        ),
    )


def partitions(url: str, table: str = "requests") -> list[str]:
    rows = fetch(
        url,
        "SELECT c.relname AS name FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass ORDER BY 1",
        table,
    )
    return [row["name"] for row in rows]


def where(url: str, table: str = "requests") -> dict[str, str]:
    """request_id → the partition holding it."""
    rows = fetch(url, f"SELECT request_id, tableoid::regclass::text AS part FROM {table}")
    return {row["request_id"]: row["part"] for row in rows}


def insert(url: str, *rows: tuple[str, str]) -> None:
    values = ", ".join(f"('{rid}', 'r', 'chat', '{at}', 'shadow')" for rid, at in rows)
    execute(
        url,
        f"INSERT INTO requests (request_id, route, endpoint, created_at, mode) VALUES {values}",
    )


def answer(url: str, *rows: tuple[str, str]) -> None:
    """Students' answers to the requests ``rows`` name, at the requests' times."""
    values = ", ".join(f"('{rid}', 's', 'live', '{at}', 'r', 'chat')" for rid, at in rows)
    execute(
        url,
        "INSERT INTO student_answers (request_id, student, source, created_at, route, endpoint) "
        f"VALUES {values}",
    )


def test_creates_the_current_day_and_the_days_ahead_once(url: str) -> None:
    before = {table: set(partitions(url, table)) for table in TABLES}
    done = keep(url, ahead=3)
    for table in TABLES:  # both tables alike
        assert done[table].created == [f"{table}_p2027031{d}" for d in range(4)]
        assert set(partitions(url, table)) == before[table] | set(done[table].created)
    assert done.created == done["requests"].created + done["student_answers"].created
    assert not done.failed
    insert(
        url,
        ("first", "2027-03-10 00:00Z"),
        ("last", "2027-03-10 23:59:59.999999Z"),
        ("next", "2027-03-11 00:00Z"),
        ("local", "2027-03-11 00:30+01"),  # still the 10th in UTC
    )
    assert where(url) == {
        "first": "requests_p20270310",
        "last": "requests_p20270310",
        "next": "requests_p20270311",
        "local": "requests_p20270310",
    }
    answer(url, ("first", "2027-03-10 00:00Z"), ("next", "2027-03-11 00:00Z"))
    assert where(url, "student_answers") == {
        "first": "student_answers_p20270310",
        "next": "student_answers_p20270311",
    }
    again = keep(url, ahead=3)
    assert again.created == []
    assert [t.plan.create for t in again.tables] == [[], []]


def test_month_interval_and_a_switch_to_days_fills_only_the_gaps(url: str) -> None:
    done = keep(url, interval="month", ahead=2)
    assert done["requests"].created == ["requests_p202703", "requests_p202704", "requests_p202705"]
    # days ahead of May's end are new; the days inside the months are already covered
    switched = keep(url, now=datetime(2027, 5, 29, tzinfo=UTC), interval="day", ahead=4)
    assert switched["requests"].created == ["requests_p20270601", "requests_p20270602"]
    assert switched["student_answers"].created == [
        "student_answers_p20270601",
        "student_answers_p20270602",
    ]


def test_indexes_and_key_reach_new_partitions(url: str) -> None:
    keep(url, ahead=1)
    names = fetch(
        url,
        "SELECT indexrelid::regclass::text AS name FROM pg_index "
        "WHERE indrelid = 'requests_p20270310'::regclass",
    )
    assert len(names) == 5  # the key and the four indexes of 0001 and 0005
    insert(url, ("a", "2027-03-10 01:00Z"))
    with pytest.raises(asyncpg.UniqueViolationError):
        insert(url, ("a", "2027-03-10 01:00Z"))
    answers = fetch(
        url,
        "SELECT indexrelid::regclass::text AS name FROM pg_index "
        "WHERE indrelid = 'student_answers_p20270310'::regclass",
    )
    assert len(answers) == 2  # the key and ix_student_answers_route_created_at
    answer(url, ("a", "2027-03-10 01:00Z"))
    with pytest.raises(asyncpg.UniqueViolationError):
        answer(url, ("a", "2027-03-10 01:00Z"))
    with pytest.raises(asyncpg.CheckViolationError):  # the parent's CHECK reached it too
        execute(
            url,
            "INSERT INTO student_answers_p20270310 (request_id, student, source, created_at, "
            "route, endpoint) VALUES ('b', 's', 'guess', '2027-03-10 02:00Z', 'r', 'chat')",
        )


def test_rows_in_the_default_partition_get_a_partition_of_their_own(url: str) -> None:
    insert(url, ("future", "2027-06-01 08:00Z"), ("skewed", "2027-03-12 23:59:59Z"))
    assert where(url) == {"future": "requests_default", "skewed": "requests_default"}
    preview = keep(url, ahead=1, dry_run=True)["requests"]
    assert preview.default_rows == 2
    assert preview.moved == 2
    assert [s.name for s in preview.plan.create] == [
        "requests_p20270310",
        "requests_p20270311",
        "requests_p20270312",  # beyond 1 day ahead, but it holds a row
        "requests_p20270601",
    ]
    assert where(url)["future"] == "requests_default"  # a dry run changes nothing
    done = keep(url, ahead=2)["requests"]
    assert done.moved == 2
    assert where(url) == {"future": "requests_p20270601", "skewed": "requests_p20270312"}
    assert fetch(url, "SELECT count(*) AS n FROM requests_default") == [{"n": 0}]


def test_answers_in_their_default_partition_get_a_partition_of_their_own(url: str) -> None:
    """Each table by its own strays: an answer's period gets a partition in student_answers
    even where requests has none (its request's row lies elsewhere, or is gone)."""
    answer(url, ("future", "2027-06-01 08:00Z"), ("replayed", "2027-03-12 23:59:59Z"))
    assert where(url, "student_answers") == {
        "future": "student_answers_default",
        "replayed": "student_answers_default",
    }
    preview = keep(url, ahead=1, dry_run=True)
    assert preview["student_answers"].default_rows == 2
    assert preview["student_answers"].moved == 2
    assert [p.name for p in preview["student_answers"].plan.create] == [
        "student_answers_p20270310",
        "student_answers_p20270311",
        "student_answers_p20270312",
        "student_answers_p20270601",
    ]
    assert [p.name for p in preview["requests"].plan.create] == [
        "requests_p20270310",
        "requests_p20270311",
    ]
    done = keep(url, ahead=1)
    assert done["student_answers"].moved == 2
    assert done["requests"].moved == 0
    assert where(url, "student_answers") == {
        "future": "student_answers_p20270601",
        "replayed": "student_answers_p20270312",
    }
    assert fetch(url, "SELECT count(*) AS n FROM student_answers_default") == [{"n": 0}]


def test_retention_drops_whole_old_partitions_and_old_default_rows(url: str) -> None:
    keep(url, now=datetime(2027, 1, 1, tzinfo=UTC), ahead=70)  # every day to 2027-03-12
    insert(
        url,
        ("old", "2027-01-02 10:00Z"),
        ("edge", "2027-02-08 01:00Z"),  # before the cutoff, but its day's partition is kept
        ("kept", "2027-02-09 00:00Z"),
        ("ancient", "1999-01-01 00:00Z"),  # below every partition: in the default
    )
    answer(url, ("old", "2027-01-02 10:00Z"), ("kept", "2027-02-09 00:00Z"))
    answer(url, ("ancient", "1999-01-01 00:00Z"), ("older", "1998-01-01 00:00Z"))
    planned = keep(url, retention_days=30, dry_run=True)
    assert planned.cutoff == datetime(2027, 2, 8, 15, 30, tzinfo=UTC)
    preview = planned["requests"]
    assert preview.plan.cutoff == planned.cutoff
    assert preview.plan.drop[0].name == "requests_p20270101"
    assert preview.plan.drop[-1].name == "requests_p20270207"
    assert preview.expired == 1  # "ancient"
    assert planned["student_answers"].expired == 2
    assert [p.name for p in planned["student_answers"].plan.drop] == [
        p.name.replace("requests", "student_answers") for p in preview.plan.drop
    ]
    assert len(where(url)) == 4
    done = keep(url, retention_days=30)
    assert done["requests"].dropped == [p.name for p in preview.plan.drop]
    assert done["requests"].expired == 1
    assert done["student_answers"].expired == 2
    assert done.dropped == [p.name for t in planned.tables for p in t.plan.drop]
    assert set(where(url)) == {"edge", "kept"}
    assert set(where(url, "student_answers")) == {"kept"}
    for table in TABLES:
        assert f"{table}_p20270208" in partitions(url, table)
        assert f"{table}_p20270207" not in partitions(url, table)


def test_two_keepers_at_once_share_the_work(url: str) -> None:
    async def both() -> list[Maintenance]:
        engines = [
            create_async_engine(sqlalchemy_url(url)),
            create_async_engine(sqlalchemy_url(url)),
        ]
        settings = PartitionsConfig(ahead=20)
        try:
            return list(await asyncio.gather(*(maintain(e, settings, now=NOW) for e in engines)))
        finally:
            for engine in engines:
                await engine.dispose()

    first, second = asyncio.run(both())
    assert not first.failed
    assert not second.failed
    created = first.created + second.created
    assert sorted(created) == [  # once each
        f"{table}_p202703{day}" for table in TABLES for day in range(10, 31)
    ]
    assert [] in (first.created, second.created)  # the second found the work done


def test_a_keeper_waits_for_the_other_only_so_long(url: str) -> None:
    async def blocked() -> None:
        holder = await asyncpg.connect(plain_dsn(url))
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", ADVISORY_KEY)
            engine = create_engine(url, DatabaseConfig())
            try:
                await maintain(engine, PartitionsConfig(), now=NOW, lock_timeout_s=0.2)
            finally:
                await engine.dispose()
        finally:
            await holder.close()

    with pytest.raises(PartitionError, match="another replica"):
        asyncio.run(blocked())


def test_a_step_whose_lock_is_not_granted_is_reported_not_fatal(url: str) -> None:
    async def run() -> Maintenance:
        holder = await asyncpg.connect(plain_dsn(url))
        try:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("LOCK TABLE requests IN SHARE UPDATE EXCLUSIVE MODE")
            engine = create_engine(url, DatabaseConfig())
            try:
                return await maintain(
                    engine, PartitionsConfig(ahead=1), now=NOW, lock_timeout_s=0.2
                )
            finally:
                await engine.dispose()
                await transaction.rollback()
        finally:
            await holder.close()

    done = asyncio.run(run())
    assert done["requests"].created == []
    assert [step for step, _ in done.failed] == [
        "create requests_p20270310",
        "create requests_p20270311",
    ]
    assert "lock timeout" in done.failed[0][1]
    # the other table is not held up by the one that is
    assert done["student_answers"].created == [
        "student_answers_p20270310",
        "student_answers_p20270311",
    ]
    assert keep(url, ahead=1).created == ["requests_p20270310", "requests_p20270311"]


def test_an_unpartitioned_table_is_a_clear_error() -> None:
    for old in _scratch("0005"):
        with pytest.raises(PartitionError, match="not partitioned"):
            keep(old)


def test_a_missing_student_answers_table_is_a_clear_error_and_changes_nothing() -> None:
    for old in _scratch("0008"):
        before = partitions(old)
        with pytest.raises(PartitionError, match=r"no student_answers table.*migrate"):
            keep(old, ahead=3)
        assert partitions(old) == before


# --- the writer ---------------------------------------------------------------------------------


def test_writer_halves_meet_in_their_partition_and_in_the_default(url: str, tmp_path: Path) -> None:
    keep(url, ahead=1)
    in_partition = datetime(2027, 3, 10, 9, 0, 0, 123456, tzinfo=UTC)
    outside = datetime(2031, 1, 1, tzinfo=UTC)

    def half(request_id: str, created_at: datetime, **columns: object) -> dict[str, object]:
        return {
            "request_id": request_id,
            "route": "r",
            "endpoint": "chat",
            "created_at": created_at,
            "mode": "shadow",
            "slices": {},
            **columns,
        }

    async def run() -> None:
        config = LogWriterConfig(batch_size=10, flush_interval_s=0.05)
        log = LogWriter(plain_dsn(url), tmp_path / "j", config, Metrics(CollectorRegistry()))
        await log.start()
        log.submit(half("p", in_partition, teacher_output="t"))
        log.submit(half("d", outside, student_output="s", student_status="ok"))
        await asyncio.sleep(0.3)  # the first halves land on their own
        log.submit(half("p", in_partition, student_output="s", student_status="ok"))
        log.submit(half("d", outside, teacher_output="t"))
        await log.close()

    asyncio.run(run())
    rows = fetch(
        url,
        "SELECT request_id, tableoid::regclass::text AS part, created_at, teacher_output, "
        "student_output FROM requests ORDER BY request_id",
    )
    assert rows == [
        {
            "request_id": "d",
            "part": "requests_default",
            "created_at": outside,
            "teacher_output": "t",
            "student_output": "s",
        },
        {
            "request_id": "p",
            "part": "requests_p20270310",
            "created_at": in_partition,
            "teacher_output": "t",
            "student_output": "s",
        },
    ]
    assert not (tmp_path / "j" / "rejected.jsonl").exists()


# --- the gateway --------------------------------------------------------------------------------


def test_the_gateway_keeps_the_partitions_at_start_up(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app_key: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    insert(url, ("stray", "2026-11-28 10:00Z"))  # in the default partition, for now
    config = write_config(
        tmp_path / "gateway.yaml",
        [route("r", "http://127.0.0.1:9/v1", None, mode="teacher")],
        database={"partitions": {"interval": "day", "ahead": 2}},
    )
    gateway = GatewayServer(config).start()
    try:
        today = datetime.now(UTC)
        for table in TABLES:
            wanted = {f"{table}_p{today + timedelta(days=d):%Y%m%d}" for d in range(3)}
            wait_for(
                lambda: wanted <= set(partitions(url, table)),  # noqa: B023  (waited on here)
                what=f"partitions of {table} made at start-up",
            )
        wait_for(lambda: where(url) == {"stray": "requests_p20261128"}, what="the stray moved")
    finally:
        gateway.stop()


# --- the command --------------------------------------------------------------------------------

CONFIG = """
routes:
  - name: r
    teacher: {base_url: "http://127.0.0.1:9/v1", model: t, api_key_env: SGW_UNSET_TEACHER_KEY}
    mode: teacher
database:
  partitions: %s
"""


def cli(tmp_path: Path, url: str, partitions: str, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gw.yaml"
    config.write_text(CONFIG % partitions)
    return subprocess.run(
        [str(BIN / "shadow-gateway"), "partitions", *args, "--config", str(config)],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_command_dry_run_then_run_then_nothing_left(url: str, tmp_path: Path) -> None:
    settings = "{interval: day, ahead: 40, retention_days: 365}"  # 40 days: past this month
    before = set(partitions(url))
    answer(url, ("stray", "2031-01-01 00:00Z"))  # beyond every partition: in the default
    dry = cli(tmp_path, url, settings, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "0 partition(s) of requests before this run, 0 row(s) in requests_default" in dry.stdout
    assert (
        "0 partition(s) of student_answers before this run, 1 row(s) in student_answers_default"
        in dry.stdout
    )
    assert "would create: requests_p" in dry.stdout
    assert ", student_answers_p" in dry.stdout
    assert "rows to move out of student_answers_default: 1" in dry.stdout
    assert "requests_default:" not in dry.stdout  # nothing to move there
    assert set(partitions(url)) == before
    done = cli(tmp_path, url, settings, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(report["created"]) == 2 * 41 + 1  # 41 days each, and the stray's day
    assert {p["table"] for p in report["create"]} == set(TABLES)
    assert report["rows_moved_from_default"] == 1
    assert report["tables"]["student_answers"] == {
        "partitions": 0,
        "default_partition": "student_answers_default",
        "default_rows": 1,
        "rows_moved_from_default": 1,
        "default_rows_expired": 0,
    }
    assert report["tables"]["requests"]["rows_moved_from_default"] == 0
    assert set(partitions(url)) > before
    assert "student_answers_p20310101" in partitions(url, "student_answers")
    again = cli(tmp_path, url, settings, "--dry-run")
    assert "would create: nothing" in again.stdout


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ("{interval: week}", "interval"),
        ("{retention_days: 0}", "retention_days"),
        ("{ahead: -1}", "ahead"),
        ("{retain: 30}", "retain"),
    ],
)
def test_bad_settings_exit_2(tmp_path: Path, url: str, settings: str, words: str) -> None:
    result = cli(tmp_path, url, settings)
    assert result.returncode == 2
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_the_command_on_an_unmigrated_or_unreachable_database_exits_1(tmp_path: Path) -> None:
    for old in _scratch("0005"):
        result = cli(tmp_path, old, "{}")
        assert result.returncode == 1
        assert "not partitioned" in result.stderr
        assert "shadow-gateway migrate" in result.stderr
    result = cli(tmp_path, "postgresql://postgres@127.0.0.1:1/x", "{}")
    assert result.returncode == 1
    assert "cannot use Postgres" in result.stderr
    assert "Traceback" not in result.stderr
