"""The files an export writes from its examples: the training file, and with a holdout the
held-out ``eval`` split beside it; what each holds (:class:`Part`), and each example's item
(:class:`Spool`) for the dataset registry.

While the rows stream, every example goes to one file in the order it was chosen, and its
item (request, prompt key, stratum, labels, teacher version) to an unnamed temp file, the
spool: memory stays flat however many examples there are. At the end, with every example's
live frequency known, :func:`finish` reads the spool once: it tallies each part, and with a
holdout copies each example's line to the train or the eval file.

The split is by prompt (the dedupe already made every example's prompt distinct, so no
normalised prompt is on both sides) and stratified: the eval file's share of each stratum is
the holdout fraction, by largest remainders over the strata (:func:`holdout_quotas`), and
within a stratum the examples whose ``hash(seed:prompt_key)`` is smallest are held out, so the
same seed on the same rows gives the same split, whatever order the rows came in.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

from gateway.core.examples import allocate
from gateway.services.datasets import Item
from gateway.services.export.model import ExportError
from gateway.services.export.output import AtomicFile

# Frequency buckets for the manifest: (label, the lowest frequency in it), ascending.
BUCKETS = (
    ("1", 1),
    ("2", 2),
    ("3-5", 3),
    ("6-10", 6),
    ("11-100", 11),
    ("101-1000", 101),
    (">1000", 1001),
)
TOP_PROMPTS = 10


@dataclass(frozen=True)
class SpooledItem:
    request_id: str
    created_at: datetime
    prompt_key: str  # sha256 hex of the normalised prompt
    stratum: str
    labels: dict[str, str]
    corrected: bool
    model: str | None  # the teacher version: teacher_model_reported
    fingerprint: str | None  # and teacher_fingerprint


class Spool:
    """Each example's item, in file order, in an unnamed temp file beside the output (gone
    when closed, even after a crash). Also per example, 12 bytes in memory: its stratum and
    its split hash, which the holdout choice needs all at once."""

    def __init__(self, folder: Path, seed: int) -> None:
        try:
            self._file: IO[bytes] = tempfile.TemporaryFile(dir=folder, buffering=1 << 20)  # noqa: SIM115
        except OSError as exc:
            raise ExportError(f"cannot write in {folder}: {exc.strerror or exc}") from exc
        self._seed = f"{seed}:".encode()
        self.strata: dict[str, int] = {}  # stratum key → index
        self.stratum_of = array("I")
        self.split_hash = array("Q")

    def __len__(self) -> int:
        return len(self.stratum_of)

    def add(self, item: SpooledItem) -> None:
        record = [
            item.request_id,
            item.created_at,
            item.prompt_key,
            item.stratum,
            item.labels,
            item.corrected,
            item.model,
            item.fingerprint,
        ]
        try:
            self._file.write(orjson.dumps(record) + b"\n")
        except OSError as exc:
            raise ExportError(f"cannot write the export's items: {exc.strerror or exc}") from exc
        self.stratum_of.append(self.strata.setdefault(item.stratum, len(self.strata)))
        digest = hashlib.blake2b(self._seed + item.prompt_key.encode(), digest_size=8).digest()
        self.split_hash.append(int.from_bytes(digest, "big"))

    def items(self) -> Iterator[SpooledItem]:
        """Every item, in file order (from the start each time)."""
        self._file.flush()
        self._file.seek(0)
        for line in self._file:
            request_id, created_at, key, stratum, labels, corrected, model, fingerprint = (
                orjson.loads(line)
            )
            yield SpooledItem(
                request_id,
                datetime.fromisoformat(created_at),
                key,
                stratum,
                labels,
                corrected,
                model,
                fingerprint,
            )

    def close(self) -> None:
        self._file.close()


@dataclass
class Frequency:
    """How many live requests the file's prompts stood for: the dedupe keeps one example per
    normalised prompt, and this keeps the skew that hides."""

    prompts: int = 0
    requests: int = 0
    buckets: Counter[str] = field(default_factory=Counter)
    top: list[tuple[int, str, str]] = field(default_factory=list)  # heap: (n, key, request)

    def add(self, frequency: int, prompt_key: str, request_id: str) -> None:
        self.prompts += 1
        self.requests += frequency
        self.buckets[_bucket(frequency)] += 1
        entry = (frequency, prompt_key, request_id)
        if len(self.top) < TOP_PROMPTS:
            heapq.heappush(self.top, entry)
        elif entry > self.top[0]:
            heapq.heapreplace(self.top, entry)

    def as_json(self) -> dict[str, Any]:
        top = sorted(self.top, key=lambda entry: (-entry[0], entry[1]))
        in_top = sum(n for n, _, _ in top)
        return {
            "prompts": self.prompts,
            "live_requests": self.requests,
            "max": top[0][0] if top else 0,
            "by_frequency": {label: self.buckets[label] for label, _ in BUCKETS},
            "top": [
                {"prompt_key": key, "request_id": request_id, "frequency": n}
                for n, key, request_id in top
            ],
            "top_share": round(in_top / self.requests, 4) if self.requests else 0.0,
        }


def _bucket(frequency: int) -> str:
    return next(name for name, low in reversed(BUCKETS) if frequency >= low)


@dataclass
class Part:
    """One file of the export, train or eval: what it holds, for its manifest."""

    kind: str  # "train" or "eval"
    path: Path
    examples: int = 0
    corrected: int = 0
    sha256: str = ""
    per_slice: Counter[tuple[str, str]] = field(default_factory=Counter)
    per_stratum: Counter[str] = field(default_factory=Counter)
    versions: Counter[tuple[str | None, str | None]] = field(default_factory=Counter)
    first_example: datetime | None = None
    last_example: datetime | None = None
    frequency: Frequency = field(default_factory=Frequency)
    dataset_id: int | None = None

    def add(self, item: SpooledItem, frequency: int) -> None:
        self.examples += 1
        self.corrected += item.corrected
        self.per_slice.update(item.labels.items())
        self.per_stratum[item.stratum] += 1
        self.versions[item.model, item.fingerprint] += 1
        self.first_example = min(self.first_example or item.created_at, item.created_at)
        self.last_example = max(self.last_example or item.created_at, item.created_at)
        self.frequency.add(frequency, item.prompt_key, item.request_id)

    def teacher_versions(self) -> list[dict[str, Any]]:
        return [
            {"model": model, "fingerprint": fingerprint, "examples": n}
            for (model, fingerprint), n in sorted(
                self.versions.items(), key=lambda entry: (-entry[1], str(entry[0]))
            )
        ]


def eval_path(output: Path) -> Path:
    """``train.jsonl`` → ``train.eval.jsonl`` (any other name: ``NAME.eval.jsonl``)."""
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(f"{stem}.eval.jsonl")


def holdout_quotas(fraction: float, per_stratum: Mapping[str, int]) -> dict[str, int]:
    """How many examples of each stratum go to the eval file: ``fraction`` of them all
    (rounded half up), shared among the strata in proportion to their examples by largest
    remainders. :class:`ExportError` when either file would be empty."""
    total = sum(per_stratum.values())
    held = math.floor(fraction * total + 0.5)
    if held == 0 or held == total:
        side = "held-out (eval)" if held == 0 else "training"
        raise ExportError(
            f"--holdout {fraction:g} of {total} examples leaves the {side} file empty; "
            "export more rows or change --holdout"
        )
    return allocate(held, dict(per_stratum))


def held_out(spool: Spool, fraction: float) -> bytearray:
    """Per example, 1 if it goes to the eval file: in each stratum, its quota of the examples
    with the smallest split hash (ties, which need equal 64-bit hashes, by file order)."""
    index_of = spool.strata
    names = {index: name for name, index in index_of.items()}
    counts = Counter(names[index] for index in spool.stratum_of)
    quotas = holdout_quotas(fraction, counts)
    members: dict[int, array[int]] = {index: array("I") for index in names}
    for position, index in enumerate(spool.stratum_of):
        members[index].append(position)
    chosen = bytearray(len(spool))
    hashes = spool.split_hash
    for index, positions in members.items():
        wanted = quotas[names[index]]
        for position in heapq.nsmallest(wanted, positions, key=lambda p: (hashes[p], p)):
            chosen[position] = 1
    return chosen


def key_bits(prompt_key: str) -> int:
    """A prompt key's first 64 bits, as the export's dedupe and frequency counts hold it."""
    return int(prompt_key[:16], 16)


@dataclass
class Written:
    """The parts, their closed files (ready to be put in place), and which example went
    where."""

    parts: list[Part]
    files: list[AtomicFile]
    spool: Spool
    frequencies: Mapping[int, int]
    chosen: bytearray | None = None  # per example: 1 held out (eval), 0 train

    def items(self, side: int) -> Iterator[Item]:
        """The registry's items of one part (0 train, 1 eval), in file order."""
        for position, item in enumerate(self.spool.items()):
            if self.chosen is not None and self.chosen[position] != side:
                continue
            frequency = self.frequencies.get(key_bits(item.prompt_key), 1)
            yield Item(item.request_id, item.created_at, item.prompt_key, frequency)

    def discard(self) -> None:
        for file in self.files:
            file.discard()


