"""GatewayApp: the hot POST endpoints answered ahead of FastAPI's layers, and everything else
still FastAPI's."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.api.hotpath import GatewayApp
from gateway.errors import InvalidRequest


async def echo(request: Request) -> Response:
    return JSONResponse({"app": request.app is not None, "body": (await request.body()).decode()})


async def broken(request: Request) -> Response:
    raise RuntimeError("a bug")


async def refuses(request: Request) -> Response:
    raise InvalidRequest("no", code="invalid_value")


def _app() -> GatewayApp:
    hot = {"/v1/echo": echo, "/v1/broken": broken, "/v1/refuses": refuses}
    app = GatewayApp(hot=hot, body_timeout_s=5.0, body_min_rate=1024)
    app.router.routes.append(Route("/v1/echo", echo, methods=["POST"]))

    @app.get("/other")
    async def other() -> dict[str, str]:
        return {"via": "fastapi"}

    return app


def test_a_hot_post_reaches_its_handler_with_the_app_in_scope() -> None:
    with TestClient(_app()) as client:
        answer = client.post("/v1/echo", content=b"hello")
    assert answer.status_code == 200
    assert answer.json() == {"app": True, "body": "hello"}


def test_a_bug_in_a_hot_handler_is_an_openai_500() -> None:
    with TestClient(_app(), raise_server_exceptions=False) as client:
        answer = client.post("/v1/broken", json={})
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal_error"


def test_a_gateway_error_a_hot_handler_raises_is_answered_in_openai_shape() -> None:
    with TestClient(_app()) as client:
        answer = client.post("/v1/refuses", json={})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_value"


def test_other_methods_paths_and_routes_are_fastapi_s() -> None:
    with TestClient(_app()) as client:
        assert client.get("/v1/echo").status_code == 405  # the route's, through the router
        assert client.get("/other").json() == {"via": "fastapi"}
        assert client.post("/v1/nowhere", json={}).status_code == 404
