from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable

import orjson
import pytest

from gateway.core.agreement import (
    Agreement,
    Comparator,
    cosine,
    custom,
    exact,
    first_number,
    json_equal,
    json_fields,
    label,
    normalize_text,
    normalized,
    numeric,
    semantic,
)

# --- exact and normalized ----------------------------------------------------------------------


def test_exact_is_byte_for_byte() -> None:
    compare = exact()
    assert compare("Paris", "Paris") == Agreement(1.0, True, None, None)
    differs = compare("Paris", "paris")
    assert (differs.score, differs.agree, differs.reason) == (0.0, False, "text_differs")
    assert not compare("Paris", "Paris ").agree
    assert compare("", "").agree


def test_exact_threshold_zero_agrees_with_anything() -> None:
    assert exact(threshold=0.0)("a", "b").agree


@pytest.mark.parametrize(
    ("teacher", "student"),
    [
        ("Yes.", "yes"),
        ("  Hello,   World!  ", "hello world"),
        ("Hello\n\tworld", "hello world"),
        (
            "\uff21\uff22\uff23 \uff11\uff12\uff13",
            "abc 123",
        ),  # full-width letters and digits (NFKC)
        ("ﬁnance", "finance"),  # ligature
        ("café", "cafe\u0301"),  # composed vs combining accent
        ("STRASSE", "straße"),  # casefold, not lower
        ("«Bonjour» — dit-il…", "bonjour ditil"),  # unicode punctuation is stripped
        ("It's", "Its"),
        ("¿Qué?", "qué"),
    ],
)
def test_normalized_agrees_on_what_readers_do_not_notice(teacher: str, student: str) -> None:
    assert normalized()(teacher, student) == Agreement(1.0, True, None, None)


@pytest.mark.parametrize(
    ("teacher", "student"),
    [
        ("yes", "no"),
        ("café", "cafe"),  # an accent is a different letter
        ("$12", "12"),  # symbols (Sc) are not punctuation
        ("a b", "ab"),
        ("1", "\uff11\uff11"),
    ],
)
def test_normalized_keeps_what_changes_meaning(teacher: str, student: str) -> None:
    found = normalized()(teacher, student)
    assert (found.score, found.agree, found.reason) == (0.0, False, "text_differs")


def test_normalize_text_output() -> None:
    assert normalize_text("  \uff28\uff45\uff4c\uff4c\uff4f,\u00a0WORLD!! ") == "hello world"
    assert normalize_text("") == ""
    assert normalize_text("...!?") == ""


# --- json --------------------------------------------------------------------------------------


def test_json_whole_document_ignores_key_order_spacing_and_int_vs_float() -> None:
    compare = json_fields()
    found = compare('{"a": 1, "b": [1, 2.5], "c": null}', '  {"c":null,"b":[1.0,2.5],"a":1.0}\n')
    assert found == Agreement(1.0, True, None, None)


def test_json_whole_document_reports_where_it_differs() -> None:
    found = json_fields()('{"a": {"b": [1, 2]}}', '{"a": {"b": [1, 3]}}')
    assert (found.score, found.agree, found.reason) == (0.0, False, "field_mismatch")
    assert found.detail == {"differs_at": "a.b.1"}
    assert json_fields()('{"a": 1}', '{"a": 1, "z": 2}').detail == {"differs_at": "z"}
    assert json_fields()("[1, 2]", "[1]").detail == {"differs_at": ""}
    odd_key = json_fields()('{"a\\u0000b": 1}', '{"a\\u0000b": 2}')
    assert odd_key.detail == {"differs_at": "ab"}


def test_json_true_is_not_one_and_strings_are_not_numbers() -> None:
    assert json_equal(True, 1) == (False, "")
    assert json_equal(1, True) == (False, "")
    assert json_equal(0, False)[0] is False
    assert json_equal("1", 1)[0] is False
    assert json_equal(None, 0)[0] is False
    assert json_equal({"a": [1]}, {"a": 1})[0] is False
    assert json_equal(1, 1.0) == (True, None)


@pytest.mark.parametrize(
    "student",
    [
        '```json\n{"answer": 42}\n```',
        '```\n{"answer": 42}\n```',
        '  \n```JSON\n  {"answer": 42}  \n```\n ',
        'Here you go:\n```json\n{"answer": 42}\n```\nAnything else?',
        '```json{"answer": 42}```',
    ],
)
def test_json_tolerates_a_fenced_block(student: str) -> None:
    assert json_fields()('{"answer": 42}', student).agree


