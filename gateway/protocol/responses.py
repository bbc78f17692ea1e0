"""What every response model of the admin API shares, and the OpenAI error shape.

The services answer plain JSON-ready dicts (the CLI prints the same ones with ``--json``); the
API validates them against these models, so ``/openapi.json`` documents each body and clients
can be generated from it. The models describe the dicts; they must never change them:

- every model allows extra keys (:class:`View`), so a key a service adds is passed on, never
  dropped (``tests/integration/test_openapi_responses.py`` checks real answers against the
  schema with extra keys forbidden, so such a key is caught there and declared here);
- no field has a default, so none is added to an answer that lacks it; the few keys absent
  from some answers have a ``None`` default and their routes set
  ``response_model_exclude_unset`` (a default is then never written out);
- a real number is :data:`Number`, which keeps an ``int`` an ``int`` (pydantic's ``float``
  would turn ``1`` into ``1.0``); times are the ISO 8601 strings the services write.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

Number = Annotated[int | float, WithJsonSchema({"type": "number"})]
"""A real number, as the service wrote it (an ``int`` stays one)."""

Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
"""A moment in ISO 8601 (UTC)."""

Day = Annotated[str, WithJsonSchema({"type": "string", "format": "date"})]
"""A UTC day in ISO 8601 (``2024-05-01``)."""

JsonObject = dict[str, Any]
"""Stored JSON (a row's slice labels, a payload, an audit entry's old and new values)."""


class View(BaseModel):
    """A response body (or a part of one): exactly the keys the service answers."""

    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong and what to do, in one sentence or two")
    type: str = Field(description="invalid_request_error, authentication_error, … (OpenAI's)")
    param: str | None = Field(description="The parameter or body field at fault, if one is")
    code: str | None = Field(description="A stable code: invalid_value, not_found, …")


class OpenAIError(BaseModel):
    """Every error the gateway answers, whatever raised it: OpenAI's shape."""

    error: ErrorDetail
