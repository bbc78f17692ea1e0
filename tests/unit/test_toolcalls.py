from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.agreement import Agreement
from gateway.core.outputs import Output, ToolCall
from gateway.core.toolcalls import compare_structured


def calls(*pairs: tuple[str, str]) -> Output:
    return Output(tool_calls=tuple(ToolCall(name, arguments) for name, arguments in pairs))


def compare(teacher: Output, student: Output, threshold: float = 1.0) -> Agreement:
    result = compare_structured(teacher, student, threshold)
    assert result is not None
    orjson.dumps(result.detail)  # always storable
    return result


# --- kinds -------------------------------------------------------------------------------------


def test_two_texts_are_left_to_the_routes_comparator() -> None:
    assert compare_structured(Output(text="a"), Output(text="b"), 1.0) is None
    assert compare_structured(Output(), Output(text=""), 0.0) is None


@pytest.mark.parametrize(
    ("teacher", "student", "kinds"),
    [
        (Output(text="42"), calls(("lookup", "{}")), ("text", "tool_calls")),
        (calls(("lookup", "{}")), Output(text="42"), ("tool_calls", "text")),
        (Output(refusal="no"), Output(text="sure"), ("refusal", "text")),
        (Output(text="sure"), Output(refusal="no"), ("text", "refusal")),
        (Output(refusal="no"), calls(("lookup", "{}")), ("refusal", "tool_calls")),
    ],
)
def test_different_kinds_disagree_whatever_the_threshold(
    teacher: Output, student: Output, kinds: tuple[str, str]
) -> None:
    result = compare(teacher, student, threshold=0.0)
    expected = {"teacher": kinds[0], "student": kinds[1]}
    assert result == Agreement(0.0, False, "answer_kind_mismatch", expected)


