"""Datasets: every file the export writes, registered in ``datasets`` and ``dataset_items``.

A dataset is one file (a training set, or the held-out ``eval`` split written beside it, which
names its training set in ``split_of``) with its manifest, its path and sha256, and one item
per example: the request it came from, its normalised prompt's key, and how many live
requests in the export's window had that prompt (``frequency``).

What other code uses:

- :func:`prompt_key`: the key of a normalised prompt (the export's dedupe rule: case,
  punctuation and spacing aside, every message with its role, the tools offered), as
  ``dataset_items.prompt_key`` holds it. :func:`request_prompt_key` does it for a logged body.
- :func:`dataset_prompt_keys`: the prompt keys of some datasets (what ``export
  --exclude-dataset`` leaves out).
- :func:`dataset_reference`: a dataset's prompts as a reference population for drift: label
  counts per slice dimension and prompt lengths, read from the requests its items came from.
- :func:`register`, :func:`list_datasets`, :func:`get_dataset`, :func:`file_state`: the
  registry itself (the export and ``datasets list|show``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core.examples import chat_tools, prompt_digest, prompt_messages
from gateway.db.tables import dataset_items, datasets
from gateway.services.reports.common import last_user_text_sql

KINDS = ("train", "eval")
_COPY_COLUMNS = ("dataset_id", "request_id", "request_created_at", "prompt_key", "frequency")


class DatasetError(Exception):
    """A dataset asked for does not exist, or cannot be used as asked; the message says which."""


# --- prompt keys ---------------------------------------------------------------------------------


def prompt_key(prompt: str | Sequence[Mapping[str, Any]], tools: object = None) -> str:
    """SHA-256 (hex) of the normalised prompt, as ``dataset_items.prompt_key`` holds it.

    ``prompt`` is the conversation (chat messages, with their roles) or a text, which counts
    as one user message: the key of a ``/v1/completions`` prompt, and of a chat holding only
    that user message. ``tools`` are the function tools the request offered (chat format).
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return prompt_digest(messages, tools).hex()


def request_prompt_key(endpoint: str, payload: object) -> str | None:
    """The prompt key of a logged request body (``requests.endpoint``, ``request_payload``);
    None when the body was not stored or holds no prompt the export could use."""
    messages = prompt_messages(endpoint, payload)
    if messages is None:
        return None
    return prompt_digest(messages, chat_tools(endpoint, payload)).hex()


async def dataset_prompt_keys(connection: AsyncConnection, ids: Iterable[int]) -> set[str]:
    """The prompt keys of the items of these datasets; :class:`DatasetError` names an id that
    is not a dataset."""
    wanted = sorted(set(ids))
    await check_known(connection, wanted)
    query = (
        select(dataset_items.c.prompt_key).where(dataset_items.c.dataset_id.in_(wanted)).distinct()
    )
    return {key for (key,) in await connection.execute(query)}


async def dataset_short_keys(connection: AsyncConnection, ids: Iterable[int]) -> set[int]:
    """The first 64 bits of each prompt key of these datasets (as :func:`short_key` of the
    digest): what the export compares each row's prompt with, at 8 bytes a key rather than 64
    characters. :class:`DatasetError` names an id that is not a dataset."""
    wanted = sorted(set(ids))
    await check_known(connection, wanted)
    prefix = func.substr(dataset_items.c.prompt_key, 1, 16)
    query = select(prefix).where(dataset_items.c.dataset_id.in_(wanted)).distinct()
    rows = await connection.stream(query.execution_options(yield_per=10_000))
    keys: set[int] = set()
    async for partition in rows.partitions():
        keys.update(int(hex_prefix, 16) for (hex_prefix,) in partition)
    return keys


async def check_known(connection: AsyncConnection, ids: Sequence[int]) -> None:
    if not ids:
        return
    query = select(datasets.c.id).where(datasets.c.id.in_(list(ids)))
    found = {dataset_id for (dataset_id,) in await connection.execute(query)}
    if missing := [dataset_id for dataset_id in ids if dataset_id not in found]:
        listed = ", ".join(str(dataset_id) for dataset_id in missing)
        noun = "is no dataset" if len(missing) == 1 else "are no datasets"
        raise DatasetError(f"{listed} {noun} (datasets list shows them)")


# --- registering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    request_id: str
    request_created_at: datetime
    prompt_key: str
    frequency: int = 1


