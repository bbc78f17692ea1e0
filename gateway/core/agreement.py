"""How far a student's answer agrees with the teacher's: comparators as pure functions.

A comparator takes ``(teacher_text, student_text)`` and returns an :class:`Agreement`: a score in
[0, 1], a verdict against the comparator's threshold, a machine-friendly reason when they do not
agree, and per-comparator detail (JSON-serialisable, so it can be stored on the request row).

They run in the background on whatever the models said, so they must never raise on their
input: output that cannot be read (invalid JSON, no label, no number) is a *disagreement with a
reason*, because a student that cannot produce the format is exactly what the gateway exists to
catch. Such a failure disagrees whatever the threshold. Scores are always finite and clipped.
Bad configuration (a threshold out of range, a broken regex) raises at factory time instead,
where it stops the process at start-up rather than silently mis-scoring traffic.

The embedding model of :func:`semantic` is injected, so this module stays free of I/O and of
heavy imports; ``gateway.shadow.embeddings`` loads the real one.
"""

from __future__ import annotations

import functools
import math
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

Embed = Callable[[list[str]], list[list[float]]]

# Detail values are stored in Postgres jsonb; keep one huge sub-document from bloating a row.
_MAX_DETAIL_CHARS = 512


@dataclass(frozen=True)
class Agreement:
    """One comparison's outcome; ``reason`` and ``detail`` are what an analyst filters on."""

    score: float
    agree: bool
    reason: str | None = None
    detail: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not (0.0 <= self.score <= 1.0):  # also rejects NaN
            raise ValueError(f"agreement score must lie in [0, 1], got {self.score!r}")


Comparator = Callable[[str, str], Agreement]


def check_threshold(threshold: float) -> float:
    if not (0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
    return float(threshold)


def verdict(
    score: float, threshold: float, reason: str, detail: dict[str, Any] | None = None
) -> Agreement:
    """Score against the threshold; ``reason`` is kept only when they do not agree."""
    score = min(1.0, max(0.0, score)) if math.isfinite(score) else 0.0
    agree = score >= threshold
    return Agreement(score, agree, None if agree else reason, detail)


def _failure(reason: str, detail: dict[str, Any] | None = None) -> Agreement:
    """Unreadable output: a disagreement even under a threshold of 0."""
    return Agreement(0.0, False, reason, detail)


def safe_text(text: str, limit: int = _MAX_DETAIL_CHARS) -> str:
    """Text that jsonb accepts: no NUL, no lone surrogates, bounded length."""
    text = text[:limit].replace("\x00", "")
    return text.encode("utf-8", "replace").decode("utf-8")


# --- text --------------------------------------------------------------------------------------


def exact(threshold: float = 1.0) -> Comparator:
    """Byte-for-byte equal text: for routes whose answers are codes, ids or fixed phrases."""
    threshold = check_threshold(threshold)

    def compare(teacher: str, student: str) -> Agreement:
        return verdict(1.0 if teacher == student else 0.0, threshold, "text_differs")

    return compare


@functools.cache
def _punctuation() -> dict[int, None]:
    """A ``str.translate`` table deleting unicode P* characters: ~0.1 s once, on first use.

    Translating is ~100 times faster than asking ``unicodedata.category`` per character, which
    matters for a megabyte-long answer compared on the event loop.
    """
    return dict.fromkeys(
        code
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)).startswith("P")
    )