def test_two_refusals_agree_whatever_they_say() -> None:
    result = compare(Output(refusal="I can't help."), Output(refusal="No.", text="sorry"))
    assert result == Agreement(1.0, True, None, {"kind": "refusal"})


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_a_threshold_out_of_range_is_a_configuration_error(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        compare_structured(Output(text="a"), Output(text="a"), threshold)


# --- tool calls: matching ----------------------------------------------------------------------


def test_identical_calls_agree() -> None:
    result = compare(
        calls(("get_weather", '{"city": "Paris"}')), calls(("get_weather", '{"city": "Paris"}'))
    )
    assert result == Agreement(
        1.0,
        True,
        None,
        {"calls": [{"name": "get_weather", "agree": True}], "missing": [], "extra": []},
    )


def test_parallel_calls_in_another_order_agree() -> None:
    teacher = calls(("a", '{"x": 1}'), ("b", '{"y": 2}'), ("a", '{"x": 2}'))
    student = calls(("a", '{"x": 2}'), ("b", '{"y": 2}'), ("a", '{"x": 1}'))
    result = compare(teacher, student)
    assert (result.score, result.agree, result.reason) == (1.0, True, None)
    assert [entry["agree"] for entry in result.detail["calls"]] == [True, True, True]  # type: ignore[index]


def test_key_order_and_whitespace_in_arguments_are_ignored() -> None:
    teacher = calls(("f", '{"a": 1, "b": {"c": [1, 2], "d": "x"}}'))
    student = calls(("f", '\n{ "b":{"d":"x","c":[1,2]},\n  "a":1 }  '))
    assert compare(teacher, student).agree


def test_numbers_compare_by_value_but_booleans_are_not_numbers() -> None:
    assert compare(calls(("f", '{"n": 1}')), calls(("f", '{"n": 1.0}'))).agree
    assert compare(calls(("f", '{"n": [1e2]}')), calls(("f", '{"n": [100]}'))).agree
    assert not compare(calls(("f", '{"n": true}')), calls(("f", '{"n": 1}'))).agree
    assert not compare(calls(("f", '{"n": "1"}')), calls(("f", '{"n": 1}'))).agree
    assert not compare(calls(("f", '{"n": null}')), calls(("f", '{"n": false}'))).agree
    assert not compare(calls(("f", '{"n": 0}')), calls(("f", '{"n": false}'))).agree


def test_blank_arguments_count_as_an_empty_object() -> None:
    assert compare(calls(("now", "")), calls(("now", "{}"))).agree
    assert compare(calls(("now", "  ")), calls(("now", ""))).agree


def test_a_differing_argument_is_named_in_the_detail() -> None:
    teacher = calls(("book", '{"city": "Paris", "nights": 2, "guests": 1}'))
    student = calls(("book", '{"nights": 3, "city": "Paris", "pets": true}'))
    result = compare(teacher, student)
    assert (result.score, result.agree, result.reason) == (0.0, False, "tool_arguments_mismatch")
    assert result.detail == {
        "calls": [
            {
                "name": "book",
                "agree": False,
                "arguments": {
                    "city": {"teacher": "Paris", "student": "Paris", "agree": True},
                    "nights": {"teacher": 2, "student": 3, "agree": False},
                    "guests": {
                        "teacher": 1,
                        "student": None,
                        "agree": False,
                        "missing": ["student"],
                    },
                    "pets": {
                        "teacher": None,
                        "student": True,
                        "agree": False,
                        "missing": ["teacher"],
                    },
                },
            }
        ],
        "missing": [],
        "extra": [],
    }


def test_non_object_arguments_are_compared_whole() -> None:
    assert compare(calls(("f", "[1, 2]")), calls(("f", "[1.0, 2]"))).agree
    result = compare(calls(("f", "[1, 2]")), calls(("f", '{"a": 1}')))
    assert result.detail is not None
    assert result.detail["calls"] == [
        {"name": "f", "agree": False, "teacher": [1, 2], "student": {"a": 1}}
    ]


def test_missing_and_extra_calls() -> None:
    teacher = calls(("search", '{"q": "x"}'), ("fetch", '{"id": 1}'))
    student = calls(("search", '{"q": "x"}'), ("delete", '{"id": 1}'), ("delete", "{}"))
    result = compare(teacher, student)
    assert result.score == pytest.approx(1 / 3)
    assert (result.agree, result.reason) == (False, "tool_name_mismatch")
    assert result.detail == {
        "calls": [{"name": "search", "agree": True}],
        "missing": ["fetch"],
        "extra": ["delete", "delete"],
    }


def test_a_missing_call_of_a_name_that_is_also_called_correctly() -> None:
    teacher = calls(("a", '{"x": 1}'), ("a", '{"x": 2}'))
    result = compare(teacher, calls(("a", '{"x": 2}')))
    assert (result.score, result.reason) == (0.5, "tool_name_mismatch")
    assert result.detail == {
        "calls": [{"name": "a", "agree": True}],
        "missing": ["a"],
        "extra": [],
    }


def test_a_wrong_tool_is_a_name_mismatch() -> None:
    result = compare(
        calls(("get_weather", '{"city": "Paris"}')), calls(("get_time", '{"city": "Paris"}'))
    )
    assert (result.score, result.agree, result.reason) == (0.0, False, "tool_name_mismatch")
    assert result.detail == {"calls": [], "missing": ["get_weather"], "extra": ["get_time"]}


def test_unmatched_calls_are_paired_by_name_to_explain_them() -> None:
    teacher = calls(("a", '{"x": 1}'), ("b", '{"y": 1}'), ("a", '{"x": 3}'))
    student = calls(("a", '{"x": 2}'), ("b", '{"y": 1}'), ("a", '{"x": 4}'))
    result = compare(teacher, student)
    assert result.score == pytest.approx(1 / 3)
    assert result.reason == "tool_arguments_mismatch"
    assert result.detail is not None
    assert [(c["name"], c["agree"]) for c in result.detail["calls"]] == [
        ("a", False),
        ("b", True),
        ("a", False),
    ]
    first, _, last = result.detail["calls"]
    assert first["arguments"]["x"] == {"teacher": 1, "student": 2, "agree": False}
    assert last["arguments"]["x"] == {"teacher": 3, "student": 4, "agree": False}


# --- tool calls: arguments that are not JSON ----------------------------------------------------


def test_invalid_arguments_on_both_sides_compare_as_stripped_text() -> None:
    result = compare(calls(("f", " {city: Paris} ")), calls(("f", "{city: Paris}\n")))
    assert result.agree
    assert result.detail is not None
    assert result.detail["calls"] == [
        {
            "name": "f",
            "agree": True,
            "teacher_invalid_arguments": True,
            "student_invalid_arguments": True,
        }
    ]
    assert not compare(calls(("f", "{city: Paris}")), calls(("f", "{city:Paris}"))).agree


def test_student_arguments_that_do_not_parse_are_a_mismatch() -> None:
    result = compare(calls(("f", '{"city": "Paris"}')), calls(("f", '{"city": "Paris"')))
    assert (result.score, result.agree, result.reason) == (0.0, False, "tool_arguments_mismatch")
    assert result.detail is not None
    assert result.detail["calls"] == [
        {
            "name": "f",
            "agree": False,
            "student_invalid_arguments": True,
            "teacher": {"city": "Paris"},
            "student": '{"city": "Paris"',
        }
    ]


def test_teacher_arguments_that_do_not_parse_match_no_parsed_student_call() -> None:
    # '"x"' is the raw text of the teacher's call, but parsed it is the string x: no match
    result = compare(calls(("f", "x")), calls(("f", '"x"')))
    assert not result.agree
    assert result.detail is not None
    (entry,) = result.detail["calls"]
    assert entry["teacher_invalid_arguments"] is True
    assert "student_invalid_arguments" not in entry
    assert (entry["teacher"], entry["student"]) == ("x", "x")


def test_fenced_arguments_are_unwrapped_like_any_json_answer() -> None:
    assert compare(calls(("f", '{"a": 1}')), calls(("f", '```json\n{"a": 1}\n```'))).agree


# --- thresholds --------------------------------------------------------------------------------


def test_partial_matches_against_a_threshold_below_one() -> None:
    teacher = calls(("a", "{}"), ("b", "{}"), ("c", "{}"), ("d", '{"x": 1}'))
    student = calls(("d", '{"x": 2}'), ("c", "{}"), ("b", "{}"), ("a", "{}"))
    assert compare(teacher, student, threshold=0.75) == Agreement(
        0.75,
        True,
        None,
        compare(teacher, student).detail,
    )
    below = compare(teacher, student, threshold=0.8)
    assert (below.score, below.agree, below.reason) == (0.75, False, "tool_arguments_mismatch")
    nothing = compare(calls(("a", "{}")), calls(("b", "{}")), threshold=0.0)
    assert (nothing.score, nothing.agree, nothing.reason) == (0.0, True, None)


# --- bounds ------------------------------------------------------------------------------------


def test_huge_inputs_give_a_bounded_detail() -> None:
    big = "y" * 100_000
    many_arguments = orjson.dumps({f"k{i}": i for i in range(5_000)}).decode()
    teacher = calls(
        *[("same", f'{{"i": {i}}}') for i in range(2_000)],
        *[("f" * 10_000, f'{{"big": "{big}"}}') for _ in range(50)],
        *[("wide", many_arguments) for _ in range(50)],
        *[("gone\x00" + str(i), "{}") for i in range(100)],
    )
    student = calls(
        *[("same", f'{{"i": {i}}}') for i in reversed(range(2_000))],
        *[("f" * 10_000, f'{{"big": "{big}!"}}') for _ in range(50)],
        *[("wide", "{}") for _ in range(50)],
        *[("new", "{}") for _ in range(100)],
    )
    result = compare(teacher, student)  # (tests assert no wall-clock times: bench/ does)
    assert result.score == pytest.approx(2_000 / 2_200)
    detail: dict[str, Any] = result.detail  # type: ignore[assignment]
    assert len(orjson.dumps(detail)) < 200_000
    assert b"\\u0000" not in orjson.dumps(detail)
    assert len(detail["calls"]) == 20
    assert all(not entry["agree"] for entry in detail["calls"])  # mismatches are kept first
    assert detail["calls_omitted"] == 2_100 - 20
    assert (len(detail["missing"]), detail["missing_omitted"]) == (20, 80)
    assert (len(detail["extra"]), detail["extra_omitted"]) == (20, 80)
    reported = sum(len(entry.get("arguments", {})) for entry in detail["calls"])
    assert reported <= 64
    assert all(len(entry["name"]) <= 512 for entry in detail["calls"])


def test_many_arguments_report_the_differing_ones_first() -> None:
    teacher = {f"k{i:03}": i for i in range(100)}
    student = {**teacher, "k050": "changed", "k099": None}
    result = compare(
        calls(("f", orjson.dumps(teacher).decode())), calls(("f", orjson.dumps(student).decode()))
    )
    assert result.detail is not None
    (entry,) = result.detail["calls"]
    assert len(entry["arguments"]) == 16
    assert entry["arguments_omitted"] == 84
    assert not entry["arguments"]["k050"]["agree"]
    assert not entry["arguments"]["k099"]["agree"]


def test_deep_nesting_does_not_hit_the_recursion_limit() -> None:
    deep = "[" * 1000 + "]" * 1000  # the deepest orjson parses
    deeper = "[" * 1000 + "1" + "]" * 1000
    assert compare(calls(("f", deep)), calls(("f", deep))).agree
    result = compare(calls(("f", deep)), calls(("f", deeper)))
    assert not result.agree
    too_deep = "[" * 5000 + "]" * 5000  # not parsed: compared as text
    assert compare(calls(("f", too_deep)), calls(("f", too_deep))).agree


# --- never raises ------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "c", "\x00", "\ud800"]), children, max_size=3)
    ),
    max_leaves=8,
)


