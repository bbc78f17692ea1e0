"""The export's last step: register its files as datasets and put them in place, all or none.

The files are complete (closed temp files beside their final names) when this starts. In one
transaction it takes each file's dataset id, writes the manifests (which hold the ids), inserts
the ``datasets`` rows and copies their items; once that commits, the files and manifests are
renamed into place. A failure before the commit leaves neither a row nor a file; a rename
that fails after it (a disk gone read-only) deletes the rows again. Without registration
(``--no-register``) the manifests say ``dataset_id: null`` and only the renames remain.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.services.datasets import (
    DatasetError,
    NewDataset,
    dataset_short_keys,
    register,
    reserve_ids,
    unregister,
)
from gateway.services.export.model import ExportError, ExportRequest, Provenance, manifest_path
from gateway.services.export.output import AtomicFile
from gateway.services.export.parts import Part, Spool, Written, finish
from gateway.services.export.queries import snapshot


def manifest_file(part_path: Path, manifest: dict[str, Any]) -> AtomicFile:
    """The manifest beside ``part_path``, written and closed (not yet in place)."""
    written = AtomicFile(manifest_path(part_path))
    try:
        written.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
        written.close()
    except BaseException:
        written.discard()
        raise
    return written


async def publish(
    engine: AsyncEngine,
    route: str,
    provenance: Provenance,
    written: Written,
    manifest: Callable[[Part], dict[str, Any]],
) -> None:
    """Register ``written``'s parts (unless ``provenance`` says not to) and put the files and
    their manifests (``manifest(part)``, once the part knows its dataset id) in place. The
    caller discards ``written`` on failure."""
    parts = written.parts
    manifests: list[AtomicFile] = []
    ids: list[int] = []
    try:
        if provenance.register:
            try:
                async with engine.begin() as connection:
                    ids = await reserve_ids(connection, len(parts))
                    for part, dataset_id in zip(parts, ids, strict=True):
                        part.dataset_id = dataset_id
                    documents = [manifest(part) for part in parts]
                    for side, (part, document) in enumerate(zip(parts, documents, strict=True)):
                        dataset = NewDataset(
                            id=ids[side],
                            route=route,
                            kind=part.kind,
                            created_by=provenance.created_by,
                            manifest=document,
                            path=part.path,
                            sha256=part.sha256,
                            items=part.examples,
                            split_of=ids[0] if side else None,
                        )
                        await register(connection, dataset, written.items(side))
                    manifests = [
                        manifest_file(part.path, document)
                        for part, document in zip(parts, documents, strict=True)
                    ]
            except (DBAPIError, OSError, DatasetError) as exc:
                for part in parts:
                    part.dataset_id = None
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise ExportError(
                    f"cannot register the dataset, so nothing was written: {first_line} "
                    "(--no-register writes the file without registering it)"
                ) from exc
        else:
            manifests = [manifest_file(part.path, manifest(part)) for part in parts]
        try:
            for file in [*written.files, *manifests]:
                file.commit()
        except ExportError:
            if ids:
                async with engine.begin() as connection:
                    await unregister(connection, ids)
            raise
    except BaseException:
        for file in manifests:
            file.discard()
        raise


class Produced(Protocol):
    """What an exporter's pass over the rows returns: its result, filled in as it goes."""

    provenance: Provenance
    parts: list[Part]

    def manifest(self, part: Part | None = None) -> dict[str, Any]: ...


R = TypeVar("R", bound=Produced)


async def write_and_publish(
    engine: AsyncEngine,
    request: ExportRequest,
    provenance: Provenance | None,
    spool: Spool,
    produce: Callable[[AsyncConnection, AtomicFile], Awaitable[R]],
    live: Mapping[int, int],
    holdout: float | None = None,
) -> R:
    """One export, all or nothing: ``produce`` streams the rows (in one snapshot) into the
    spool, the spool becomes the file(s) and their manifests, which are registered and only
    then put in place; on any failure nothing is left written or registered."""
    out: AtomicFile | None = None
    written: Written | None = None
    try:
        out = AtomicFile(request.output)
        async with snapshot(engine) as connection:
            result = await produce(connection, out)
        result.provenance = provenance or Provenance()
        written = finish(spool, out, live, holdout, request.output)
        result.parts = written.parts
        await publish(engine, request.route, result.provenance, written, result.manifest)
    except BaseException:
        if written is not None:
            written.discard()
        elif out is not None:
            out.discard()
        raise
    finally:
        spool.close()
    return result


async def excluded_keys(connection: AsyncConnection, ids: Sequence[int]) -> set[int]:
    """The short keys of the prompts the datasets of ``--exclude-dataset`` hold."""
    if not ids:
        return set()
    try:
        return await dataset_short_keys(connection, ids)
    except DatasetError as exc:
        raise ExportError(f"--exclude-dataset: {exc}") from exc