@pytest.mark.parametrize(
    "broken", ['{"a": 1', "", "   ", "null?", "{'a': 1}", "NaN", "[1e400]", "```"]
)
def test_json_invalid_on_either_side_is_a_disagreement(broken: str) -> None:
    student_side = json_fields()('{"a": 1}', broken)
    assert (student_side.score, student_side.agree) == (0.0, False)
    assert student_side.reason == "student_invalid_json"
    teacher_side = json_fields(["a"])(broken, '{"a": 1}')
    assert teacher_side.reason == "teacher_invalid_json"
    assert not teacher_side.agree


def test_json_invalid_disagrees_even_with_threshold_zero() -> None:
    found = json_fields(threshold=0.0)('{"a": 1}', "not json")
    assert (found.agree, found.reason) == (False, "student_invalid_json")


def test_json_scalars_are_documents() -> None:
    assert json_fields()("42", "42.0").agree
    assert json_fields()('"x"', ' "x" ').agree
    assert not json_fields()("true", "1").agree


def test_json_fields_score_is_the_share_equal_and_each_field_is_reported() -> None:
    teacher = (
        '{"intent": "refund", "order": {"id": 7, "items": [{"name": "pen"}, {"name": "ink"}]}}'
    )
    student = (
        '{"intent": "refund", "order": {"id": 7.0, "items": [{"name": "pen"}, {"name": "cap"}]}}'
    )
    compare = json_fields(["intent", "order.id", "order.items.0.name", "order.items.1.name"])
    found = compare(teacher, student)
    assert found.score == pytest.approx(0.75)
    assert (found.agree, found.reason) == (False, "field_mismatch")
    assert found.detail == {
        "fields": {
            "intent": {"teacher": "refund", "student": "refund", "agree": True},
            "order.id": {"teacher": 7, "student": 7.0, "agree": True},
            "order.items.0.name": {"teacher": "pen", "student": "pen", "agree": True},
            "order.items.1.name": {"teacher": "ink", "student": "cap", "agree": False},
        }
    }
    orjson.dumps(found.detail)


def test_json_fields_threshold_allows_partial_agreement() -> None:
    compare = json_fields(["a", "b"], threshold=0.5)
    found = compare('{"a": 1, "b": 2}', '{"a": 1, "b": 3}')
    assert (found.score, found.agree, found.reason) == (0.5, True, None)
    assert found.detail is not None
    assert found.detail["fields"]["b"]["agree"] is False


def test_json_missing_fields_count_as_unequal() -> None:
    compare = json_fields(["a", "b", "list.5", "a.deeper", "c"])
    found = compare('{"a": 1, "b": null, "list": [0]}', '{"a": 1, "list": [0]}')
    assert found.score == pytest.approx(0.2)
    fields = found.detail["fields"] if found.detail else {}
    assert fields["a"] == {"teacher": 1, "student": 1, "agree": True}
    assert fields["b"] == {"teacher": None, "student": None, "agree": False, "missing": ["student"]}
    assert fields["list.5"]["missing"] == ["teacher", "student"]
    assert fields["a.deeper"]["missing"] == ["teacher", "student"]
    assert fields["c"]["agree"] is False


def test_json_fields_on_non_object_documents() -> None:
    compare = json_fields(["0", "1.x"])
    assert compare('[1, {"x": 2}]', '[1.0, {"x": 2}]').score == 1.0
    assert compare('"text"', '"text"').score == 0.0  # a string has no fields
    assert compare('{"0": 1, "1": {"x": 2}}', '[1, {"x": 2}]').score == 1.0
    assert json_fields(["9" * 5000])("[1]", "[1]").score == 0.0  # no int() digit-limit error


def test_json_fields_nested_values_compare_deeply() -> None:
    compare = json_fields(["order"])
    assert compare('{"order": {"a": [1, 2]}}', '{"order": {"a": [1.0, 2]}}').agree
    assert not compare('{"order": {"a": [1, 2]}}', '{"order": {"a": [2, 1]}}').agree