def _dump(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits, lone surrogates in keys
        return repr(value)


arguments = (
    json_values.map(_dump)
    | st.text(max_size=20)
    | st.sampled_from(["", "{}", "{", "```json\n{}\n```", "null", "1e400", "\x00"])
)
tool_calls = st.builds(
    ToolCall, name=st.sampled_from(["a", "b", "", "\x00\ud800"]), arguments=arguments
)
outputs = st.builds(
    Output,
    text=st.none() | st.text(max_size=5),
    tool_calls=st.lists(tool_calls, max_size=4).map(tuple),
    refusal=st.none() | st.text(max_size=5),
)


@FUZZ
@given(outputs, outputs, st.floats(min_value=0.0, max_value=1.0))
def test_never_raises_and_scores_stay_in_range(
    teacher: Output, student: Output, threshold: float
) -> None:
    result = compare_structured(teacher, student, threshold)
    if teacher.kind == student.kind == "text":
        assert result is None
        return
    assert result is not None
    assert 0.0 <= result.score <= 1.0
    assert result.agree == (result.score >= threshold and result.reason is None)
    assert b"\\u0000" not in orjson.dumps(result.detail)
    for answer in (teacher, student):
        same = compare_structured(answer, answer, threshold)
        if answer.kind != "text":
            assert same is not None
            assert (same.score, same.agree) == (1.0, True)
