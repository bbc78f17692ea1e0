"""Hostile input against the real gateway: PII redaction, rate limits, slow bodies, odd headers.

Real processes throughout: the gateway under uvicorn on loopback, FakeOpenAI teacher and
student servers, the machine's Postgres.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import ROUTE, complete_row, rows
from tests.integration.test_errors import CHAT, assert_openai_error
from tests.support.db import fetch, wait_for
from tests.support.gateway import GatewayServer, route, sdk, write_config
from tests.support.process import GatewayProcess, free_port
from tests.support.upstream import FakeOpenAI

PII = "mail jane.doe@example.com, card 4111 1111 1111 1111, phone +1 (555) 123-4567"
REDACTED = "mail [EMAIL], card [CARD], phone [PHONE]"
ALL_REDACTORS = {"emails": True, "phones": True, "cards": True}


def _post(gateway: GatewayServer, key: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})},
        timeout=10,
        **kwargs,
    )


def _row(url: str, request_id: str) -> dict[str, Any]:
    """The request's complete row, its JSONB columns parsed."""
    row = complete_row(url, request_id)
    return {k: json.loads(v) if k in _JSONB and v is not None else v for k, v in row.items()}


_JSONB = {
    "slices",
    "request_payload",
    "teacher_response",
    "student_response",
    "student_logprobs",
    "agreement_detail",
}


def _ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": ROUTE, "messages": [{"role": "user", "content": text}], **extra}


# -- PII redaction ----------------------------------------------------------------------------


def test_redaction_applies_to_the_row_never_to_upstreams_or_the_app(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
) -> None:
    gateway = make_gateway(
        [route(ROUTE, teacher.base_url, [student.base_url])],
        redaction={
            **ALL_REDACTORS,
            "patterns": [{"pattern": r"ACCT-\d+", "replacement": "[ACCT]"}],
        },
    )
    response = _post(gateway, app_key, _ask(f"{PII}, account ACCT-998877"))
    assert response.status_code == 200
    raw = f"{PII}, account ACCT-998877"
    # the app gets the teacher's real answer, the upstreams got the real prompt
    assert response.json()["choices"][0]["message"]["content"] == f"teacher: {raw}"
    assert teacher.received[-1].body["messages"][0]["content"] == raw
    wait_for(lambda: bool(student.received), what="the shadow call")
    assert student.received[-1].body["messages"][0]["content"] == raw

    row = _row(clean_db, response.headers["x-request-id"])
    stored = f"{REDACTED}, account [ACCT]"
    assert row["request_payload"]["messages"][0]["content"] == stored
    assert row["teacher_output"] == f"teacher: {stored}"
    assert row["teacher_response"]["choices"][0]["message"]["content"] == f"teacher: {stored}"
    assert row["student_output"] == f"student: {stored}"
    # agreement was judged on what the models said, before redaction
    assert row["agreement_score"] is not None
    everything = json.dumps(row, default=str)
    for secret in ("jane.doe", "4111", "555", "998877"):
        assert secret not in everything


def test_redaction_of_streams_and_logprobs(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
) -> None:
    gateway = make_gateway(
        [route(ROUTE, teacher.base_url, [student.base_url])], redaction=ALL_REDACTORS
    )
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=_ask(PII, stream=True),
        headers={"Authorization": f"Bearer {app_key}"},
        timeout=10,
    ) as response:
        text = "".join(response.iter_text())
        request_id = response.headers["x-request-id"]
    assert "jane.doe@example.com" in text  # the app's stream is untouched
    row = _row(clean_db, request_id)
    assert row["teacher_output"] == f"teacher: {REDACTED}"
    assert row["student_output"] == f"student: {REDACTED}"
    # the student was asked for logprobs; its tokens spelled the PII out, so they are gone
    assert row["student_logprobs"]
    assert all(token["token"] is None for token in row["student_logprobs"])
    assert "jane" not in json.dumps(row, default=str)


