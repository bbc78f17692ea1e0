from __future__ import annotations

from gateway.core.examples import allocate, prompt_key, prompt_messages


def test_allocate_by_largest_remainders() -> None:
    assert allocate(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert allocate(7, {"big": 90, "small": 10}) == {"big": 6, "small": 1}
    assert sum(allocate(1000, {"x": 0.3333, "y": 0.3333, "z": 0.3334}).values()) == 1000
    assert allocate(5, {"a": 0, "b": 0}) == {"a": 0, "b": 0}


def test_prompt_key_ignores_case_and_spacing_but_not_roles() -> None:
    same = prompt_key([{"role": "user", "content": "Where is  my invoice?"}])
    assert same == prompt_key([{"role": "user", "content": "where is my invoice"}])
    assert same != prompt_key([{"role": "system", "content": "where is my invoice"}])
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert prompt_key(parts) == prompt_key(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    )


def test_prompt_messages_from_both_endpoints() -> None:
    chat = {"messages": [{"role": "user", "content": "x"}]}
    assert prompt_messages("chat", chat) == chat["messages"]
    assert prompt_messages("text", {"prompt": ["2+2="]}) == [{"role": "user", "content": "2+2="}]
    assert prompt_messages("chat", None) is None
    assert prompt_messages("chat", {"messages": ["not a dict"]}) is None