@dataclass
class NewDataset:
    """A file to register; ``id`` comes from :func:`reserve_ids` (so the manifest can hold it)."""

    id: int
    route: str
    kind: str
    created_by: str
    manifest: Mapping[str, Any]
    path: Path
    sha256: str
    items: int
    split_of: int | None = None


async def reserve_ids(connection: AsyncConnection, count: int) -> list[int]:
    """Ids for datasets about to be registered in this transaction (a rollback burns them)."""
    query = text(
        "SELECT nextval(pg_get_serial_sequence('datasets', 'id')) FROM generate_series(1, :n)"
    )
    return [dataset_id for (dataset_id,) in await connection.execute(query, {"n": count})]


async def register(connection: AsyncConnection, dataset: NewDataset, items: Iterable[Item]) -> None:
    """Insert the dataset and COPY its items, in the caller's transaction (so a failure leaves
    no row half-made). ``items`` is streamed, not held: a million items cost no memory."""
    await connection.execute(
        datasets.insert().values(
            id=dataset.id,
            route=dataset.route,
            created_by=dataset.created_by,
            kind=dataset.kind,
            split_of=dataset.split_of,
            manifest=dict(dataset.manifest),
            path=str(dataset.path),
            sha256=dataset.sha256,
            items=dataset.items,
        )
    )
    raw = await connection.get_raw_connection()
    records = (
        (dataset.id, item.request_id, item.request_created_at, item.prompt_key, item.frequency)
        for item in items
    )
    try:
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            "dataset_items", records=records, columns=_COPY_COLUMNS
        )
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # COPY bypasses SQLAlchemy
        raise DatasetError(f"cannot store the items of dataset {dataset.id}: {exc}") from exc


async def unregister(connection: AsyncConnection, ids: Sequence[int]) -> None:
    await connection.execute(datasets.delete().where(datasets.c.id.in_(list(ids))))


# --- reading the registry ------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    id: int
    route: str
    created_at: datetime
    created_by: str
    kind: str
    split_of: int | None
    path: str
    sha256: str
    items: int
    manifest: dict[str, Any] = field(default_factory=dict)
    splits: tuple[int, ...] = ()  # the eval splits of a training set

    def summary(self) -> dict[str, Any]:
        """The row as ``datasets list --json`` shows it (the manifest left out)."""
        return {
            "id": self.id,
            "route": self.route,
            "kind": self.kind,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "items": self.items,
            "split_of": self.split_of,
            "splits": list(self.splits),
            "path": self.path,
            "sha256": self.sha256,
        }


def _selected(with_manifest: bool) -> Any:
    splits = datasets.alias("split")
    splits_of = (
        select(func.coalesce(func.array_agg(splits.c.id), text("'{}'::bigint[]")))
        .where(splits.c.split_of == datasets.c.id)
        .scalar_subquery()
    )
    columns = [c for c in datasets.c if with_manifest or c.name != "manifest"]
    return select(*columns, splits_of.label("splits"))


def _dataset(row: Any) -> Dataset:
    return Dataset(
        id=row.id,
        route=row.route,
        created_at=row.created_at,
        created_by=row.created_by,
        kind=row.kind,
        split_of=row.split_of,
        path=row.path,
        sha256=row.sha256,
        items=row.items,
        manifest=getattr(row, "manifest", None) or {},
        splits=tuple(sorted(row.splits or ())),
    )


async def list_datasets(
    connection: AsyncConnection, route: str | None = None, kind: str | None = None
) -> list[Dataset]:
    """Every dataset, newest first; of one route and of one kind when given."""
    query = _selected(with_manifest=False).order_by(datasets.c.id.desc())
    if route is not None:
        query = query.where(datasets.c.route == route)
    if kind is not None:
        query = query.where(datasets.c.kind == kind)
    return [_dataset(row) for row in await connection.execute(query)]


async def get_dataset(connection: AsyncConnection, dataset_id: int) -> Dataset:
    """One dataset with its manifest; :class:`DatasetError` when there is none."""
    query = _selected(with_manifest=True).where(datasets.c.id == dataset_id)
    row = (await connection.execute(query)).first()
    if row is None:
        raise DatasetError(f"{dataset_id} is no dataset (datasets list shows them)")
    return _dataset(row)


