"""KeyRing: config and database keys together, 401 for a wrong key, 403 for a wrong scope."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.api.errors import gateway_error_handler
from gateway.api.security import ReaderKey, SreKey
from gateway.config import ApiKey
from gateway.errors import AuthenticationFailed, GatewayError, PermissionDenied
from gateway.services.auth import KeyRing


def api_key(name: str, secret: str, *scopes: str) -> ApiKey:
    return ApiKey(
        name=name, scopes=frozenset(scopes), sha256=hashlib.sha256(secret.encode()).digest()
    )


CONFIG_KEYS = (api_key("bootstrap-app", "config-app", "app"), api_key("ops", "config-sre", "sre"))


def ring_with_database_keys() -> KeyRing:
    ring = KeyRing(CONFIG_KEYS)
    ring.set_database_keys(
        [
            api_key("analyst-1", "db-analyst", "analyst"),
            api_key("sre-and-app", "db-both", "sre", "app"),
        ]
    )
    return ring


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer   ", "Basic config-app", "config-app", "Bearer nope"]
)
def test_missing_malformed_or_unknown_key_is_401(header: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        ring_with_database_keys().authenticate(header, ("app", "sre", "analyst"))
    assert caught.value.http_status == 401
    assert caught.value.code == "invalid_api_key"


def test_the_default_scope_is_app() -> None:
    ring = ring_with_database_keys()
    assert ring.authenticate("Bearer config-app").name == "bootstrap-app"
    assert ring.authenticate("bearer  db-both ").name == "sre-and-app"
    with pytest.raises(PermissionDenied):
        ring.authenticate("Bearer config-sre")


def test_a_key_needs_one_of_the_accepted_scopes() -> None:
    ring = ring_with_database_keys()
    readers = ("sre", "analyst")
    assert ring.authenticate("Bearer db-analyst", readers).name == "analyst-1"
    assert ring.authenticate("Bearer config-sre", readers).name == "ops"
    assert ring.authenticate("Bearer db-both", "sre").name == "sre-and-app"  # a bare str is one
    with pytest.raises(PermissionDenied) as caught:
        ring.authenticate("Bearer db-analyst", ("sre",))
    error = caught.value
    assert error.http_status == 403
    assert error.code == "insufficient_scope"
    assert error.error_type == "invalid_request_error"
    assert "'sre'" in error.message
    assert "analyst-1" in error.message
    with pytest.raises(PermissionDenied, match="'sre' or 'analyst'"):
        ring.authenticate("Bearer config-app", readers)


def test_replacing_database_keys_revokes_the_missing_and_keeps_config_keys() -> None:
    ring = ring_with_database_keys()
    assert ring.authenticate("Bearer db-analyst", ["analyst"]).name == "analyst-1"
    ring.set_database_keys([api_key("sre-and-app", "db-both", "sre", "app")])
    with pytest.raises(AuthenticationFailed):
        ring.authenticate("Bearer db-analyst", ["analyst"])
    assert ring.authenticate("Bearer db-both", ["sre"]).name == "sre-and-app"
    ring.set_database_keys([])
    with pytest.raises(AuthenticationFailed):
        ring.authenticate("Bearer db-both", ["sre"])
    assert ring.authenticate("Bearer config-sre", ["sre"]).name == "ops"  # config keys stay


def test_a_config_key_wins_a_digest_clash() -> None:
    ring = KeyRing(CONFIG_KEYS)
    ring.set_database_keys([api_key("impostor", "config-sre", "app", "sre", "analyst")])
    with pytest.raises(PermissionDenied):
        ring.authenticate("Bearer config-sre", ["analyst"])
    assert ring.authenticate("Bearer config-sre", ["sre"]).name == "ops"


def admin_app() -> FastAPI:
    """A FastAPI app with the gateway's error handler and a state holding only a KeyRing."""
    app = FastAPI()
    app.state.gateway = SimpleNamespace(keys=ring_with_database_keys())
    app.add_exception_handler(GatewayError, gateway_error_handler)

    @app.get("/read")
    async def read(key: ReaderKey) -> dict[str, str]:
        return {"actor": key.name}

    @app.post("/write")
    async def write(key: SreKey) -> dict[str, str]:
        return {"actor": key.name}

    return app


@pytest.mark.parametrize(
    ("method", "path", "secret", "status", "actor"),
    [
        ("GET", "/read", "db-analyst", 200, "analyst-1"),
        ("GET", "/read", "config-sre", 200, "ops"),
        ("GET", "/read", "config-app", 403, None),
        ("GET", "/read", None, 401, None),
        ("POST", "/write", "db-both", 200, "sre-and-app"),
        ("POST", "/write", "db-analyst", 403, None),
        ("POST", "/write", "wrong", 401, None),
    ],
)
def test_admin_dependencies(
    method: str, path: str, secret: str | None, status: int, actor: str | None
) -> None:
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    with TestClient(admin_app()) as client:
        response = client.request(method, path, headers=headers)
    assert response.status_code == status
    if actor is not None:
        assert response.json() == {"actor": actor}
    else:
        error = response.json()["error"]
        assert error["code"] == ("insufficient_scope" if status == 403 else "invalid_api_key")