def finish(
    spool: Spool,
    examples: AtomicFile,
    frequencies: Mapping[int, int],
    holdout: float | None,
    output: Path,
) -> Written:
    """Tally the parts from the spool, and with a holdout split the closed ``examples`` file
    into a train and an eval file (``examples`` is then discarded). ``frequencies`` maps each
    example's short key to the live requests with its prompt."""
    train = Part("train", output)
    if holdout is None:
        for item in spool.items():
            train.add(item, frequencies.get(key_bits(item.prompt_key), 1))
        train.sha256 = examples.digest.hexdigest()
        return Written([train], [examples], spool, frequencies)
    chosen = held_out(spool, holdout)
    evaluation = Part("eval", eval_path(output))
    parts = [train, evaluation]
    files = [AtomicFile(train.path), AtomicFile(evaluation.path)]
    try:
        with examples.temp.open("rb") as lines:
            for position, (line, item) in enumerate(zip(lines, spool.items(), strict=True)):
                side = chosen[position]
                parts[side].add(item, frequencies.get(key_bits(item.prompt_key), 1))
                files[side].write(line)
        for part, file in zip(parts, files, strict=True):
            file.close()
            part.sha256 = file.digest.hexdigest()
    except BaseException:
        for file in files:
            file.discard()
        raise
    examples.discard()
    return Written(parts, files, spool, frequencies, chosen)