def test_json_fields_duplicates_count_once_and_bad_paths_are_config_errors() -> None:
    found = json_fields(["a", "a"])('{"a": 1}', '{"a": 1}')
    assert found.detail is not None
    assert list(found.detail["fields"]) == ["a"]
    for bad in ("", "a..b", ".a", "a."):
        with pytest.raises(ValueError, match="dotted"):
            json_fields([bad])
    with pytest.raises(ValueError, match="threshold"):
        json_fields(threshold=1.5)


def test_json_detail_stays_small_and_storable() -> None:
    big = {"blob": "x" * 10_000}
    text = orjson.dumps(big).decode()
    found = json_fields(["blob"])(text, text)
    assert found.agree
    assert found.detail is not None
    stored = found.detail["fields"]["blob"]["teacher"]
    assert isinstance(stored, str)
    assert len(stored) <= 512
    nul = json_fields(["s"])('{"s": "a\\u0000b"}', '{"s": "a\\u0000c"}')
    assert b"\\u0000" not in orjson.dumps(nul.detail)


def test_json_deep_nesting_does_not_recurse() -> None:
    deep = "[" * 1000 + "]" * 1000
    assert json_fields()(deep, deep).agree
    assert json_fields(["0.0.0.0"])(deep, deep).score == 1.0
    too_deep = "[" * 5000 + "]" * 5000
    assert json_fields()(too_deep, too_deep).reason == "teacher_invalid_json"


# --- label -------------------------------------------------------------------------------------


def test_label_first_group_and_case() -> None:
    compare = label(r"sentiment:\s*(\w+)")
    found = compare("Sentiment: Positive", "sentiment:positive.")
    assert found == Agreement(1.0, True, None, {"teacher": "positive", "student": "positive"})
    mismatch = compare("sentiment: positive", "SENTIMENT: negative")
    assert (mismatch.score, mismatch.agree, mismatch.reason) == (0.0, False, "label_mismatch")
    assert mismatch.detail == {"teacher": "positive", "student": "negative"}


def test_label_whole_match_without_groups_and_first_match_wins() -> None:
    compare = label(r"\b(?:positive|negative|neutral)\b")
    assert compare("It is positive, not negative", "POSITIVE").agree
    assert not compare("negative then positive", "positive then negative").agree


def test_label_named_group_and_alternatives() -> None:
    assert label(r"class=(?P<label>\w+)")("class=A", "x class=a").agree
    # the first group that took part in the match
    compare = label(r"yes:(\w+)|no:(\w+)")
    assert compare("no:spam", "no:SPAM").detail == {"teacher": "spam", "student": "spam"}


def test_label_case_sensitive_when_asked() -> None:
    compare = label(r"[A-Za-z]+", ignore_case=False)
    assert not compare("Spam", "spam").agree
    assert compare(" Spam", "Spam ").agree
    assert label(r"[A-Z]+", ignore_case=False)("ok", "OK").reason == "teacher_no_label"


def test_label_unicode_forms_compare_equal() -> None:
    assert label(r"answer:\s*(\S+)")("answer: \uff39\uff25\uff33", "Answer: yes").agree


def test_label_not_found_is_a_disagreement() -> None:
    compare = label(r"label:\s*(\w+)", threshold=0.0)
    student = compare("label: spam", "I cannot decide")
    assert (student.score, student.agree, student.reason) == (0.0, False, "student_no_label")
    assert student.detail == {"teacher": "spam", "student": None}
    assert compare("no idea", "label: spam").reason == "teacher_no_label"
    # an empty capture is no label either
    assert label(r"label:(\w*)")("label:a", "label:").reason == "student_no_label"


def test_label_bad_pattern_fails_at_build_time() -> None:
    with pytest.raises(re.error):
        label("(unclosed")


# --- numeric -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("42", 42.0),
        ("The total is 1,234.5 dollars", 1234.5),
        ("-3 degrees", -3.0),
        ("+7", 7.0),
        ("1e-3", 0.001),
        ("6.02E23 atoms", 6.02e23),
        ("$12", 12.0),
        ("-$7.50", -7.5),
        ("€1,000,000", 1e6),
        ('{"answer": "42"}', 42.0),
        ('"\\"42\\""', 42.0),
        (".5", 0.5),
        ("\uff11\uff12\uff13", 123.0),  # full-width digits
        ("\u22124", -4.0),  # unicode minus sign
        ("- 3 apples", 3.0),  # a list bullet is not a sign
        ("1,2,3", 1.0),  # not thousands groups
        ("It is 12,34", 12.0),
        ("3 eggs", 3.0),
        ("x=5-2", 5.0),
        ("v2", 2.0),
        ("٣", 3.0),  # Arabic-Indic digit
    ],
)
def test_first_number(text: str, number: float) -> None:
    assert first_number(text) == pytest.approx(number)


