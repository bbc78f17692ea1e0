from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.core.completions import (
    Usage,
    finish_reason,
    keep_top_logprobs,
    strip_logprobs,
    token_logprobs,
    usage,
)


def token(text: str, logprob: float, *alternatives: tuple[str, float]) -> dict[str, Any]:
    return {
        "token": text,
        "logprob": logprob,
        "bytes": list(text.encode()),
        "top_logprobs": [
            {"token": alt, "logprob": lp, "bytes": list(alt.encode())} for alt, lp in alternatives
        ],
    }


def normalised(text: str, logprob: float, *alternatives: tuple[str, float]) -> dict[str, Any]:
    return {
        "token": text,
        "logprob": logprob,
        "top_logprobs": [{"token": alt, "logprob": lp} for alt, lp in alternatives],
    }


def responses_body(**fields: Any) -> dict[str, Any]:
    """Two message items (text parts with logprobs, a refusal part) and a function call."""
    return {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "top_logprobs": 2,
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {
                        "type": "output_text",
                        "text": "Hi",
                        "annotations": [],
                        "logprobs": [token("Hi", -0.1, ("Hi", -0.1), ("Hey", -2.0), ("Yo", -3))],
                    },
                    {"type": "refusal", "refusal": "no"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "id": "msg_2",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {"type": "output_text", "text": "!", "annotations": [], "logprobs": []},
                    {
                        "type": "output_text",
                        "text": "?",
                        "annotations": [],
                        "logprobs": [token("?", -1.5, ("?", -1.5))],
                    },
                ],
            },
        ],
        "usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
        **fields,
    }


CALL = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"}


def test_finish_reason_of_choice_zero() -> None:
    body = {"choices": [{"finish_reason": "tool_calls"}, {"finish_reason": "stop"}]}
    assert finish_reason("chat", body) == "tool_calls"
    assert finish_reason("text", {"choices": [{"finish_reason": "length"}]}) == "length"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"status": "completed"}, "stop"),
        ({"status": "completed", "output": [CALL]}, "tool_calls"),
        ({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}, "length"),
        (
            {"status": "incomplete", "incomplete_details": {"reason": "content_filter"}},
            "content_filter",
        ),
        ({"status": "incomplete", "incomplete_details": {"reason": "other"}}, "other"),
        ({"status": "incomplete", "incomplete_details": None}, None),
        ({"status": "failed", "error": {"code": "server_error"}}, "error"),
        ({"status": "in_progress"}, None),
        ({"status": None}, None),
    ],
)
def test_responses_status_in_chat_vocabulary(fields: dict[str, Any], expected: str | None) -> None:
    assert finish_reason("responses", {"output": [], **fields}) == expected


def test_usage_per_endpoint() -> None:
    chat = {"usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    assert usage("chat", chat) == Usage(3, 2)
    assert usage("text", chat) == Usage(3, 2)
    assert usage("responses", responses_body()) == Usage(7, 3)
    assert usage("responses", chat) == Usage()  # the other vocabulary is not guessed
    assert usage("chat", {"usage": {"prompt_tokens": True, "completion_tokens": 4}}) == Usage(
        None, 4
    )


@pytest.mark.parametrize("endpoint", ["chat", "text", "responses"])
def test_bodies_from_odd_upstreams_give_none(endpoint: Any) -> None:
    bodies: list[Any] = [
        None,
        [],
        "x",
        {"choices": "x"},
        {"choices": [None]},
        {"choices": [{"message": 3, "logprobs": {"content": "x", "tokens": 3}}]},
        {"output": "x"},
        {"output": [None, {"type": "message", "content": "x"}, {"type": "message"}]},
        {"usage": [1]},
    ]
    for body in bodies:
        assert finish_reason(endpoint, body) is None
        assert token_logprobs(endpoint, body) is None
        assert usage(endpoint, body) == Usage()


def test_chat_and_legacy_logprobs_have_one_shape() -> None:
    chat = {
        "choices": [
            {
                "message": {"content": "hi"},
                "logprobs": {"content": [token("hi", -0.1, ("hi", -0.1))]},
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
                    "text_offset": [0],
                },
            }
        ]
    }
    expected = [normalised("hi", -0.1, ("hi", -0.1))]
    assert token_logprobs("chat", chat) == expected
    assert token_logprobs("text", legacy) == expected


