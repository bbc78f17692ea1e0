"""The training-set export: logged production traffic → JSONL for the next distillation.

One example per request, in the OpenAI fine-tuning chat format: the app's messages (a
``/v1/completions`` prompt becomes one user message) and the teacher's answer as the assistant
turn. Each row matched by the filters (route, window, slices, ``agree = false`` for hard
examples only) ends in exactly one place, so ``rows_matched = examples + sum(dropped)``:

- ``teacher_failed``: no complete teacher answer (not HTTP 200, no text, an error mid-stream);
- ``teacher_truncated``: the teacher stopped at ``max_tokens``;
- ``no_prompt``: the app's request body was not stored (``log_writer.store_payloads``);
- ``verifier``: the route's verifier rejected the answer (counted per failed check);
- ``duplicate_prompt``: the same normalised conversation was already exported;
- ``sampling``: left out by a ``limit``. Strata (the joint slice labels, or the values of the
  ``mix`` dimension) get quotas in proportion to live traffic or to the mix, by largest
  remainders; rows are read in a seeded random order (``md5(seed:request_id)``, so a run can be
  repeated) until every quota is full.

Memory stays flat: rows come through a server-side cursor and go straight to the file; what is
held is a counter per stratum and one 64-bit hash per exported prompt for the dedupe (about 70
bytes each, i.e. ~70 MB per million distinct prompts). Counts and rows are read in one
REPEATABLE READ snapshot, so they agree while the gateway keeps logging. The file and its
manifest are written beside their final names and renamed at the end: a failed export never
leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import ColumnElement, Text, and_, cast, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway import __version__
from gateway.config import FunctionVerifier, JsonSchemaVerifier, RegexVerifier, VerifierConfig
from gateway.core import verify
from gateway.core.examples import allocate, prompt_key, prompt_messages
from gateway.db.tables import requests
from gateway.errors import ConfigError

_STREAM_BATCH = 2_000  # rows per round trip of the server-side cursor
_FETCH_BATCH = 500  # sampled rows fetched by id per query
_MAX_CHECKS = 50  # distinct verifier checks counted one by one; the rest as "other"
_QUOTED_PER_CHECK = 3  # failed answers named in the manifest, per check


class ExportError(Exception):
    """The export cannot be made as asked; the message says why and what to change."""


@dataclass(frozen=True)
class Mix:
    """Target shares of the values of one slice dimension, e.g. tier: {free: 0.7, paid: 0.3}."""

    dimension: str
    shares: Mapping[str, float]


@dataclass(frozen=True)
class ExportRequest:
    route: str
    output: Path
    since: datetime | None = None
    until: datetime | None = None  # exclusive
    slices: Mapping[str, Sequence[str]] = field(default_factory=dict)  # dimension → any of these
    only_disagreements: bool = False
    limit: int | None = None  # examples in all, stratified; None: every row that qualifies
    mix: Mix | None = None  # needs a limit
    seed: int = 0

    @property
    def manifest_path(self) -> Path:
        return self.output.with_name(self.output.name + ".manifest.json")


def build_verifier(config: VerifierConfig | None) -> verify.Verifier | None:
    """The route's verifier; a ``function`` that cannot be imported is a ConfigError."""
    match config:
        case None:
            return None
        case JsonSchemaVerifier():
            return verify.json_schema(config.json_schema)
        case RegexVerifier():
            return verify.regex(config.pattern)
        case FunctionVerifier():
            module_name, _, attribute = config.function.partition(":")
            try:
                found: Any = importlib.import_module(module_name)
                for part in attribute.split("."):
                    found = getattr(found, part)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(
                    f"export.verifier.function {config.function!r} cannot be imported: {exc}"
                ) from exc
            if not callable(found):
                raise ConfigError(f"export.verifier.function {config.function!r} is not callable")
            return verify.function(found)
    raise ConfigError(f"unknown verifier {config!r}")  # pragma: no cover


# --- what an export found and did --------------------------------------------------------------


@dataclass
class Stratum:
    labels: dict[str, str]  # the joint slice labels, or {mix dimension: value}
    live: int = 0  # rows matched
    usable: int = 0  # of those, with a complete teacher answer
    share: float | None = None  # the mix's target share
    quota: int | None = None
    examples: int = 0

    def full(self) -> bool:
        return self.quota is not None and self.examples >= self.quota