@pytest.mark.parametrize("text", ["", "no digits here", "-", "$", ".", "e", "-.", "+$", "1e"[1:]])
def test_first_number_none(text: str) -> None:
    assert first_number(text) is None


def test_first_number_huge_is_infinite_not_an_error() -> None:
    assert first_number("9" * 400) == math.inf
    assert first_number("1e999999999999") == math.inf


def test_numeric_exact_by_default() -> None:
    compare = numeric()
    assert compare("The answer is 42.", '{"answer": "42.0"}') == Agreement(
        1.0, True, None, {"teacher": 42.0, "student": 42.0}
    )
    differs = compare("42", "43")
    assert (differs.score, differs.agree, differs.reason) == (0.0, False, "outside_tolerance")
    assert differs.detail == {"teacher": 42.0, "student": 43.0}


def test_numeric_absolute_tolerance() -> None:
    compare = numeric(abs_tol=0.5)
    assert compare("10", "10.5").agree
    assert compare("10", "9.5").agree
    assert not compare("10", "10.51").agree


def test_numeric_relative_tolerance() -> None:
    compare = numeric(rel_tol=0.01)
    assert compare("1,000", "1009").agree
    assert not compare("1,000", "1011").agree
    assert not compare("0", "0.0001").agree  # rel_tol alone never forgives a zero
    assert numeric(abs_tol=1e-3, rel_tol=0.01)("0", "0.0001").agree


def test_numeric_no_number_is_a_disagreement() -> None:
    compare = numeric(abs_tol=100, threshold=0.0)
    student = compare("12", "I don't know")
    assert (student.score, student.agree, student.reason) == (0.0, False, "not_a_number")
    assert student.detail == {"teacher": 12.0, "student": None}
    assert compare("n/a", "12").reason == "teacher_not_a_number"


def test_numeric_infinite_values_are_storable() -> None:
    found = numeric()("9" * 400, "9" * 401)
    assert found.agree
    assert found.detail == {"teacher": "inf", "student": "inf"}
    orjson.dumps(found.detail)


def test_numeric_rejects_bad_tolerances() -> None:
    for kwargs in ({"abs_tol": -1.0}, {"rel_tol": math.nan}, {"abs_tol": math.inf}):
        with pytest.raises(ValueError, match="tol"):
            numeric(**kwargs)


# --- semantic ----------------------------------------------------------------------------------

_VOCABULARY = ["invoice", "bill", "overdue", "late", "past", "due", "cats", "like", "the", "is"]


def bag_of_words(texts: list[str]) -> list[list[float]]:
    """A fake embedding: word counts over a tiny vocabulary (unknown words are ignored)."""
    vectors = []
    for text in texts:
        counts = Counter(re.findall(r"\w+", text.casefold()))
        vectors.append([float(counts[word]) for word in _VOCABULARY])
    return vectors


def test_semantic_scores_cosine() -> None:
    compare = semantic(bag_of_words, threshold=0.5)
    near = compare("the invoice is overdue", "the invoice is late")
    assert near.score == pytest.approx(0.75)
    assert (near.agree, near.reason) == (True, None)
    assert near.detail == {"cosine": pytest.approx(0.75)}
    far = compare("invoice overdue", "like cats")
    assert (far.score, far.agree, far.reason) == (0.0, False, "below_threshold")


def test_semantic_identical_text_skips_the_model() -> None:
    def explode(texts: list[str]) -> list[list[float]]:
        raise AssertionError("should not be called")

    assert semantic(explode)("same", "same") == Agreement(1.0, True, None, {"cosine": 1.0})


def test_semantic_negative_cosine_is_clipped_to_zero() -> None:
    found = semantic(lambda texts: [[1.0, 0.0], [-1.0, 0.0]])("a", "b")
    assert found.score == 0.0
    assert found.detail == {"cosine": -1.0}


