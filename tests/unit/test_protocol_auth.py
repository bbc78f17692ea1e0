from __future__ import annotations

import hashlib

import pytest

from gateway.config import ApiKey
from gateway.errors import AuthenticationFailed, InvalidRequest, PermissionDenied, TeacherHTTPError
from gateway.protocol.openai import validate_request
from gateway.services.auth import KeyRing


def test_unknown_fields_pass_and_known_ones_are_checked() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "new_param": {"a": 1}}
    assert validate_request("chat", body).model_extra == {"new_param": {"a": 1}}
    with pytest.raises(InvalidRequest) as caught:
        validate_request("chat", {**body, "messages": [{"role": "user", "content": 5}]})
    assert caught.value.param == "messages[0].content"
    with pytest.raises(InvalidRequest) as caught:
        validate_request("text", {"model": "m", "prompt": [["a"]]})
    assert caught.value.param == "prompt"


def test_body_of_an_error_is_openai_shaped() -> None:
    error = InvalidRequest("bad", param="n", code="invalid_value")
    assert error.http_status == 400
    assert error.to_body() == (
        b'{"error":{"message":"bad","type":"invalid_request_error","param":"n",'
        b'"code":"invalid_value"}}'
    )
    passthrough = TeacherHTTPError(418, b'{"error": {"message": "teapot"}}', "application/json")
    assert passthrough.http_status == 418
    assert passthrough.to_body() == b'{"error": {"message": "teapot"}}'


def keyring() -> KeyRing:
    return KeyRing(
        (
            ApiKey(name="app", scopes=frozenset({"app"}), sha256=hashlib.sha256(b"k1").digest()),
            ApiKey(name="ops", scopes=frozenset({"sre"}), sha256=hashlib.sha256(b"k2").digest()),
        )
    )


def test_keys_are_checked_by_hash_and_scope() -> None:
    ring = keyring()
    assert ring.authenticate("Bearer k1").name == "app"
    assert ring.authenticate("bearer   k1").name == "app"
    for header in (None, "", "Bearer", "Bearer  ", "Basic k1", "Bearer k3"):
        with pytest.raises(AuthenticationFailed):
            ring.authenticate(header)
    with pytest.raises(PermissionDenied):
        ring.authenticate("Bearer k2")  # a known key without the scope: 403, not 401
    assert ring.authenticate("Bearer k2", ["sre"]).name == "ops"
