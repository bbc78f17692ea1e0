"""Drift references read from Postgres: a registered dataset (``datasets``), or the route
champion's training set (``route_students.train_dataset_id``).

A dataset's population is its requests, read through ``dataset_items``
(:func:`gateway.services.datasets.dataset_reference`): their slice labels and prompt lengths
as logged, each item counted once (what the student was shown; the live ``frequency`` an
item stood for is not a weight); plus a sample of its prompts for the content distance
(:mod:`gateway.core.content`). Items whose request is no longer in the log (retention dropped
its partition) are left out and counted.

Every figure is aggregated in Postgres except the prompt samples, which are bounded
(:data:`REFERENCE_PROMPTS`, :data:`CURRENT_PROMPTS`) and drawn by a hash of the request id,
so the same data gives the same sample. The CPU work on them runs in a worker thread.
"""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

import asyncio
import functools
import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import RouteConfig
from gateway.errors import InvalidRequest, NoData
from gateway.protocol.reports import CHAMPION_DATASET, Window, iso_time
from gateway.services.reports.common import IN_WINDOW, last_user_text_sql, window_params

# The content figures need numpy (gateway.core.content, .novelty): imported where a content
# figure is made, so the other reports, and the CLI's start-up, do without it.
if TYPE_CHECKING:
    from gateway.core.content import ContentReference, ContentShift

REFERENCE_PROMPTS = 2500  # sampled from the dataset: 2,000 indexed, 500 held out
CURRENT_PROMPTS = 500  # sampled from the current window
_HASH_BITS = 20  # the sample keeps the rows whose request id hashes lowest, out of 2**20

_DATASET = text("SELECT id, route, kind, items, created_at FROM datasets WHERE id = :dataset_id")
_CHAMPION = text(
    "SELECT name, train_dataset_id FROM route_students WHERE route = :route AND status = 'champion'"
)
_CHAMPION_DATASETS = text(
    "SELECT route, train_dataset_id FROM route_students "
    "WHERE status = 'champion' AND train_dataset_id IS NOT NULL"
)


@functools.cache
def _prompt_samples() -> tuple[TextClause, TextClause]:
    """The SQL of the two prompt samples: the dataset's and the current window's."""
    from gateway.core.novelty import MAX_CHARS

    prompt = f"left({last_user_text_sql('r.request_payload')}, {MAX_CHARS})"
    # The sample is drawn from the items first (a sort of ids, no payload read), then joined.
    reference = text(
        f"SELECT {prompt} AS prompt FROM (SELECT request_id, request_created_at, "
        "hashtext(request_id) AS h FROM dataset_items WHERE dataset_id = :dataset_id "
        "ORDER BY 3, 1 LIMIT :limit) AS d JOIN requests AS r "
        "ON r.request_id = d.request_id AND r.created_at = d.request_created_at "
        # the items' time range too, so Postgres reads only the partitions in it
        "WHERE r.request_payload IS NOT NULL AND r.created_at >= (SELECT min(request_created_at) "
        "FROM dataset_items WHERE dataset_id = :dataset_id) AND r.created_at <= "
        "(SELECT max(request_created_at) FROM dataset_items WHERE dataset_id = :dataset_id) "
        "ORDER BY d.h, d.request_id"
    )
    # A hash range first keeps about twice the sample (no sort of the whole window), then the
    # lowest hashes of those.
    current = text(
        f"SELECT {prompt} AS prompt FROM requests AS r WHERE {IN_WINDOW} "
        f"AND r.request_payload IS NOT NULL AND (hashtext(r.request_id) & {2**_HASH_BITS - 1}) "
        f"< :cut ORDER BY hashtext(r.request_id) & {2**_HASH_BITS - 1}, r.request_id LIMIT :limit"
    )
    return reference, current


class Population(Protocol):
    """What :func:`gateway.services.datasets.dataset_reference` reads of a dataset."""

    rows: int
    lengths: dict[int, int]

    def labels(self, dimension: str | None = None) -> dict[str, dict[str, int]]: ...


