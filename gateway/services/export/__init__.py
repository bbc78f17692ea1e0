"""The training-set export: logged production traffic → JSONL for the next distillation.

One example per request, in the OpenAI fine-tuning chat format: the app's messages (a
``/v1/completions`` prompt becomes one user message) and the teacher's answer as the assistant
turn. Each row matched by the filters (route, window, slices, ``agree = false`` for hard
examples only) ends in exactly one place, so ``rows_matched = examples + sum(dropped)``:

- ``teacher_not_asked``: the student served the request and the teacher was never asked (a
  rollout request without an audit): there is no teacher answer to learn from;
- ``teacher_failed``: no complete teacher answer (not HTTP 200, no text, an error mid-stream);
- ``teacher_truncated``: the teacher stopped at ``max_tokens``;
- ``judged_wrong``: a review or the app's feedback judged the teacher's answer wrong (the
  rules are :mod:`gateway.services.judgements`'; counted by which of the two decided, per
  stratum and per slice). With ``use_corrections``, such an answer that has a correction is
  exported with the correction as the assistant turn instead (``corrected``), and goes
  through the checks below like any answer. A correction of an answer judged right is not
  used: the teacher's answer stands;
- ``no_prompt``: the app's request body was not stored (``log_writer.store_payloads``);
- ``excluded_dataset``: the normalised prompt is in a dataset named by ``exclude_datasets``
  (an earlier training set, or its held-out split);
- ``verifier``: the route's verifier rejected the answer (counted per failed check);
- ``duplicate_prompt``: the same normalised conversation was already exported;
- ``sampling``: left out by a ``limit``. Strata (the joint slice labels, or the values of the
  ``mix`` dimension) get quotas in proportion to live traffic or to the mix, by largest
  remainders; rows are read in a seeded random order (``md5(seed:request_id)``, so a run can be
  repeated) until every quota is full.

Memory stays flat: rows come through a server-side cursor and go straight to the file; what is
held is a counter per stratum, one 64-bit hash per exported prompt for the dedupe (about 70
bytes each, i.e. ~70 MB per million distinct prompts), a live count per distinct prompt (as
much again), 64 bits per prompt of the excluded datasets, 12 bytes per example for the
holdout, and the keys of the rows judged wrong (as many as people and apps judged, read first
by key from ``reviews`` and ``feedback``). Each example's item for the registry waits in an
unnamed temp file.
Counts and rows are read in one REPEATABLE READ snapshot, so they agree while the gateway
keeps logging. The file and its manifest are written beside their final names and renamed at
the end: a failed export never leaves a half-written file.

``holdout`` splits the examples into the training file and a held-out ``eval`` file beside
it, by prompt and stratified (:mod:`.parts`). Every file is registered as a dataset, its
items with their prompt keys and live frequencies (how many matching rows had that
normalised prompt: the skew the dedupe hides), in one transaction before the files are put
in place (:mod:`.publish`); the manifest records the window as absolute times, so
:func:`request_from_manifest` repeats the export.

``format = "dpo"`` writes preference pairs from reviewed answers instead
(:mod:`.preference`).

Modules: :mod:`.model` (request, result, manifest, quotas), :mod:`.verifier`, :mod:`.queries`,
:mod:`.output` (the atomic file), :mod:`.exporter` (the run), :mod:`.parts` (the train and
eval files, the items), :mod:`.publish` (registration), :mod:`.preference` (the pairs).
"""

from __future__ import annotations

from gateway.services.export.exporter import Exporter
from gateway.services.export.model import (
    FORMATS,
    ExportError,
    ExportRequest,
    ExportResult,
    Mix,
    Provenance,
    Stratum,
    original_digests,
    request_from_manifest,
)
from gateway.services.export.parts import Part, eval_path
from gateway.services.export.preference import PreferenceExporter, PreferenceResult
from gateway.services.export.verifier import build_verifier

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportRequest",
    "ExportResult",
    "Exporter",
    "Mix",
    "Part",
    "PreferenceExporter",
    "PreferenceResult",
    "Provenance",
    "Stratum",
    "build_verifier",
    "eval_path",
    "original_digests",
    "request_from_manifest",
]