@dataclass
class ExportResult:
    request: ExportRequest
    verifier: dict[str, Any] | None = None
    strata: dict[str, Stratum] = field(default_factory=dict)
    sampled: bool = False
    live: int = 0
    answered: int = 0
    usable: int = 0
    live_per_slice: Counter[tuple[str, str]] = field(default_factory=Counter)
    first_row: datetime | None = None
    last_row: datetime | None = None
    examples: int = 0
    per_slice: Counter[tuple[str, str]] = field(default_factory=Counter)
    first_example: datetime | None = None
    last_example: datetime | None = None
    no_prompt: int = 0
    duplicates: int = 0
    checks_failed: Counter[str] = field(default_factory=Counter)
    failures: dict[str, list[dict[str, str | None]]] = field(default_factory=dict)
    sha256: str = ""

    @property
    def dropped(self) -> dict[str, int]:
        failed = sum(self.checks_failed.values())
        handled = self.examples + self.no_prompt + failed + self.duplicates
        return {
            "teacher_failed": self.live - self.answered,
            "teacher_truncated": self.answered - self.usable,
            "no_prompt": self.no_prompt,
            "verifier": failed,
            "duplicate_prompt": self.duplicates,
            "sampling": self.usable - handled,
        }

    @property
    def short(self) -> list[Stratum]:
        """Strata that could not fill their quota (too few qualifying rows)."""
        return [s for s in self.strata.values() if s.quota is not None and not s.full()]

    def count_failure(self, request_id: str, outcome: verify.Verification) -> None:
        check = outcome.check or "failed"
        if check not in self.checks_failed and len(self.checks_failed) >= _MAX_CHECKS:
            check = "other"
        self.checks_failed[check] += 1
        quoted = self.failures.setdefault(check, [])
        if len(quoted) < _QUOTED_PER_CHECK:
            quoted.append({"request_id": request_id, "message": outcome.message})

    def manifest(self) -> dict[str, Any]:
        request = self.request
        slices: dict[str, dict[str, dict[str, int]]] = {}
        for (dimension, value), live in sorted(self.live_per_slice.items()):
            counts = {"live": live, "examples": self.per_slice[dimension, value]}
            slices.setdefault(dimension, {})[value] = counts
        manifest: dict[str, Any] = {
            "file": request.output.name,
            "format": "openai-chat-jsonl",
            "examples": self.examples,
            "sha256": self.sha256,
            "created_at": datetime.now(UTC).isoformat(),
            "gateway_version": __version__,
            "filters": {
                "route": request.route,
                "since": _iso(request.since),
                "until": _iso(request.until),
                "slices": {dimension: list(v) for dimension, v in request.slices.items()},
                "only_disagreements": request.only_disagreements,
                "limit": request.limit,
                "mix": {request.mix.dimension: dict(request.mix.shares)} if request.mix else None,
                "seed": request.seed,
            },
            "verifier": self.verifier,
            "time_range": {
                "first_row": _iso(self.first_row),
                "last_row": _iso(self.last_row),
                "first_example": _iso(self.first_example),
                "last_example": _iso(self.last_example),
            },
            "rows_matched": self.live,
            "dropped": self.dropped,
            "dropped_by_check": dict(self.checks_failed.most_common()),
            "failed_checks_quoted": self.failures,
            "slices": slices,
            "sampling": "none",
        }
        if self.sampled:
            manifest["sampling"] = "mix" if request.mix else "stratified_by_live_traffic"
            manifest["strata"] = [
                {"slices": s.labels, "live": s.live, "usable": s.usable}
                | ({"share": s.share} if s.share is not None else {})
                | {"quota": s.quota, "examples": s.examples}
                for s in sorted(self.strata.values(), key=lambda s: (-s.live, str(s.labels)))
            ]
        return manifest


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


# --- atomic output -----------------------------------------------------------------------------