@dataclass(frozen=True)
class RegisteredDataset:
    """A registered dataset as a drift reference; immutable, so a monitor keeps it."""

    dataset_id: int
    kind: str
    items: int
    created_at: datetime
    population: Population  # its logged requests' labels and prompt lengths
    content: ContentReference | str  # or why there is no content figure
    champion: str | None = None  # the student it trained, when chosen as the champion's

    @property
    def rows(self) -> int:
        """Items whose request is still logged."""
        return self.population.rows

    @property
    def lengths(self) -> dict[int, int]:
        return self.population.lengths

    def labels(self, dimension: str | None = None) -> dict[str, dict[str, int]]:
        return self.population.labels(dimension)

    def describe(self) -> str:
        return f"Dataset {self.dataset_id}" + (
            f" (the training set of champion '{self.champion}')" if self.champion else ""
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": "registered",
            "dataset_id": self.dataset_id,
            "dataset_kind": self.kind,
            "created_at": iso_time(self.created_at),
            "items": self.items,
            "requests": self.rows,
            "champion": self.champion,
        }


def _content(prompts: list[str]) -> ContentReference | str:
    from gateway.core.content import ContentReference

    if not prompts:
        return "the dataset's requests have no stored prompt (log_writer.store_payloads)"
    try:
        return ContentReference(prompts)
    except ValueError:
        return "no prompt of the dataset has text enough to compare"


async def champion_dataset(connection: AsyncConnection, route: str) -> tuple[str, int]:
    """The route champion's name and training dataset; 404 when it has none recorded."""
    row = (await connection.execute(_CHAMPION, {"route": route})).first()
    if row is None or row.train_dataset_id is None:
        who = f"champion '{row.name}'" if row is not None else "champion"
        raise NoData(
            f"Route '{route}': its {who} has no training dataset recorded "
            "(route_students.train_dataset_id, set when a student is made from a dataset); "
            "give a dataset id instead.",
            param="reference_dataset",
            code="dataset_not_found",
        )
    return row.name, int(row.train_dataset_id)


async def champion_datasets(connection: AsyncConnection) -> dict[str, int]:
    """route → the training dataset of its champion, for the routes that record one."""
    rows = await connection.execute(_CHAMPION_DATASETS)
    return {row.route: int(row.train_dataset_id) for row in rows}


async def load_dataset(
    connection: AsyncConnection, route: RouteConfig, chosen: int | str
) -> RegisteredDataset:
    """``chosen``: a dataset id, or ``champion``. 404 for an unknown one, 400 for another
    route's."""
    champion = None
    if chosen == CHAMPION_DATASET:
        champion, chosen = await champion_dataset(connection, route.name)
    assert isinstance(chosen, int)
    found = (await connection.execute(_DATASET, {"dataset_id": chosen})).first()
    if found is None:
        raise NoData(
            f"No dataset {chosen}: `datasets list` shows the registered ones.",
            param="reference_dataset",
            code="dataset_not_found",
        )
    if found.route != route.name:
        raise InvalidRequest(
            f"Dataset {chosen} holds route '{found.route}''s traffic, not route "
            f"'{route.name}''s: drift compares a route with its own datasets.",
            param="reference_dataset",
            code="invalid_value",
        )
    # here, not at the top: gateway.services.datasets imports this package's common module
    from gateway.services.datasets import dataset_reference

    population = await dataset_reference(connection, chosen)
    sample = await connection.execute(
        _prompt_samples()[0], {"dataset_id": chosen, "limit": REFERENCE_PROMPTS}
    )
    prompts = [row.prompt for row in sample]
    return RegisteredDataset(
        chosen,
        found.kind,
        found.items,
        found.created_at,
        population,
        await asyncio.to_thread(_content, prompts),
        champion,
    )


async def content_shift(
    connection: AsyncConnection,
    route: RouteConfig,
    window: Window,
    rows: int,
    reference: ContentReference,
) -> tuple[ContentShift | str, str]:
    """The window's content against the reference (or why not), and where its max_distance
    came from."""
    from gateway.core.content import DEFAULT_MAX_DISTANCE

    novelty = route.scope.novelty
    distance = novelty.max_distance if novelty else DEFAULT_MAX_DISTANCE
    source = "scope.novelty.max_distance" if novelty else "default"
    share = min(1.0, 2 * CURRENT_PROMPTS / rows) if rows else 1.0
    cut = math.ceil(share * 2**_HASH_BITS)
    found = await connection.execute(
        _prompt_samples()[1], window_params(route, window, cut=cut, limit=CURRENT_PROMPTS)
    )
    prompts = [row.prompt for row in found]
    shift = await asyncio.to_thread(reference.compare, prompts, distance)
    return shift, source