def normalize_text(text: str) -> str:
    """Forget what readers do not notice: unicode forms, case, punctuation, spacing."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(text.translate(_punctuation()).split())


def normalized(threshold: float = 1.0) -> Comparator:
    """Equal after :func:`normalize_text`; "Yes." and "yes" agree, "yes" and "no" do not."""
    threshold = check_threshold(threshold)

    def compare(teacher: str, student: str) -> Agreement:
        same = normalize_text(teacher) == normalize_text(student)
        return verdict(1.0 if same else 0.0, threshold, "text_differs")

    return compare


# --- JSON --------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\r?\n?(.*?)```", re.DOTALL)
_MISSING = object()


def parse_json(text: str) -> tuple[bool, Any]:
    """``(ok, document)``; models often wrap JSON in a markdown fence, so that is unwrapped."""
    candidates = [text.strip()]
    fenced = _FENCE.search(text)
    if fenced is not None:
        candidates.append(fenced.group(1).strip())
    for candidate in candidates:
        try:
            return True, orjson.loads(candidate)
        except orjson.JSONDecodeError:  # a ValueError: bad syntax, depth, surrogates, NaN
            continue
    return False, None


def json_equal(left: Any, right: Any) -> tuple[bool, str | None]:
    """Deep equality where numbers compare by value (1 == 1.0) but ``true`` is not ``1``.

    Iterative, so a deeply nested document cannot hit the recursion limit. Returns the dotted
    path of the first difference ("" for the root), which tells an analyst where the student
    went wrong.
    """
    stack: list[tuple[Any, Any, str]] = [(left, right, "")]
    while stack:
        a, b, path = stack.pop()
        if isinstance(a, dict) and isinstance(b, dict):
            if a.keys() != b.keys():
                differing = sorted(str(key) for key in a.keys() ^ b.keys())[0]
                return False, _join(path, differing)
            stack.extend((a[key], b[key], _join(path, str(key))) for key in reversed(list(a)))
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                return False, path
            stack.extend((a[i], b[i], _join(path, str(i))) for i in reversed(range(len(a))))
        elif not _scalar_equal(a, b):
            return False, path
    return True, None


def _scalar_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    return type(a) is type(b) and bool(a == b)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def lookup(document: Any, path: str) -> Any:
    """The value at a dotted path (``items.0.name``), or ``_MISSING``."""
    current = document
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isascii() and part.isdigit() and len(part) < 19:
            index = int(part)
            if index >= len(current):
                return _MISSING
            current = current[index]
        else:
            return _MISSING
    return current


def detail_value(value: Any) -> Any:
    """A parsed JSON value as stored in detail; big or NUL-bearing ones become a preview."""
    if value is _MISSING:
        return None
    try:
        dumped = orjson.dumps(value)
    except TypeError:  # nested deeper than orjson writes
        return "<too deeply nested to store>"
    if len(dumped) <= _MAX_DETAIL_CHARS and b"\\u0000" not in dumped:
        return value
    return safe_text(dumped.decode("utf-8").replace("\\u0000", ""))


def json_fields(fields: Iterable[str] = (), threshold: float = 1.0) -> Comparator:
    """Parse both answers as JSON; compare the whole document, or the share of named fields."""
    threshold = check_threshold(threshold)
    paths = list(dict.fromkeys(fields))
    for path in paths:
        if not isinstance(path, str) or not path or "" in path.split("."):
            raise ValueError(f"json field paths are dotted names like 'a.b.0', got {path!r}")

    def compare(teacher: str, student: str) -> Agreement:
        teacher_ok, teacher_doc = parse_json(teacher)
        if not teacher_ok:
            return _failure("teacher_invalid_json")
        student_ok, student_doc = parse_json(student)
        if not student_ok:
            return _failure("student_invalid_json")
        if not paths:
            same, where = json_equal(teacher_doc, student_doc)
            detail = None if same else {"differs_at": safe_text(where or "")}
            return verdict(1.0 if same else 0.0, threshold, "field_mismatch", detail)
        report: dict[str, Any] = {}
        equal = 0
        for path in paths:
            ours, theirs = lookup(teacher_doc, path), lookup(student_doc, path)
            missing = [
                side for side, v in (("teacher", ours), ("student", theirs)) if v is _MISSING
            ]
            agree = not missing and json_equal(ours, theirs)[0]
            equal += agree
            entry = {
                "teacher": detail_value(ours),
                "student": detail_value(theirs),
                "agree": agree,
            }
            if missing:
                entry["missing"] = missing
            report[path] = entry
        return verdict(equal / len(paths), threshold, "field_mismatch", {"fields": report})

    return compare


# --- labels and numbers ------------------------------------------------------------------------


def label(pattern: str, threshold: float = 1.0, ignore_case: bool = True) -> Comparator:
    """Compare the labels a regex pulls out of each answer (a class, a verdict, a category).

    The label is the group named ``label`` if there is one, else the first group that took part
    in the match, else the whole match; the first match in the text wins. ``ignore_case``
    applies both to matching and to comparing.
    """
    threshold = check_threshold(threshold)
    regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)

    def extract(text: str) -> str | None:
        match = regex.search(text)
        if match is None:
            return None
        if "label" in regex.groupindex and match.group("label") is not None:
            found: str = match.group("label")
        else:
            found = next((g for g in match.groups() if g is not None), match.group(0))
        found = unicodedata.normalize("NFKC", found).strip()
        if ignore_case:
            found = found.casefold()
        return safe_text(found) or None

    def compare(teacher: str, student: str) -> Agreement:
        ours, theirs = extract(teacher), extract(student)
        detail = {"teacher": ours, "student": theirs}
        if ours is None:
            return _failure("teacher_no_label", detail)
        if theirs is None:
            return _failure("student_no_label", detail)
        return verdict(1.0 if ours == theirs else 0.0, threshold, "label_mismatch", detail)

    return compare


# A sign must touch the digits (so a "- 3" list bullet stays positive); a currency symbol may sit
# between them ("-$12"); thousands separators only in groups of three ("1,234.5", not "1,2,3").
_NUMBER = re.compile(
    r"(?P<sign>[-+])?[$€£¥₹]?"
    r"(?P<mantissa>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?P<exponent>[eE][-+]?\d+)?"
)


def first_number(text: str) -> float | None:
    """The first number written in ``text``, or None; full-width digits and U+2212 count."""
    match = _NUMBER.search(unicodedata.normalize("NFKC", text).replace("\u2212", "-"))
    if match is None:
        return None
    sign, mantissa, exponent = match.group("sign", "mantissa", "exponent")
    try:
        # float() reads any unicode decimal digits; a huge literal becomes inf, never an error
        return float(f"{sign or ''}{mantissa.replace(',', '')}{exponent or ''}")
    except ValueError:
        return None


def _number_detail(value: float | None) -> float | str | None:
    return value if value is None or math.isfinite(value) else str(value)


def numeric(abs_tol: float = 0.0, rel_tol: float = 0.0, threshold: float = 1.0) -> Comparator:
    """The first number of each answer, equal within ``math.isclose`` tolerances; score 1/0."""
    threshold = check_threshold(threshold)
    for name, tolerance in (("abs_tol", abs_tol), ("rel_tol", rel_tol)):
        if not (0.0 <= tolerance < math.inf):
            raise ValueError(f"{name} must be a finite number >= 0, got {tolerance!r}")

    def compare(teacher: str, student: str) -> Agreement:
        ours, theirs = first_number(teacher), first_number(student)
        detail = {"teacher": _number_detail(ours), "student": _number_detail(theirs)}
        if ours is None:
            return _failure("teacher_not_a_number", detail)
        if theirs is None:
            return _failure("not_a_number", detail)
        close = math.isclose(ours, theirs, rel_tol=rel_tol, abs_tol=abs_tol)
        return verdict(1.0 if close else 0.0, threshold, "outside_tolerance", detail)

    return compare


# --- semantic and custom -----------------------------------------------------------------------


def _error_text(exc: BaseException) -> str:
    try:
        return safe_text(f"{type(exc).__name__}: {exc}")
    except Exception:  # an exception whose __str__ itself fails
        return type(exc).__name__


def cosine(left: Any, right: Any) -> float | None:
    """Cosine similarity in [-1, 1]; 0 for a zero vector; None for vectors that cannot be used.

    Each vector is scaled by its largest component first, so huge components cannot overflow.
    """
    a, b = [float(x) for x in left], [float(x) for x in right]
    if not a or len(a) != len(b) or not all(math.isfinite(x) for x in a + b):
        return None
    scale_a, scale_b = max(abs(x) for x in a), max(abs(x) for x in b)
    if scale_a == 0.0 or scale_b == 0.0:
        return 0.0
    a, b = [x / scale_a for x in a], [x / scale_b for x in b]
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return max(-1.0, min(1.0, dot / norms))


def semantic(embed: Embed, threshold: float = 0.8) -> Comparator:
    """Cosine similarity of sentence embeddings, for free text that may be worded differently.

    ``embed`` maps a batch of texts to vectors; a failing or malformed embedding is a
    disagreement with reason ``embed_error``, not an exception in the shadow pipeline.
    """
    threshold = check_threshold(threshold)

    def compare(teacher: str, student: str) -> Agreement:
        if teacher == student:  # no need to run a model to know that
            return verdict(1.0, threshold, "below_threshold", {"cosine": 1.0})
        try:
            vectors = embed([teacher, student])
            similarity = cosine(vectors[0], vectors[1])
        except Exception as exc:
            return _failure("embed_error", {"error": _error_text(exc)})
        if similarity is None:
            return _failure("embed_error", {"error": "embeddings are empty, unequal or not finite"})
        return verdict(similarity, threshold, "below_threshold", {"cosine": similarity})

    return compare


def _custom_result(result: object, threshold: float) -> Agreement:
    if isinstance(result, Agreement):
        detail_ok = result.detail is None or isinstance(result.detail, dict)
        if detail_ok and result.detail is not None:
            try:
                orjson.dumps(result.detail)
            except TypeError:
                detail_ok = False
        if detail_ok and isinstance(result.agree, bool) and isinstance(result.reason, str | None):
            return result
        return _failure("custom_error", {"error": "returned an Agreement that cannot be stored"})
    reason: object = None
    if isinstance(result, tuple) and len(result) == 2:
        result, reason = result
    if isinstance(result, bool | int | float) and isinstance(reason, str | None):
        if math.isnan(result):
            return _failure("custom_error", {"error": "returned a score that is NaN"})
        return verdict(float(result), threshold, safe_text(reason or "below_threshold"))
    shape = type(result).__name__ if reason is None else f"({type(result).__name__}, ...)"
    return _failure(
        "custom_error",
        {"error": f"returned {shape}; expected a float, a bool, (score, reason) or Agreement"},
    )


def custom(function: Callable[[str, str], object], threshold: float = 1.0) -> Comparator:
    """A user's own ``function(teacher, student)``, made as safe as the built-in comparators.

    It may return a score in [0, 1], a bool, a ``(score, reason)`` tuple or an
    :class:`Agreement`; anything else, or an exception, is a disagreement with reason
    ``custom_error`` and the message in the detail, so a buggy plug-in cannot break the pipeline.
    """
    threshold = check_threshold(threshold)

    def compare(teacher: str, student: str) -> Agreement:
        try:
            # reading the result can fail too: float(10**400) overflows
            return _custom_result(function(teacher, student), threshold)
        except Exception as exc:
            return _failure("custom_error", {"error": _error_text(exc)})

    return compare
