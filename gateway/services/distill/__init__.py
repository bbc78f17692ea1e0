"""``distill``: re-distil a route's student from its verified traffic, up to a candidate.

The stages, each recorded in a ``distill_runs`` row (:mod:`.runs`):

1. ``export``: a training file and a held-out ``eval`` split from the route's recent traffic,
   through the export service (the route's verifier; live proportions, or a mix), both
   registered as datasets;
2. ``train``: the route's training command with ``{train}``, ``{eval}`` and ``{output}``
   (:mod:`.processes`); the project embeds no trainer;
3. ``launch``: the output on vLLM through :mod:`student_server`, on a free port;
4. ``add``: the server as a candidate (``shadow_sample`` 0 unless asked), its
   ``route_students.train_dataset_id`` set to the training dataset;
5. ``replay``: the held-out requests, then recent traffic, sent to it (:mod:`.replays`);
6. ``report``: the candidates report against the champion, replayed answers only.

It never promotes. See :mod:`.pipeline` for failure, Ctrl-C and resume.
"""

from __future__ import annotations

from gateway.services.distill.pipeline import Distill, DistillOptions
from gateway.services.distill.processes import StageFailed, student_python
from gateway.services.distill.runs import (
    STAGES,
    DistillRun,
    create_run,
    latest_run,
    list_runs,
    save_run,
    student_exists,
)

__all__ = [
    "STAGES",
    "Distill",
    "DistillOptions",
    "DistillRun",
    "StageFailed",
    "create_run",
    "latest_run",
    "list_runs",
    "save_run",
    "student_exists",
    "student_python",
]