def test_chat_refusal_logprobs_stand_in_for_missing_content() -> None:
    refused = {"choices": [{"logprobs": {"content": None, "refusal": [token("No", -0.2)]}}]}
    assert token_logprobs("chat", refused) == [normalised("No", -0.2)]
    both = {"choices": [{"logprobs": {"content": [token("a", -1)], "refusal": [token("b", -2)]}}]}
    assert token_logprobs("chat", both) == [normalised("a", -1.0)]


def test_responses_logprobs_join_every_output_text_part() -> None:
    assert token_logprobs("responses", responses_body()) == [
        normalised("Hi", -0.1, ("Hi", -0.1), ("Hey", -2.0), ("Yo", -3.0)),
        normalised("?", -1.5, ("?", -1.5)),
    ]
    without = strip_logprobs("responses", responses_body())
    assert token_logprobs("responses", without) is None


def test_strip_logprobs_copies() -> None:
    chat: dict[str, Any] = {
        "choices": [{"index": 0, "logprobs": {"content": []}}, {"index": 1, "logprobs": None}]
    }
    stripped = strip_logprobs("chat", chat)
    assert stripped["choices"] == [{"index": 0}, {"index": 1}]
    assert "logprobs" in chat["choices"][0]  # the original is untouched

    body = responses_body()
    original = copy.deepcopy(body)
    stripped = strip_logprobs("responses", body)
    assert body == original
    assert stripped["top_logprobs"] == 2  # the request's setting, not data
    parts = [part for item in stripped["output"] for part in item.get("content", [])]
    assert len(parts) == 4
    assert all("logprobs" not in part for part in parts)
    assert parts[1] == {"type": "refusal", "refusal": "no"}
    assert stripped["output"][1] is body["output"][1]  # untouched items are shared


def test_keep_top_logprobs_trims_every_choice_and_part() -> None:
    many = (("a", -0.1), ("b", -1.0), ("c", -2.0))
    chat = {
        "choices": [
            {"index": 0, "logprobs": {"content": [token("a", -0.1, *many)], "refusal": None}},
            {"index": 1, "logprobs": {"content": None, "refusal": [token("n", -0.3, *many)]}},
            {"index": 2, "logprobs": None},
        ]
    }
    original = copy.deepcopy(chat)
    kept = keep_top_logprobs("chat", chat, 1)
    assert chat == original
    assert [t["token"] for t in kept["choices"][0]["logprobs"]["content"][0]["top_logprobs"]] == [
        "a"
    ]
    assert kept["choices"][1]["logprobs"]["refusal"][0]["top_logprobs"] == [many_bytes("a", -0.1)]
    assert kept["choices"][1]["logprobs"]["content"] is None
    assert kept["choices"][2] == {"index": 2, "logprobs": None}
    assert (
        keep_top_logprobs("chat", chat, 0)["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        == []
    )

    body = responses_body()
    trimmed = keep_top_logprobs("responses", body, 2)
    first = trimmed["output"][0]["content"][0]["logprobs"][0]
    assert [alt["token"] for alt in first["top_logprobs"]] == ["Hi", "Hey"]
    assert len(body["output"][0]["content"][0]["logprobs"][0]["top_logprobs"]) == 3

    legacy = {"choices": [{"logprobs": {"tokens": ["a"], "top_logprobs": [{"a": -1, "b": -2}]}}]}
    assert keep_top_logprobs("text", legacy, 1) is legacy


def many_bytes(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
