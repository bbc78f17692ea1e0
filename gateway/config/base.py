"""What every section of the config file shares: strict, frozen models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors (a typo never silently does nothing); values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)
