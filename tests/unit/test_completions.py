from __future__ import annotations

import orjson

from gateway.core.completions import (
    finish_reason,
    response_text,
    strip_logprobs,
    summarise_stream,
    token_logprobs,
    usage,
)


def sse(*events: object) -> bytes:
    return b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events) + (
        b"data: [DONE]\n\n"
    )


def test_chat_stream_is_reassembled() -> None:
    head = {"id": "c1", "created": 5, "model": "m"}
    raw = sse(
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {**head, "choices": [{"index": 1, "delta": {"content": "other choice"}}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    )
    summary = summarise_stream("chat", raw)
    assert summary.text == "Hello"
    assert summary.finish_reason == "stop"
    assert summary.done
    assert summary.usage.completion_tokens == 2
    assert summary.body["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert summary.body["id"] == "c1"


def test_stream_split_across_reads_and_garbage_lines() -> None:
    raw = sse({"choices": [{"index": 0, "text": "a"}]}, {"choices": [{"index": 0, "text": "b"}]})
    raw = b": keep-alive comment\n" + raw + b"data: {not json\n\n"
    summary = summarise_stream("text", raw)
    assert summary.text == "ab"
    assert summary.body["object"] == "text_completion"


def test_stream_error_event_is_kept() -> None:
    summary = summarise_stream("chat", sse({"error": {"message": "overloaded"}}))
    assert summary.error == {"message": "overloaded"}
    assert summary.text == ""


def test_bodies_from_odd_upstreams_give_none() -> None:
    for body in (None, [], {"choices": "x"}, {"choices": [None]}, {"choices": [{"message": 3}]}):
        assert response_text("chat", body) is None
        assert finish_reason(body) is None
        assert token_logprobs("chat", body) is None
    assert usage({"usage": {"prompt_tokens": True, "completion_tokens": 4}}).prompt_tokens is None


def test_chat_and_legacy_logprobs_have_one_shape() -> None:
    chat = {
        "choices": [
            {
                "message": {"content": "hi"},
                "logprobs": {
                    "content": [
                        {
                            "token": "hi",
                            "logprob": -0.1,
                            "bytes": [104, 105],
                            "top_logprobs": [{"token": "hi", "logprob": -0.1, "bytes": None}],
                        }
                    ]
                },
            }
        ]
    }
    legacy = {
        "choices": [
            {
                "text": "hi",
                "logprobs": {
                    "tokens": ["hi"],
                    "token_logprobs": [-0.1],
                    "top_logprobs": [{"hi": -0.1}],
                },
            }
        ]
    }
    expected = [
        {"token": "hi", "logprob": -0.1, "top_logprobs": [{"token": "hi", "logprob": -0.1}]}
    ]
    assert token_logprobs("chat", chat) == expected
    assert token_logprobs("text", legacy) == expected
    assert "logprobs" not in strip_logprobs(chat)["choices"][0]
    assert "logprobs" in chat["choices"][0]  # the original is untouched