class _AtomicFile:
    """A temp file beside ``path``: ``close`` then ``commit`` puts it in place, ``discard``
    deletes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise ExportError(f"cannot write in {path.parent}: {exc.strerror or exc}") from exc
        self.temp = Path(name)
        self.file: IO[bytes] = os.fdopen(handle, "wb", buffering=1 << 20)
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        try:
            self.file.write(data)
        except OSError as exc:
            raise ExportError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.chmod(self.temp, 0o644)  # mkstemp's 0600 is no mode for a data set
        except OSError as exc:
            raise ExportError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def commit(self) -> None:
        try:
            os.replace(self.temp, self.path)
        except OSError as exc:
            raise ExportError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def discard(self) -> None:
        self.file.close()
        self.temp.unlink(missing_ok=True)


# --- queries -----------------------------------------------------------------------------------

_COLUMNS = (
    requests.c.request_id,
    requests.c.endpoint,
    requests.c.created_at,
    requests.c.slices,
    requests.c.request_payload,
    requests.c.teacher_output,
)
_ANSWERED = and_(
    requests.c.teacher_status == 200,
    requests.c.teacher_output.is_not(None),
    requests.c.teacher_output != "",
    requests.c.teacher_error.is_(None),
)
_USABLE = and_(_ANSWERED, requests.c.teacher_finish_reason.is_distinct_from("length"))
_JOINT = cast(requests.c.slices, Text)  # jsonb's text form: the same labels, the same text


def _window(request: ExportRequest) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [requests.c.route == request.route]
    if request.since is not None:
        conditions.append(requests.c.created_at >= request.since)
    if request.until is not None:
        conditions.append(requests.c.created_at < request.until)
    return conditions


def _matching(request: ExportRequest) -> list[ColumnElement[bool]]:
    conditions = _window(request)
    for dimension, values in request.slices.items():
        conditions.append(or_(*(requests.c.slices.contains({dimension: v}) for v in values)))
    if request.mix is not None:
        mix = request.mix
        conditions.append(requests.c.slices[mix.dimension].astext.in_(list(mix.shares)))
    if request.only_disagreements:
        conditions.append(requests.c.agree.is_(False))
    return conditions


def _stratum_key(request: ExportRequest) -> ColumnElement[Any]:
    if request.mix is not None:
        value: ColumnElement[Any] = requests.c.slices[request.mix.dimension].astext
        return value
    return _JOINT


async def _survey(connection: AsyncConnection, request: ExportRequest) -> ExportResult:
    """Count what the filters match, per stratum, before reading any row in full."""
    query = (
        select(
            _JOINT,
            func.count(),
            func.count().filter(_ANSWERED),
            func.count().filter(_USABLE),
            func.min(requests.c.created_at),
            func.max(requests.c.created_at),
        )
        .where(*_matching(request))
        .group_by(_JOINT)
    )
    found = ExportResult(request)
    for text, live, answered, usable, first, last in await connection.execute(query):
        labels: dict[str, str] = orjson.loads(text)
        key, shown = text, labels
        if request.mix is not None:
            key = labels[request.mix.dimension]
            shown = {request.mix.dimension: key}
        stratum = found.strata.setdefault(key, Stratum(shown))
        stratum.live += live
        stratum.usable += usable
        found.live_per_slice.update(dict.fromkeys(labels.items(), live))
        found.live += live
        found.answered += answered
        found.usable += usable
        found.first_row = min(found.first_row or first, first)
        found.last_row = max(found.last_row or last, last)
    return found


def _set_quotas(result: ExportResult) -> None:
    request = result.request
    if request.limit is None:
        return
    if request.mix is not None:
        for value, share in request.mix.shares.items():
            result.strata[value].share = share
        quotas = allocate(request.limit, request.mix.shares)
    elif request.limit < result.live:
        quotas = allocate(request.limit, {key: s.live for key, s in result.strata.items()})
    else:
        return  # room for every row: nothing to sample
    for key, stratum in result.strata.items():
        stratum.quota = quotas.get(key, 0)
    result.sampled = True


def _window_text(request: ExportRequest) -> str:
    since = request.since.isoformat() if request.since else "the first row"
    return f"from {since} until {request.until.isoformat() if request.until else 'now'}"


async def _explain_empty(connection: AsyncConnection, request: ExportRequest) -> str:
    """Why nothing matched, in terms the person can act on."""
    route, window = request.route, _window(request)
    rows, first, last = (
        await connection.execute(
            select(
                func.count(), func.min(requests.c.created_at), func.max(requests.c.created_at)
            ).where(requests.c.route == route)
        )
    ).one()
    if rows == 0:
        return f"no rows: route {route!r} has no logged requests"
    where = f"for route {route!r} {_window_text(request)}"
    if (await connection.execute(select(func.count()).where(*window))).scalar_one() == 0:
        return f"no rows {where}; its {rows} rows are from {first:%Y-%m-%d} to {last:%Y-%m-%d}"
    wanted = {dimension: list(values) for dimension, values in request.slices.items()}
    if request.mix is not None:
        wanted.setdefault(request.mix.dimension, []).extend(request.mix.shares)
    for dimension, values in wanted.items():
        if problem := await _unknown_slice(connection, window, dimension, values):
            return f"no rows {where}: {problem}"
    if request.only_disagreements:
        return f"no rows {where}: no disagreement (agree = false) among the rows that match"
    shown = ", ".join(f"{dimension}={'|'.join(values)}" for dimension, values in wanted.items())
    return f"no rows {where} match all of {shown} at once"


async def _unknown_slice(
    connection: AsyncConnection,
    window: list[ColumnElement[bool]],
    dimension: str,
    values: Sequence[str],
) -> str | None:
    value = requests.c.slices[dimension].astext
    query = select(value).where(*window, value.is_not(None)).distinct().limit(51)
    seen = sorted(v for (v,) in await connection.execute(query))
    if not seen:
        keys = func.jsonb_object_keys(requests.c.slices)
        query = select(keys).where(*window).distinct().limit(50)
        dimensions = ", ".join(sorted(k for (k,) in await connection.execute(query)))
        return f"no row has the slice {dimension!r} (slices seen: {dimensions or 'none'})"
    missing = [v for v in values if v not in seen]
    if len(seen) > 50:  # the list was cut short: ask about each value
        missing = []
        for v in values:
            probe = select(1).where(*window, requests.c.slices.contains({dimension: v})).limit(1)
            if (await connection.execute(probe)).first() is None:
                missing.append(v)
    if not missing:
        return None
    listed = ", ".join(seen[:50]) + (", …" if len(seen) > 50 else "")
    return f"no row has {dimension}={missing[0]} (values seen for {dimension}: {listed})"


def _nothing_left(result: ExportResult) -> str:
    dropped = ", ".join(f"{reason} {n}" for reason, n in result.dropped.items() if n)
    checks = ", ".join(f"{check} {n}" for check, n in result.checks_failed.most_common(5))
    return f"no examples left: all {result.live} matching rows were dropped ({dropped})" + (
        f"; failed verifier checks: {checks}" if checks else ""
    )


# --- the export --------------------------------------------------------------------------------


class Exporter:
    """Runs one export of a route's logged rows (the caller checks that the route exists)."""

    def __init__(
        self,
        engine: AsyncEngine,
        verifier: verify.Verifier | None = None,
        verifier_config: VerifierConfig | None = None,
    ) -> None:
        self._engine = engine
        self._verifier = verifier
        self._verifier_config = verifier_config
        self._seen: set[int] = set()

    async def run(self, request: ExportRequest) -> ExportResult:
        if request.output.is_dir():
            raise ExportError(f"the output {request.output} is a folder; give a file name")
        if not request.output.parent.is_dir():
            raise ExportError(f"the folder {request.output.parent} does not exist")
        self._seen = set()
        async with self._engine.connect() as connection:
            await connection.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            async with connection.begin():
                return await self._export(connection, request)

    async def _export(self, connection: AsyncConnection, request: ExportRequest) -> ExportResult:
        result = await _survey(connection, request)
        if result.live == 0:
            raise ExportError(await _explain_empty(connection, request))
        if request.mix is not None and (absent := set(request.mix.shares) - set(result.strata)):
            dimension, value = request.mix.dimension, sorted(absent)[0]
            problem = await _unknown_slice(connection, _window(request), dimension, [value])
            raise ExportError(f"the mix cannot be met: {problem or f'no row has {value}'}")
        if result.usable == 0:
            raise ExportError(
                f"no complete teacher answer: of the {result.live} matching rows, "
                f"{result.live - result.answered} failed and "
                f"{result.answered - result.usable} were cut off at max_tokens"
            )
        _set_quotas(result)
        if self._verifier_config is not None:
            result.verifier = self._verifier_config.model_dump(by_alias=True)
        out = _AtomicFile(request.output)
        manifest: _AtomicFile | None = None
        try:
            if result.sampled:
                await self._sampled(connection, result, out)
            else:
                await self._everything(connection, result, out)
            if result.examples == 0:
                raise ExportError(_nothing_left(result))
            out.close()
            result.sha256 = out.digest.hexdigest()
            manifest = _AtomicFile(request.manifest_path)
            manifest.write(orjson.dumps(result.manifest(), option=orjson.OPT_INDENT_2) + b"\n")
            manifest.close()
            out.commit()
            manifest.commit()
        except BaseException:
            out.discard()
            if manifest is not None:
                manifest.discard()
            raise
        return result

    async def _everything(
        self, connection: AsyncConnection, result: ExportResult, out: _AtomicFile
    ) -> None:
        query = (
            select(*_COLUMNS)
            .where(*_matching(result.request), _USABLE)
            .order_by(requests.c.created_at, requests.c.request_id)
            .execution_options(yield_per=_STREAM_BATCH)
        )
        rows = await connection.stream(query)
        async for partition in rows.partitions():  # one await per batch, not per row
            for row in partition:
                self._consider(row, result, out)

    async def _sampled(
        self, connection: AsyncConnection, result: ExportResult, out: _AtomicFile
    ) -> None:
        """Rows in a seeded random order, each stratum taking them until its quota is full.

        Only ids and strata are streamed; rows are fetched by id in batches, and only for
        strata with room left, so a small sample of a large table reads little of it.
        """
        request, strata = result.request, result.strata
        query = (
            select(requests.c.request_id, _stratum_key(request))
            .where(*_matching(request), _USABLE)
            .order_by(func.md5(literal(f"{request.seed}:") + requests.c.request_id))
            .execution_options(yield_per=_STREAM_BATCH)
        )
        batch: list[tuple[str, Stratum]] = []
        pending: Counter[str] = Counter()

        async def flush() -> bool:
            """Write the batch; whether any stratum still has room."""
            await self._fetch(connection, batch, result, out)
            batch.clear()
            pending.clear()
            return any(not stratum.full() for stratum in strata.values())

        ids = await connection.stream(query)
        room = any(not stratum.full() for stratum in strata.values())
        async for partition in ids.partitions():
            for request_id, key in partition:
                stratum = strata[key]
                if not room:
                    break
                if stratum.full():
                    continue
                assert stratum.quota is not None
                if stratum.examples + pending[key] >= stratum.quota:
                    room = await flush()  # the batch may fill this stratum: see it through
                    if stratum.full():
                        continue
                batch.append((request_id, stratum))
                pending[key] += 1
                if len(batch) >= _FETCH_BATCH:
                    room = await flush()
            if not room:
                break
        await ids.close()
        await flush()

    async def _fetch(
        self,
        connection: AsyncConnection,
        batch: list[tuple[str, Stratum]],
        result: ExportResult,
        out: _AtomicFile,
    ) -> None:
        if not batch:
            return
        ids = [request_id for request_id, _ in batch]
        query = select(*_COLUMNS).where(requests.c.request_id.in_(ids))
        rows = {row.request_id: row for row in await connection.execute(query)}
        for request_id, stratum in batch:  # in the sampled order, not the table's
            if self._consider(rows[request_id], result, out):
                stratum.examples += 1

    def _consider(self, row: Any, result: ExportResult, out: _AtomicFile) -> bool:
        """Write the row's example unless it is dropped (and counted); whether it was written."""
        messages = prompt_messages(row.endpoint, row.request_payload)
        if messages is None:
            result.no_prompt += 1
            return False
        if self._verifier is not None:
            outcome = self._verifier(row.teacher_output, row.request_payload)
            if not outcome.ok:
                result.count_failure(row.request_id, outcome)
                return False
        key = prompt_key(messages)
        if key in self._seen:
            result.duplicates += 1
            return False
        self._seen.add(key)
        answer = {"role": "assistant", "content": row.teacher_output}
        out.write(orjson.dumps({"messages": [*messages, answer]}) + b"\n")
        result.examples += 1
        result.per_slice.update((row.slices or {}).items())
        result.first_example = min(result.first_example or row.created_at, row.created_at)
        result.last_example = max(result.last_example or row.created_at, row.created_at)
        return True
