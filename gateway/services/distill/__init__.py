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
5. ``replay``: the held-out requests, then recent traffic, sent to it, and the held-out
   requests the champion has no answer to sent to the champion (:mod:`.replays`);
6. ``report``: the candidate against the champion on the held-out split, paired
   (:mod:`.holdout`), and the candidates report on the replayed answers.

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