def test_semantic_zero_vector_scores_zero() -> None:
    found = semantic(bag_of_words)("!!!", "the invoice")
    assert (found.score, found.agree, found.reason) == (0.0, False, "below_threshold")


@pytest.mark.parametrize(
    "vectors",
    [
        [],
        [[1.0]],
        [[1.0, 2.0], [1.0]],
        [[], []],
        [[math.nan, 1.0], [1.0, 1.0]],
        [[math.inf, 1.0], [1.0, 1.0]],
        [["a"], ["b"]],
        None,
    ],
)
def test_semantic_bad_embeddings_are_embed_errors(vectors: object) -> None:
    found = semantic(lambda texts: vectors)("a", "b")  # type: ignore[arg-type,return-value]
    assert (found.score, found.agree, found.reason) == (0.0, False, "embed_error")
    assert found.detail is not None
    assert isinstance(found.detail["error"], str)


def test_semantic_embed_raising_is_an_embed_error() -> None:
    def broken(texts: list[str]) -> list[list[float]]:
        raise RuntimeError("model went away")

    found = semantic(broken)("a", "b")
    assert found.reason == "embed_error"
    assert found.detail == {"error": "RuntimeError: model went away"}


def test_cosine_handles_huge_components() -> None:
    assert cosine([1e300, 1e300], [1e300, 1e300]) == pytest.approx(1.0)
    assert cosine([1e-300, 0.0], [1e-300, 0.0]) == pytest.approx(1.0)
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0


# --- custom ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        (1.0, Agreement(1.0, True, None, None)),
        (0.25, Agreement(0.25, False, "below_threshold", None)),
        (1, Agreement(1.0, True, None, None)),
        (True, Agreement(1.0, True, None, None)),
        (False, Agreement(0.0, False, "below_threshold", None)),
        (7.5, Agreement(1.0, True, None, None)),  # clipped
        (-2, Agreement(0.0, False, "below_threshold", None)),
        (math.inf, Agreement(0.0, False, "below_threshold", None)),
        ((0.2, "wrong_currency"), Agreement(0.2, False, "wrong_currency", None)),
        ((1.0, "ignored when agreeing"), Agreement(1.0, True, None, None)),
        ((False, None), Agreement(0.0, False, "below_threshold", None)),
        (
            Agreement(0.4, True, None, {"why": "own verdict"}),
            Agreement(0.4, True, None, {"why": "own verdict"}),
        ),
    ],
)
def test_custom_accepts_each_allowed_shape(returned: object, expected: Agreement) -> None:
    assert custom(lambda teacher, student: returned)("t", "s") == expected


def test_custom_threshold_applies_to_plain_scores() -> None:
    assert custom(lambda t, s: 0.6, threshold=0.5)("t", "s").agree
    assert not custom(lambda t, s: 0.4, threshold=0.5)("t", "s").agree


def test_custom_receives_teacher_then_student() -> None:
    seen: list[tuple[str, str]] = []

    def record(teacher: str, student: str) -> bool:
        seen.append((teacher, student))
        return teacher == student

    assert not custom(record)("T", "S").agree
    assert seen == [("T", "S")]


@pytest.mark.parametrize(
    "returned",
    [
        None,
        "0.9",
        [0.9],
        (0.9,),
        (0.9, "r", "extra"),
        (0.9, 5),
        ("0.9", "r"),
        math.nan,
        (math.nan, "r"),
        10**400,
        {"score": 1},
        Agreement(1.0, True, None, {"not": object()}),
        Agreement(1.0, "yes", None, None),  # type: ignore[arg-type]
    ],
)
def test_custom_other_results_are_custom_errors(returned: object) -> None:
    found = custom(lambda t, s: returned)("t", "s")
    assert (found.score, found.agree, found.reason) == (0.0, False, "custom_error")
    assert found.detail is not None
    assert isinstance(found.detail["error"], str)


def test_custom_exception_becomes_custom_error_with_message() -> None:
    def broken(teacher: str, student: str) -> float:
        raise KeyError("field")

    found = custom(broken, threshold=0.0)("t", "s")
    assert (found.score, found.agree, found.reason) == (0.0, False, "custom_error")
    assert found.detail == {"error": "KeyError: 'field'"}


def test_custom_exception_with_broken_str() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    def broken(teacher: str, student: str) -> float:
        raise Weird

    assert custom(broken)("t", "s").detail == {"error": "Weird"}


