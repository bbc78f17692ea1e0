"""The demo teacher is an OpenAI-compatible upstream: the openai SDK talks to it unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from gateway.demo.task import teacher_answer
from gateway.demo.teacher import TEACHER_MODEL, ThreadedServer, create_teacher_app


@pytest.fixture(scope="module")
def teacher() -> Iterator[ThreadedServer]:
    server = ThreadedServer(create_teacher_app()).start()
    yield server
    server.stop()


@pytest.fixture
def client(teacher: ThreadedServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{teacher.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_models_lists_the_teacher(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [TEACHER_MODEL]


def test_chat_answers_the_last_user_message(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=TEACHER_MODEL,
        messages=[
            {"role": "system", "content": "Answer with the ISO date."},
            {"role": "user", "content": "earlier"},
            {"role": "user", "content": "March 5th, 2024"},
        ],
    )
    assert reply.choices[0].message.content == "2024-03-05"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 10


def test_chat_streams(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=TEACHER_MODEL,
        messages=[{"role": "user", "content": "2 days after 2023-02-27"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == teacher_answer("2 days after 2023-02-27") == "2023-02-29"  # the bug, served
    assert chunks[-1].usage is not None


def test_completions_plain_and_streamed(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=TEACHER_MODEL, prompt="07/04/2025")
    assert plain.choices[0].text == "2025-07-04"
    streamed = client.completions.create(model=TEACHER_MODEL, prompt="07/04/2025", stream=True)
    assert "".join(c.choices[0].text for c in streamed) == "2025-07-04"


def test_errors_have_the_openai_shape(teacher: ThreadedServer) -> None:
    url = f"{teacher.url}/v1/chat/completions"
    wrong_model = httpx.post(url, json={"model": "gpt-4o", "messages": []}, trust_env=False)
    assert wrong_model.status_code == 404
    assert wrong_model.json()["error"]["param"] == "model"
    no_json = httpx.post(url, content=b"{", trust_env=False)
    assert no_json.status_code == 400
    no_messages = httpx.post(url, json={"model": TEACHER_MODEL}, trust_env=False)
    assert no_messages.status_code == 400
