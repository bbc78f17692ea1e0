"""The scope gate: is a request the kind of work the student was trained for?

Two checks, either optional: the request's slice labels against ``scope.allow`` (a request
must carry an allowed value in every listed dimension; no label is no allowed value), and the
prompt's novelty against a reference set (:mod:`gateway.core.novelty`). A request outside
scope is never served by the student; the gate runs only for requests chosen for it, so it
costs nothing on the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported only by routes that use novelty
    from gateway.core.novelty import NoveltyIndex


@dataclass(frozen=True)
class Scope:
    allow: Mapping[str, frozenset[str]] = field(default_factory=dict)
    novelty: NoveltyIndex | None = None
    max_distance: float = 1.0

    @property
    def everything(self) -> bool:
        return not self.allow and self.novelty is None

    def outside(self, labels: Mapping[str, str], text: str) -> str | None:
        """Why the request is out of scope (for the log), or None when it is in scope."""
        for dimension, values in self.allow.items():
            found = labels.get(dimension)
            if found not in values:
                return f"{dimension}={found} not allowed" if found else f"no {dimension} label"
        if self.novelty is not None:
            distance = self.novelty.distance(text)
            if distance > self.max_distance:
                return f"novelty {distance:.3f} above {self.max_distance:g}"
        return None