def file_state(path: str | Path, sha256: str) -> str:
    """``ok`` (the file is there with that sha256), ``changed``, ``missing`` or
    ``unreadable``."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unreadable"
    return "ok" if digest.hexdigest() == sha256 else "changed"


# --- a dataset as drift's reference --------------------------------------------------------------

# The requests a dataset's items came from, found by key (both columns), within the window of
# their created_at as well, so Postgres reads only the partitions in it.
_IN_DATASET = (
    "i.dataset_id = :dataset_id "
    "AND r.created_at >= (SELECT min(request_created_at) FROM dataset_items "
    "WHERE dataset_id = :dataset_id) "
    "AND r.created_at <= (SELECT max(request_created_at) FROM dataset_items "
    "WHERE dataset_id = :dataset_id)"
)
_JOINED = (
    "FROM dataset_items AS i JOIN requests AS r "
    "ON r.request_id = i.request_id AND r.created_at = i.request_created_at"
)
_EACH_LABEL = (
    "CROSS JOIN LATERAL jsonb_each_text(CASE WHEN jsonb_typeof(r.slices) = 'object' "
    "THEN r.slices ELSE '{}' END) AS s"
)
_REFERENCE_ROWS = text(f"SELECT count(*) AS n {_JOINED} WHERE {_IN_DATASET}")
_REFERENCE_LABELS = text(
    f"SELECT s.key AS dimension, s.value, count(*) AS n {_JOINED} {_EACH_LABEL} "
    f"WHERE {_IN_DATASET} AND s.value IS NOT NULL GROUP BY 1, 2"
)
_REFERENCE_LENGTHS = text(
    f"SELECT char_length({last_user_text_sql('r.request_payload')}) AS length, count(*) AS n "
    f"{_JOINED} WHERE {_IN_DATASET} AND r.request_payload IS NOT NULL GROUP BY 1"
)


@dataclass
class DatasetReference:
    """A dataset's prompts as a reference population, the same shape as an uploaded
    reference (:class:`gateway.protocol.reports.ReferenceDataset`): ``rows``,
    :meth:`labels` and ``lengths``.

    - ``rows``: items whose request is still in ``requests`` (retention may have dropped
      some: ``missing`` counts them; ``items`` is the dataset's size);
    - :meth:`labels`: ``{dimension: {value: how many}}`` of those requests' slice labels (a
      request counts once in each dimension it has a label in);
    - ``lengths``: ``{prompt length in characters: how many}`` of the last user message, as
      :func:`~gateway.services.reports.common.last_user_text_sql` reads it (drift's prompt
      length); requests whose body was not stored have none.

    Each item counts once: the population is what the student was trained on, not how often
    live traffic asked it (that is ``dataset_items.frequency``).
    """

    dataset_id: int
    route: str
    source: str
    items: int
    rows: int
    lengths: dict[int, int]
    _labels: dict[str, dict[str, int]]

    @property
    def missing(self) -> int:
        return self.items - self.rows

    def labels(self, dimension: str | None = None) -> dict[str, dict[str, int]]:
        return {
            name: dict(values)
            for name, values in self._labels.items()
            if dimension is None or name == dimension
        }


async def dataset_reference(connection: AsyncConnection, dataset_id: int) -> DatasetReference:
    """The dataset's prompts as drift's reference: label counts per slice dimension and prompt
    lengths, from the requests its items came from (see :class:`DatasetReference`).
    :class:`DatasetError` when there is no such dataset."""
    found = (
        await connection.execute(
            select(datasets.c.route, datasets.c["items"], datasets.c.kind).where(
                datasets.c.id == dataset_id
            )
        )
    ).first()
    if found is None:
        raise DatasetError(f"{dataset_id} is no dataset (datasets list shows them)")
    params = {"dataset_id": dataset_id}
    rows = (await connection.execute(_REFERENCE_ROWS, params)).scalar_one()
    labels: dict[str, dict[str, int]] = {}
    for dimension, value, count in await connection.execute(_REFERENCE_LABELS, params):
        labels.setdefault(dimension, {})[value] = count
    lengths = {
        length: count
        for length, count in await connection.execute(_REFERENCE_LENGTHS, params)
        if length is not None
    }
    return DatasetReference(
        dataset_id=dataset_id,
        route=found.route,
        source=f"dataset {dataset_id} ({found.kind})",
        items=found.items,
        rows=rows,
        lengths=lengths,
        _labels=labels,
    )
