"""The export itself: stream the matching rows (or a stratified sample) into the file."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import DateTime, Select, Text, bindparam, func, literal, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.config import VerifierConfig
from gateway.core import verify
from gateway.core.examples import (
    assistant_message,
    chat_tools,
    prompt_digest,
    prompt_messages,
    short_key,
)
from gateway.db.tables import requests
from gateway.services.export.model import (
    ExportError,
    ExportRequest,
    ExportResult,
    Provenance,
    nothing_left,
    set_quotas,
)
from gateway.services.export.output import AtomicFile, check_output
from gateway.services.export.parts import Spool, SpooledItem, eval_path
from gateway.services.export.publish import excluded_keys, write_and_publish
from gateway.services.export.queries import (
    COLUMNS,
    USABLE,
    JudgedWrong,
    explain_empty,
    in_window,
    judged_wrong,
    matching,
    stratum_key,
    survey,
    unknown_slice,
)

_STREAM_BATCH = 2_000  # rows per round trip of the server-side cursor
_FETCH_BATCH = 500  # sampled rows fetched by key per query


def _by_key() -> Select[Any]:
    """Rows by their key (request_id, created_at), one lookup per key: ``LATERAL … LIMIT 1``
    keeps it a nested loop, so each key reaches only its own partition (run-time pruning).
    ``request_id IN (…)`` alone would probe every partition with every id: 10 times slower
    on a month of daily partitions."""
    keys = (
        func.unnest(
            bindparam("ids", type_=ARRAY(Text)),
            bindparam("times", type_=ARRAY(DateTime(timezone=True))),
        )
        .table_valued("request_id", "created_at")
        .render_derived(name="wanted")
    )
    row = (
        select(*COLUMNS)
        .where(requests.c.request_id == keys.c.request_id)
        .where(requests.c.created_at == keys.c.created_at)
        .limit(1)
        .lateral("found")
    )
    return select(*row.c).select_from(keys).join(row, true())


_BY_KEY = _by_key()


class Exporter:
    """Runs one export of a route's logged rows (the caller checks that the route exists)."""

    def __init__(
        self,
        engine: AsyncEngine,
        verifier: verify.Verifier | None = None,
        verifier_config: VerifierConfig | None = None,
        *,
        progress: Callable[[int], object] | None = None,
    ) -> None:
        self._engine = engine
        self._verifier = verifier
        self._verifier_config = verifier_config
        self._progress = progress  # told of each row read (the CLI's progress bar)
        self._reset()

    def _reset(self) -> None:
        self._seen: set[int] = set()  # short keys of the prompts exported
        self._excluded: set[int] = set()  # short keys of the prompts of --exclude-dataset
        self._live: Counter[int] = Counter()  # live rows per prompt (see _count)
        self._counting = False  # count every prompt while streaming (not when sampling)
        self._wrong: set[tuple[str, datetime]] = set()  # judged wrong, no correction used
        self._corrections: dict[tuple[str, datetime], str] = {}  # judged wrong, corrected
        self._spool: Spool | None = None

    async def run(
        self, request: ExportRequest, provenance: Provenance | None = None
    ) -> ExportResult:
        """Write the file (and its held-out split), register it unless told not to, and put
        everything in place at the end: on any failure nothing is written or registered."""
        check_output(request.output)
        if request.holdout is not None:
            check_output(eval_path(request.output))
        self._reset()
        spool = self._spool = Spool(request.output.parent, request.seed)

        async def produce(connection: AsyncConnection, out: AtomicFile) -> ExportResult:
            result = await self._export(connection, request, out)
            if result.sampled:
                await self._count_live(connection, request)
            return result

        return await write_and_publish(
            self._engine, request, provenance, spool, produce, self._live, request.holdout
        )

    async def _export(
        self, connection: AsyncConnection, request: ExportRequest, out: AtomicFile
    ) -> ExportResult:
        self._excluded = await excluded_keys(connection, request.exclude_datasets)
        result = await survey(connection, request)
        if result.live == 0:
            raise ExportError(await explain_empty(connection, request))
        if request.mix is not None and (absent := set(request.mix.shares) - set(result.strata)):
            dimension, value = request.mix.dimension, sorted(absent)[0]
            problem = await unknown_slice(connection, in_window(request), dimension, [value])
            raise ExportError(f"the mix cannot be met: {problem or f'no row has {value}'}")
        if result.usable == 0:
            raise ExportError(
                f"no complete teacher answer: of the {result.live} matching rows, "
                f"{result.live - result.answered} failed and "
                f"{result.answered - result.usable} were cut off at max_tokens"
            )
        result.window_until = (
            await connection.execute(select(func.transaction_timestamp()))
        ).scalar_one()
        set_quotas(result)
        if self._verifier_config is not None:
            result.verifier = self._verifier_config.model_dump(by_alias=True)
        self._sort_judged(await judged_wrong(connection, request), result)
        if result.sampled:
            await self._sampled(connection, result, out)
        else:
            self._counting = True
            await self._everything(connection, result, out)
        if result.examples == 0:
            raise ExportError(nothing_left(result))
        out.close()
        return result

    def _sort_judged(
        self, judged: dict[tuple[str, datetime], JudgedWrong], result: ExportResult
    ) -> None:
        """Judged-wrong rows are dropped and counted here, before any is read in full (so the
        counts are whole, sampled or not); with ``use_corrections``, those with a correction
        are exported with it instead (and may still be dropped later, like any row)."""
        for key, wrong in judged.items():
            if result.request.use_corrections and wrong.correction is not None:
                self._corrections[key] = wrong.correction
                continue
            self._wrong.add(key)
            result.judged_wrong["review" if wrong.by_review else "feedback"] += 1
            result.strata[wrong.stratum].judged_wrong += 1
            result.judged_per_slice.update(wrong.labels.items())

    async def _everything(
        self, connection: AsyncConnection, result: ExportResult, out: AtomicFile
    ) -> None:
        """Every matching row in time order; the rows without a usable answer only count
        towards their prompt's live frequency."""
        request = result.request
        query = (
            select(*COLUMNS, stratum_key(request).label("stratum"), USABLE.label("usable"))
            .where(*matching(request))
            .order_by(requests.c.created_at, requests.c.request_id)
            .execution_options(yield_per=_STREAM_BATCH)
        )
        rows = await connection.stream(query)
        async for partition in rows.partitions():  # one await per batch, not per row
            for row in partition:
                if row.usable:
                    self._consider(row, result, out, row.stratum)
                else:
                    self._count(row.endpoint, row.request_payload)
            if self._progress is not None:
                self._progress(len(partition))

    def _count(self, endpoint: str, payload: Any) -> None:
        messages = prompt_messages(endpoint, payload)
        if messages is not None:
            self._live[short_key(prompt_digest(messages, chat_tools(endpoint, payload)))] += 1

    async def _count_live(self, connection: AsyncConnection, request: ExportRequest) -> None:
        """After a sample: how many of the rows the filters match had each exported prompt (a
        second pass over the prompts only; the counts kept are the exported prompts')."""
        query = (
            select(requests.c.endpoint, requests.c.request_payload)
            .where(*matching(request))
            .execution_options(yield_per=_STREAM_BATCH)
        )
        live, seen = self._live, self._seen
        rows = await connection.stream(query)
        async for partition in rows.partitions():
            for endpoint, payload in partition:
                messages = prompt_messages(endpoint, payload)
                if messages is None:
                    continue
                key = short_key(prompt_digest(messages, chat_tools(endpoint, payload)))
                if key in seen:
                    live[key] += 1

    async def _sampled(
        self, connection: AsyncConnection, result: ExportResult, out: AtomicFile
    ) -> None:
        """Rows in a seeded random order, each stratum taking them until its quota is full.

        Only ids and strata are streamed; rows are fetched by id in batches, and only for
        strata with room left, so a small sample of a large table reads little of it.
        """
        request, strata = result.request, result.strata
        query = (
            select(requests.c.request_id, requests.c.created_at, stratum_key(request))
            .where(*matching(request), USABLE)
            .order_by(func.md5(literal(f"{request.seed}:") + requests.c.request_id))
            .execution_options(yield_per=_STREAM_BATCH)
        )
        batch: list[tuple[tuple[str, datetime], str]] = []
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
            for request_id, created_at, key in partition:
                stratum = strata[key]
                if not room:
                    break
                if stratum.full() or (request_id, created_at) in self._wrong:
                    continue
                assert stratum.quota is not None
                if stratum.examples + pending[key] >= stratum.quota:
                    room = await flush()  # the batch may fill this stratum: see it through
                    if stratum.full():
                        continue
                batch.append(((request_id, created_at), key))
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
        batch: list[tuple[tuple[str, datetime], str]],
        result: ExportResult,
        out: AtomicFile,
    ) -> None:
        if not batch:
            return
        keys = {"ids": [key[0] for key, _ in batch], "times": [key[1] for key, _ in batch]}
        rows = {row.request_id: row for row in await connection.execute(_BY_KEY, keys)}
        for (request_id, _), stratum in batch:  # in the sampled order, not the table's
            self._consider(rows[request_id], result, out, stratum)
        if self._progress is not None:
            self._progress(len(batch))

    def _consider(self, row: Any, result: ExportResult, out: AtomicFile, stratum: str) -> bool:
        """Write the row's example unless it is dropped (and counted); whether it was written.

        A tool-call answer is checked against the tools the request offered
        (:func:`verify.tool_calls`); the route's verifier judges the other answers' text, and
        a correction's (it replaces the teacher's answer, tool calls included).
        """
        judged_wrong = (row.request_id, row.created_at) in self._wrong  # counted by _sort_judged
        payload = row.request_payload
        messages = prompt_messages(row.endpoint, payload)
        if messages is None:
            if not judged_wrong:
                result.no_prompt += 1
            return False
        tools = chat_tools(row.endpoint, payload)
        digest = prompt_digest(messages, tools)
        key = short_key(digest)
        if self._counting:
            self._live[key] += 1
        if judged_wrong:
            return False
        if key in self._excluded:
            result.excluded += 1
            return False
        correction = self._corrections.get((row.request_id, row.created_at))
        outcome = None
        if correction is not None:
            answer = assistant_message(correction, None, None)
            if self._verifier is not None:
                outcome = self._verifier(correction, payload)
        else:
            answer = assistant_message(
                row.teacher_output, row.teacher_tool_calls, row.teacher_refusal
            )
            if row.teacher_tool_calls:
                outcome = verify.tool_calls(row.teacher_tool_calls, payload)
            elif self._verifier is not None:
                outcome = self._verifier(row.teacher_output or row.teacher_refusal or "", payload)
        if outcome is not None and not outcome.ok:
            result.count_failure(row.request_id, outcome)
            return False
        if key in self._seen:
            result.duplicates += 1
            return False
        self._seen.add(key)
        example: dict[str, Any] = {"messages": [*messages, answer]}
        if tools:
            example["tools"] = tools
            if isinstance(payload.get("parallel_tool_calls"), bool):
                example["parallel_tool_calls"] = payload["parallel_tool_calls"]
        out.write(orjson.dumps(example) + b"\n")
        assert self._spool is not None
        self._spool.add(
            SpooledItem(
                request_id=row.request_id,
                created_at=row.created_at,
                prompt_key=digest.hex(),
                stratum=stratum,
                labels=row.slices or {},
                corrected=correction is not None,
                model=row.teacher_model_reported,
                fingerprint=row.teacher_fingerprint,
            )
        )
        result.examples += 1
        result.strata[stratum].examples += 1
        return True
