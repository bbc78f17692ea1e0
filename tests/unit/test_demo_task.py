"""The demo task: generator, exact solver, the teacher's documented bug, the export verifier."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.config import RouteConfig
from gateway.core import verify
from gateway.demo import task
from gateway.demo.stack import route_config
from student_server.demo.evaluate import auroc, eval_set


def request(prompt: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": prompt}]}


def test_the_same_seed_gives_the_same_prompts() -> None:
    assert task.examples(3, 50) == task.examples(3, 50)
    assert task.examples(3, 50) != task.examples(4, 50)
    assert eval_set(5, 3) == eval_set(5, 3)


@pytest.mark.parametrize("style", task.STYLES)
def test_every_style_is_solved_exactly_and_labelled_by_the_route_rules(style: str) -> None:
    rng = random.Random(style)
    for _ in range(500):
        item = task.example(rng, style)
        assert task.solve(item.prompt) == item.answer
        assert task.style_of(item.prompt) == style
        assert task.is_correct(item.prompt, f" {item.answer}\n")


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        ("2024-02-29", "2024-02-29"),
        ("02/29/2024", "2024-02-29"),
        ("February 29th, 2024", "2024-02-29"),
        ("1 March 1999", "1999-03-01"),
        ("March 22nd, 2031", "2031-03-22"),
        ("3 days after 2024-12-30", "2025-01-02"),
        ("1 week before 2024-03-03", "2024-02-25"),
    ],
)
def test_solver_examples(prompt: str, answer: str) -> None:
    assert task.solve(prompt) == answer


@pytest.mark.parametrize("prompt", ["hello", "2023-02-30", "13/01/2024", "Smarch 3, 2024", ""])
def test_what_is_not_a_date_gets_a_refusal(prompt: str) -> None:
    assert task.solve(prompt) is None
    assert task.teacher_answer(prompt) == task.UNREADABLE


def test_ordinals() -> None:
    suffixes = {1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 11: "11th", 12: "12th", 13: "13th"}
    suffixes |= {21: "21st", 22: "22nd", 23: "23rd", 31: "31st"}
    assert {day: task.ordinal(day) for day in suffixes} == suffixes


@pytest.mark.parametrize(
    ("prompt", "buggy", "exact"),
    [
        # every month is 31 days long to the teacher: impossible dates...
        ("2 days after 2023-02-27", "2023-02-29", "2023-03-01"),
        ("1 day after 2024-04-30", "2024-04-31", "2024-05-01"),
        ("5 days before 2024-03-03", "2024-02-29", "2024-02-27"),
        # ... and, past day 31, real dates a few days off
        ("26 days after 2032-04-18", "2032-05-13", "2032-05-14"),
        ("3 weeks after 2023-02-20", "2023-03-10", "2023-03-13"),
    ],
)
def test_the_teachers_documented_bug(prompt: str, buggy: str, exact: str) -> None:
    assert task.teacher_answer(prompt) == buggy
    assert task.solve(prompt) == exact


def test_the_teacher_is_exact_on_easy_styles_and_wrong_on_a_fifth_of_relative() -> None:
    wrong: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for item in task.examples(11, 4000):
        total[item.style] += 1
        wrong[item.style] += task.teacher_answer(item.prompt) != item.answer
    assert wrong["iso"] == wrong["us"] == wrong["written"] == 0
    assert 0.12 < wrong["relative"] / total["relative"] < 0.3


def test_the_verifier_drops_exactly_the_teachers_wrong_answers() -> None:
    checker = verify.function(task.verify_answer)
    checks: Counter[str | None] = Counter()
    for item in task.examples(12, 3000):
        answer = task.teacher_answer(item.prompt)
        result = checker(answer, request(item.prompt))
        assert result.ok == (answer == item.answer)
        checks[result.check] += 1
    assert checks["function:wrong_date"] > 0
    assert checks["function:impossible_date"] > 0
    assert set(checks) == {None, "function:wrong_date", "function:impossible_date"}


@pytest.mark.parametrize(
    ("answer", "prompt", "check"),
    [
        ("I could not read a date in that.", "x", "not_iso"),
        ("2024-3-5", "03/05/2024", "not_iso"),
        ("2024-02-30", "03/05/2024", "impossible_date"),
        ("2024-03-06", "03/05/2024", "wrong_date"),
        ("2024-03-05", "what day is it?", "no_date"),
    ],
)
def test_verifier_reasons(answer: str, prompt: str, check: str) -> None:
    assert task.verify_answer(answer, request(prompt)) == (False, check)


def test_the_demo_route_is_a_valid_config_with_the_verifier() -> None:
    route = RouteConfig.model_validate(
        route_config("http://127.0.0.1:1", "http://127.0.0.1:2", 0.8)
    )
    assert route.export.verifier is not None
    assert route.rollout.confidence == "min_prob"
    assert sorted(rule.value for rule in route.slices.rules) == sorted(task.STYLES)


def test_auroc() -> None:
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.9, 0.4, 0.6, 0.3], [True, True, False, False]) == 0.75
    assert auroc([0.9, 0.8], [True, True]) is None
