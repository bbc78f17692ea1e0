"""Agreement for answers that are not both plain text: tool calls and refusals.

:func:`compare_structured` takes the teacher's and the student's :class:`Output` and returns
``None`` when both are text (the route's own comparator decides those), otherwise an
:class:`Agreement`:

- different kinds (text, tool calls, refusal) disagree whatever the threshold, with reason
  ``answer_kind_mismatch``;
- two refusals agree: both declined, and the wording of a refusal is not compared;
- two sets of tool calls score ``exact matches / max(teacher calls, student calls)``. A match is
  the same name with equal arguments: parsed JSON compared by value (key order and spacing
  ignored, ``1 == 1.0``, ``true != 1``). The order of parallel calls is ignored. Arguments that
  are not JSON are compared as stripped text and flagged in the detail, so a student whose
  arguments do not parse never matches a teacher whose arguments do. Blank arguments count as
  ``{}``: a call without arguments arrives as ``""`` from some servers and ``"{}"`` from others.

Like every comparator it never raises on what the models said; only a threshold outside [0, 1]
raises (``ValueError``), which is configuration. The detail is JSON-serialisable and bounded:
values and names go through :func:`agreement.detail_value` / :func:`agreement.safe_text`, and
only so many calls, names and arguments are listed, with counts of the rest.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from typing import Any

from gateway.core.agreement import (
    Agreement,
    check_threshold,
    detail_value,
    json_equal,
    parse_json,
    safe_text,
    verdict,
)
from gateway.core.outputs import Output

# Bounds on the detail, which is stored on the request row: a model that emits thousands of
# calls, or calls with thousands of arguments, must not bloat it.
_MAX_DETAIL_CALLS = 20  # entries in "calls", and names in each of "missing" and "extra"
_MAX_CALL_ARGUMENTS = 16  # arguments reported for one mismatched call
_MAX_DETAIL_ARGUMENTS = 64  # arguments reported across all calls

CallKey = tuple[str, tuple[object, ...]]


@dataclass(frozen=True)
class _Call:
    """A tool call read once: its parsed arguments (or stripped raw text) and its match key."""

    name: str
    valid: bool
    arguments: Any
    key: CallKey


def compare_structured(teacher: Output, student: Output, threshold: float) -> Agreement | None:
    """Compare two answers unless both are plain text (then ``None``); see the module doc."""
    threshold = check_threshold(threshold)
    teacher_kind, student_kind = teacher.kind, student.kind
    if teacher_kind == student_kind == "text":
        return None
    if teacher_kind != student_kind:
        detail = {"teacher": teacher_kind, "student": student_kind}
        return Agreement(0.0, False, "answer_kind_mismatch", detail)
    if teacher_kind == "refusal":
        return Agreement(1.0, True, None, {"kind": "refusal"})
    return _compare_calls(
        [_read(c.name, c.arguments) for c in teacher.tool_calls],
        [_read(c.name, c.arguments) for c in student.tool_calls],
        threshold,
    )


def _read(name: str, arguments: str) -> _Call:
    text = arguments.strip()
    if not text:
        return _Call(name, True, {}, (name, _canonical({})))
    ok, document = parse_json(text)
    if ok:
        return _Call(name, True, document, (name, _canonical(document)))
    # the ("raw", ...) token never occurs in a canonical form, so raw text matches only raw text
    return _Call(name, False, text, (name, (("raw", text),)))


def _canonical(document: Any) -> tuple[object, ...]:
    """A hashable form that is equal exactly when :func:`json_equal` says the documents are.

    Python compares and hashes ``1`` and ``1.0`` alike, so numbers need no normalising; the
    type tags keep ``true`` apart from ``1`` and ``"1"``. The form is a flat pre-order token
    list with container sizes (unambiguous), built with a stack so that no nesting depth can
    hit the recursion limit. Hashing it makes matching linear instead of comparing every pair.
    """
    tokens: list[object] = []
    stack: list[tuple[bool, Any]] = [(False, document)]
    while stack:
        is_token, value = stack.pop()
        if is_token:
            tokens.append(value)
        elif isinstance(value, dict):
            tokens.append(("{", len(value)))
            for key in sorted(value, reverse=True):
                stack.append((False, value[key]))
                stack.append((True, ("k", key)))
        elif isinstance(value, list):
            tokens.append(("[", len(value)))
            stack.extend((False, item) for item in reversed(value))
        elif isinstance(value, bool):
            tokens.append(("b", value))
        elif isinstance(value, int | float):
            tokens.append(("n", value))
        elif isinstance(value, str):
            tokens.append(("s", value))
        else:
            tokens.append(("z", None))  # null: the only other thing orjson parses to
    return tuple(tokens)


def _compare_calls(teachers: list[_Call], students: list[_Call], threshold: float) -> Agreement:
    # Exact matching is equality of keys, an equivalence, so pairing each teacher call with
    # the first unused equal student call already gives the largest number of matches.
    unused: defaultdict[CallKey, deque[int]] = defaultdict(deque)
    for index, call in enumerate(students):
        unused[call.key].append(index)
    partner: list[int | None] = []
    for call in teachers:
        waiting = unused.get(call.key)
        partner.append(waiting.popleft() if waiting else None)
    matches = sum(index is not None for index in partner)
    student_matched = {index for index in partner if index is not None}

    # What is left is paired by name, in order, only to explain the difference.
    by_name: defaultdict[str, deque[int]] = defaultdict(deque)
    for index, call in enumerate(students):
        if index not in student_matched:
            by_name[call.name].append(index)
    pairs: list[tuple[int, int, bool]] = []  # (teacher, student, exact match)
    missing: list[str] = []
    for index, call in enumerate(teachers):
        exact_partner = partner[index]
        if exact_partner is not None:
            pairs.append((index, exact_partner, True))
        elif by_name.get(call.name):
            pairs.append((index, by_name[call.name].popleft(), False))
        else:
            missing.append(call.name)
    extra_order = sorted(i for waiting in by_name.values() for i in waiting)
    extra = [students[i].name for i in extra_order]

    detail = _detail(teachers, students, pairs, missing, extra)
    score = matches / max(len(teachers), len(students))
    names_differ = Counter(c.name for c in teachers) != Counter(c.name for c in students)
    reason = "tool_name_mismatch" if names_differ else "tool_arguments_mismatch"
    return verdict(score, threshold, reason, detail)


def _detail(
    teachers: list[_Call],
    students: list[_Call],
    pairs: list[tuple[int, int, bool]],
    missing: list[str],
    extra: list[str],
) -> dict[str, Any]:
    # Past the cap, mismatched pairs are kept before matched ones: they are what an analyst
    # looks for. The kept entries stay in the teacher's order.
    kept = sorted(range(len(pairs)), key=lambda n: (pairs[n][2], n))[:_MAX_DETAIL_CALLS]
    budget = _MAX_DETAIL_ARGUMENTS
    calls: list[dict[str, Any]] = []
    for n in sorted(kept):
        teacher_index, student_index, exact = pairs[n]
        entry, used = _call_entry(teachers[teacher_index], students[student_index], exact, budget)
        budget -= used
        calls.append(entry)
    detail: dict[str, Any] = {"calls": calls}
    if len(pairs) > len(kept):
        detail["calls_omitted"] = len(pairs) - len(kept)
    for field, names in (("missing", missing), ("extra", extra)):
        detail[field] = [safe_text(name) for name in names[:_MAX_DETAIL_CALLS]]
        if len(names) > _MAX_DETAIL_CALLS:
            detail[f"{field}_omitted"] = len(names) - _MAX_DETAIL_CALLS
    return detail


def _call_entry(
    teacher: _Call, student: _Call, exact: bool, budget: int
) -> tuple[dict[str, Any], int]:
    """One pair's report and how many arguments it used of the detail's budget."""
    entry: dict[str, Any] = {"name": safe_text(teacher.name), "agree": exact}
    if not teacher.valid:
        entry["teacher_invalid_arguments"] = True
    if not student.valid:
        entry["student_invalid_arguments"] = True
    if exact:
        return entry, 0
    objects = isinstance(teacher.arguments, dict) and isinstance(student.arguments, dict)
    if not (teacher.valid and student.valid and objects):
        # unreadable or not an object: compared whole, so reported whole
        entry["teacher"] = _whole(teacher)
        entry["student"] = _whole(student)
        return entry, 0
    report, omitted = _argument_report(
        teacher.arguments, student.arguments, min(budget, _MAX_CALL_ARGUMENTS)
    )
    entry["arguments"] = report
    if omitted:
        entry["arguments_omitted"] = omitted
    return entry, len(report)


def _whole(call: _Call) -> Any:
    return detail_value(call.arguments) if call.valid else safe_text(call.arguments)


def _argument_report(
    teacher: dict[str, Any], student: dict[str, Any], limit: int
) -> tuple[dict[str, Any], int]:
    """Per top-level argument, as ``json_fields`` reports fields; past ``limit``, differing
    arguments are kept before equal ones (the report stays in argument order)."""
    keys = list(dict.fromkeys([*teacher, *student]))
    agrees = [
        key in teacher and key in student and json_equal(teacher[key], student[key])[0]
        for key in keys
    ]
    kept = sorted(sorted(range(len(keys)), key=lambda n: (agrees[n], n))[: max(limit, 0)])
    report: dict[str, Any] = {}
    for n in kept:
        key = keys[n]
        entry: dict[str, Any] = {
            "teacher": detail_value(teacher[key]) if key in teacher else None,
            "student": detail_value(student[key]) if key in student else None,
            "agree": agrees[n],
        }
        absent = [
            side for side, doc in (("teacher", teacher), ("student", student)) if key not in doc
        ]
        if absent:
            entry["missing"] = absent
        report[safe_text(key)] = entry
    return report, len(keys) - len(kept)