def test_custom_building_an_invalid_agreement_is_a_custom_error() -> None:
    found = custom(lambda t, s: Agreement(2.0, True))("t", "s")
    assert found.reason == "custom_error"


# --- the invariants, over odd input ------------------------------------------------------------

WEIRD_STRINGS = [
    "",
    " ",
    "\x00",
    "\ud800",  # a lone surrogate
    "\ud83d\ude00 \U0001f600",
    "\u200b\u200d\ufeff",
    "\uff21\uff22\uff23\uff11\uff12\uff13",
    "\u0301\u0301\u0301",
    "٣٤٥",
    "\u2212∞",
    "NaN",
    "nan inf -inf",
    "Infinity",
    "1e999",
    "-0",
    "0x1F",
    "1,234,567,890,123,456,789,012,345",
    "9" * 5000,
    "```",
    "```json\n",
    '```json\n{"a": 1}',
    "`" * 1000,
    '{"a": 1',
    '{"a": 1}',
    '{"a": {"b": [1, {"c": "\\u0000"}]}}',
    '{"a": "\\ud800"}',
    "[" * 3000,
    "[" * 500 + "]" * 500,
    "{" * 3000,
    '"' * 1001,
    "label: spam",
    "Sentiment: POSITIVE!!!",
    "\n\t\r\x0b\x0c",
    "$-12.5e-3",
    "١٢٣\u066b٤",
    "שלום עולם 42",
    "\U000e0001\U000e0041",
    "".join(chr(c) for c in range(0x20, 0x3000, 7)),
]


def _all_comparators() -> list[Comparator]:
    return [
        exact(),
        normalized(),
        json_fields(),
        json_fields(["a", "a.b.1.c", "0", "x.y"], threshold=0.5),
        label(r"(?:label|sentiment):\s*(\w+)"),
        label(r"\d+"),
        numeric(),
        numeric(abs_tol=1.0, rel_tol=0.1),
        semantic(bag_of_words),
        semantic(lambda texts: [[float(len(t)), 1.0] for t in texts]),
        custom(lambda t, s: len(t) / (len(s) + 1)),
        custom(lambda t, s: (float(t) if t.isdecimal() else 1.0, None)),
        custom(lambda t, s: t[5]),
    ]


def _check(found: Agreement) -> None:
    assert isinstance(found, Agreement)
    assert 0.0 <= found.score <= 1.0
    assert not math.isnan(found.score)
    assert found.agree or found.reason is not None
    orjson.dumps(found.detail)  # storable: no NaN, no lone surrogate, no Python object


def test_no_input_string_raises_and_every_score_is_in_range() -> None:
    comparators = _all_comparators()
    for compare in comparators:
        for teacher in WEIRD_STRINGS:
            for student in WEIRD_STRINGS:
                _check(compare(teacher, student))


def test_megabyte_answers_are_handled() -> None:
    huge = ["a" * 1_000_000, "Hello, world! 1,234 " * 50_000, "[" * 1_000_000, "`" * 1_000_000]
    for compare in _all_comparators():
        for text in huge:
            _check(compare(text, text[:-1]))
            _check(compare("label: 7", text))


def test_every_comparator_agrees_when_the_answers_are_identical() -> None:
    answer = 'label: spam\n```json\n{"a": {"b": [0, {"c": 42}]}, "0": 1, "x": {"y": 2}}\n```'
    for compare in _all_comparators()[:10]:
        assert compare(answer, answer).agree


def test_agreement_rejects_out_of_range_scores() -> None:
    for bad in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError, match="score"):
            Agreement(bad, False)


def test_threshold_out_of_range_fails_at_build_time() -> None:
    factories: list[Callable[..., Comparator]] = [exact, normalized, json_fields, numeric]
    for factory in factories:
        for bad in (-0.01, 1.01, math.nan):
            with pytest.raises(ValueError, match="threshold"):
                factory(threshold=bad)
    with pytest.raises(ValueError, match="threshold"):
        semantic(bag_of_words, threshold=2.0)
    with pytest.raises(ValueError, match="threshold"):
        custom(lambda t, s: 1.0, threshold=-1.0)
    with pytest.raises(ValueError, match="threshold"):
        label("x", threshold=math.nan)