def test_the_journal_on_disk_holds_only_redacted_text(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Postgres unreachable: every record goes to the journal
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    gateway = make_gateway(
        [route(ROUTE, teacher.base_url, None, mode="teacher")], redaction=ALL_REDACTORS
    )
    for _ in range(3):
        assert _post(gateway, app_key, _ask(PII)).status_code == 200
    gateway.stop()  # closing writes whatever is pending to the journal
    journal = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert b"[EMAIL]" in journal
    for secret in (b"jane.doe", b"4111", b"123-4567"):
        assert secret not in journal


def test_no_redaction_configured_stores_text_as_sent(
    gateway: GatewayServer, app_key: str, clean_db: str
) -> None:
    response = _post(gateway, app_key, _ask(PII))
    row = _row(clean_db, response.headers["x-request-id"])
    assert row["teacher_output"] == f"teacher: {PII}"


# -- rate limits ------------------------------------------------------------------------------


def test_rate_limit_is_429_in_openai_shape_with_retry_after(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    clean_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SGW_OTHER_KEY", "other-key")
    gateway = make_gateway(
        [route(ROUTE, teacher.base_url, None, mode="teacher")],
        auth={
            "keys": [
                {"name": "tests", "key_env": "SGW_TEST_APP_KEY"},
                {"name": "other", "key_env": "SGW_OTHER_KEY"},
            ]
        },
        rate_limits={
            "default": {"requests_per_s": 100, "burst": 100},
            "keys": {"tests": {"requests_per_s": 0.01, "burst": 2}},
        },
    )
    assert [_post(gateway, app_key, CHAT).status_code for _ in range(2)] == [200, 200]
    limited = _post(gateway, app_key, CHAT)
    error = assert_openai_error(limited, 429, "rate_limit_exceeded")
    assert error["type"] == "requests"
    assert 1 <= int(limited.headers["retry-after"]) <= 100
    assert "x-request-id" in limited.headers
    assert "test-app-key" not in limited.text
    # another key has its own bucket
    assert _post(gateway, "other-key", CHAT).status_code == 200
    # the OpenAI SDK sees its RateLimitError (and would honour retry-after)
    client = sdk(gateway, app_key)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=ROUTE, messages=[{"role": "user", "content": "x"}])
    assert gateway.metric("shadow_gateway_rate_limited_total", key="tests") == 2
    assert gateway.metric("shadow_gateway_rejected_total", reason="429") == 2
    wait_for(lambda: len(rows(clean_db)) == 3, what="the three admitted rows")
    time.sleep(0.3)
    assert len(rows(clean_db)) == 3  # refused requests leave no row


# -- slow bodies (slow-loris) -----------------------------------------------------------------


def _trickle(port: int, head: bytes, body: bytes, interval_s: float) -> bytes:
    """Send ``head`` then ``body`` a byte at a time; return what the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        received = b""
        for byte in body:
            sock.settimeout(interval_s)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                chunk = None
            if chunk is not None:
                received += chunk
                break  # the server answered (or closed) before the body was done
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
        else:
            raise AssertionError("the server waited for the whole trickled body")
        sock.settimeout(10)
        while chunk:
            chunk = sock.recv(65536)
            received += chunk  # b"" once the server closes the connection
        return received


def _head(path: str, key: str, length: int, method: str = "POST") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_a_slow_body_is_cut_off_with_408_and_a_closed_connection(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    clean_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SGW_SRE_KEY", "sre-key")
    gateway = make_gateway(
        [route(ROUTE, teacher.base_url, None, mode="teacher")],
        server={"body_timeout_s": 1.0},
        auth={
            "keys": [
                {"name": "tests", "key_env": "SGW_TEST_APP_KEY"},
                {"name": "sre", "key_env": "SGW_SRE_KEY", "scopes": ["sre"]},
            ]
        },
    )
    body = json.dumps(CHAT).encode()
    answer = _trickle(gateway.port, _head("/v1/chat/completions", app_key, len(body)), body, 0.3)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in head.lower()
    assert json.loads(payload)["error"]["code"] == "request_timeout"
    assert not teacher.received  # nothing went upstream
    # a FastAPI route with a body (the admin API) gets the same answer
    change = json.dumps({"rollout_percent": 5, "reason": "slow"}).encode()
    answer = _trickle(
        gateway.port, _head(f"/admin/routes/{ROUTE}", "sre-key", len(change), "PATCH"), change, 0.3
    )
    assert answer.startswith(b"HTTP/1.1 408"), answer
    # the server is fine, and ordinary requests are unaffected
    assert _post(gateway, app_key, CHAT).status_code == 200
    assert gateway.metric("shadow_gateway_rejected_total", reason="408") == 1
    wait_for(lambda: len(rows(clean_db)) == 1, what="the one good row")


def test_a_big_body_at_a_decent_rate_earns_more_time(
    make_gateway: Callable[..., GatewayServer], app_key: str, teacher: FakeOpenAI
) -> None:
    gateway = make_gateway(
        [route(ROUTE, teacher.base_url, None, mode="teacher")],
        server={"body_timeout_s": 0.5, "body_min_rate_bytes_s": 65536},
    )
    body = json.dumps(_ask("x" * 500_000)).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(_head("/v1/chat/completions", app_key, len(body)))
        for start in range(0, len(body), 50_000):  # ~10 chunks, well past 0.5 s in all
            sock.sendall(body[start : start + 50_000])
            time.sleep(0.1)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


# -- X-Slice-* headers and labels -------------------------------------------------------------


def _raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received:
                break
        return received


def test_crlf_in_a_header_is_refused_before_any_route(
    gateway: GatewayServer, app_key: str, clean_db: str
) -> None:
    body = json.dumps(CHAT).encode()
    # (a CRLF pair just ends the header line: what follows is another header, not this value)
    for injected in (b"a\rb", b"a\nb", b"a\x00b", b"a\x7fb"):
        head = _head("/v1/chat/completions", app_key, len(body)).replace(
            b"Content-Type", b"X-Slice-Tier: " + injected + b"\r\nContent-Type"
        )
        answer = _raw_request(gateway.port, head + body)
        assert answer.startswith(b"HTTP/1.1 400"), (injected, answer)
    assert _post(gateway, app_key, CHAT).status_code == 200
    wait_for(lambda: len(rows(clean_db)) == 1, what="the one good row")
    assert json.loads(rows(clean_db)[0]["slices"]) == {}


def test_slice_values_are_normalised_never_stored_raw(
    gateway: GatewayServer, app_key: str, clean_db: str
) -> None:
    sql = "'); DROP TABLE requests; --"
    response = _post(
        gateway,
        app_key,
        {**CHAT, "metadata": {"ctl": "a\u0000b\u202ec\u200bd\x85e", "sql_meta": sql}},
        headers={
            "X-Slice-Long": "v" * 8000,
            "X-Slice-City": "Zürich".encode(),  # UTF-8 bytes on the wire
            "X-Slice-Latin": b"caf\xe9",  # not UTF-8: kept as Latin-1 text
            "X-Slice-Sql": sql,
            "X-Slice-Bad!Name": "x",
            "X-Slice-": "no name",
        },
    )
    assert response.status_code == 200
    row = _row(clean_db, response.headers["x-request-id"])
    assert row["slices"] == {
        "long": "v" * 128,
        "city": "Zürich",
        "latin": "café",
        "sql": sql,
        "sql_meta": sql,
        "ctl": "abcde",
    }
    assert fetch(clean_db, "SELECT count(*) AS n FROM requests")[0]["n"] == 1


# -- oversized and odd requests ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "n": 10**6}, "n"),
        ({**CHAT, "max_tokens": 2**40}, "max_tokens"),
        ({**CHAT, "max_completion_tokens": 2**31}, "max_completion_tokens"),
        ({**CHAT, "max_tokens": -1}, "max_tokens"),
        ({**CHAT, "temperature": 1e308}, "temperature"),
        ({**CHAT, "messages": [{"role": "user", "content": {"nested": [[[[{}]]]]}}]}, None),
        ({**CHAT, "model": ["support-bot"]}, "model"),
    ],
)
def test_huge_or_wrong_values_are_400(
    gateway: GatewayServer, app_key: str, teacher: FakeOpenAI, body: Any, param: str | None
) -> None:
    error = assert_openai_error(_post(gateway, app_key, body), 400)
    if param is not None:
        assert error["param"] == param
    assert not teacher.received


@pytest.mark.parametrize(
    "content",
    [
        b'{"model": "support-bot", "messages": [' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"]}",
        b'{"model": 1e400}',
        b'{"model": 123456789012345678901234567890}',
        b'{"model": "\xed\xa0\x80"}',  # a UTF-8-encoded lone surrogate
        b'{"model": "support-bot", "model": "x"',
        b"\xef\xbb\xbf{}",  # a BOM
        b"",
    ],
)
def test_malformed_bodies_are_400(gateway: GatewayServer, app_key: str, content: bytes) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {app_key}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert_openai_error(response, 400)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "multipart/form-data; boundary=x", "application/xml", "image/png"],
)
def test_wrong_content_types_are_415(
    gateway: GatewayServer, app_key: str, content_type: str
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/completions",
        content=json.dumps({"model": ROUTE, "prompt": "x"}).encode(),
        headers={"Authorization": f"Bearer {app_key}", "Content-Type": content_type},
        timeout=10,
    )
    assert_openai_error(response, 415, "unsupported_media_type")


def test_a_lying_content_length_is_413_before_reading(gateway: GatewayServer, app_key: str) -> None:
    head = _head("/v1/chat/completions", app_key, 50_000_000)
    answer = _raw_request(gateway.port, head + b'{"model"')
    assert answer.startswith(b"HTTP/1.1 413"), answer


# -- upstream URLs come only from the configuration -------------------------------------------


def test_nothing_in_a_request_changes_the_upstream_host(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
) -> None:
    decoy = FakeOpenAI("decoy").start()
    try:
        gateway = make_gateway([route(ROUTE, teacher.base_url, [student.base_url])])
        decoy_host = f"127.0.0.1:{decoy.port}"
        hostile_headers = {
            "Host": decoy_host,
            "X-Forwarded-Host": decoy_host,
            "X-Forwarded-For": "127.0.0.1",
            "X-Forwarded-Proto": "http",
            "X-Original-URL": decoy.base_url,
            "Forwarded": f"host={decoy_host}",
            "X-Upstream": decoy.base_url,
            "X-Base-Url": decoy.base_url,
        }
        bodies = [
            {**CHAT, "base_url": decoy.base_url, "api_base": decoy.base_url, "url": decoy.base_url},
            {**CHAT, "model": f"{decoy.base_url}/chat/completions"},
            {**CHAT, "model": f"//{decoy_host}/v1"},
            {**CHAT, "model": f"{ROUTE}@{decoy_host}"},
            {**CHAT, "model": f"../../{decoy_host}"},
            {
                **CHAT,
                "extra_headers": {"Host": decoy_host},
                "extra_body": {"base_url": decoy.base_url},
            },
        ]
        for body in bodies:
            _post(gateway, app_key, body, headers=hostile_headers)
        for path in (f"/v1/models/{decoy.base_url}", f"/v1/models/..%2F..%2F{decoy_host}"):
            httpx.get(f"{gateway.url}{path}", headers={"Authorization": f"Bearer {app_key}"})
        wait_for(lambda: len(student.received) >= 2, what="the shadow calls")
        assert not decoy.received
        assert len(teacher.received) == 2  # the two bodies naming the real route
        # and the teacher saw none of the app's hostile Host/forwarding headers as its own
        assert all(r.headers["host"] == f"127.0.0.1:{teacher.port}" for r in teacher.received)
    finally:
        decoy.stop()


# -- slow headers (the server's protocol) ------------------------------------------------------


@pytest.fixture
def header_guarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A uvicorn server with :class:`HeaderTimeoutProtocol` (0.5 s) in front of a tiny app."""
    import threading

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route as StarletteRoute

    from gateway.api.limits import HEADER_TIMEOUT_ENV, HeaderTimeoutProtocol

    monkeypatch.setenv(HEADER_TIMEOUT_ENV, "0.5")
    app = Starlette(routes=[StarletteRoute("/", lambda _: PlainTextResponse("ok"))])
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            http=HeaderTimeoutProtocol,
            lifespan="off",
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="the server")
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_slow_or_missing_headers_are_cut_off(header_guarded: int) -> None:
    with socket.create_connection(("127.0.0.1", header_guarded), timeout=10) as sock:
        answer = _read_all(sock)  # sends nothing at all
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 100 + b"\r\n\r\n"
    assert _trickle(header_guarded, b"", head, 0.1).startswith(b"HTTP/1.1 408")


def test_prompt_headers_and_keep_alive_are_unaffected(header_guarded: int) -> None:
    with socket.create_connection(("127.0.0.1", header_guarded), timeout=10) as sock:
        for _ in range(3):  # three requests on one connection, 0.3 s apart: 0.9 s in all
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            time.sleep(0.3)


def test_serve_puts_the_header_deadline_in_front_of_the_gateway(
    tmp_path: Path, clean_db: str, app_key: str, teacher: FakeOpenAI
) -> None:
    """The real ``shadow-gateway serve`` (not just the protocol): a silent connection gets 408."""
    config = write_config(
        tmp_path / "gateway.yaml",
        [route(ROUTE, teacher.base_url, None, mode="teacher")],
        server={"header_timeout_s": 0.5},
    )
    gateway = GatewayProcess(
        config, {"DATABASE_URL": clean_db, "SGW_TEST_APP_KEY": app_key}, tmp_path / "gateway.log"
    )
    try:
        gateway.wait_ready()
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer
    finally:
        gateway.kill()
