"""What the scope gate's novelty check costs on the request path, and what it separates.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/novelty_bench.py [--reference 10000]

Builds a :class:`gateway.core.novelty.NoveltyIndex` from ``--reference`` synthetic support
prompts (billing, delivery and account questions of 6 to 60 words, as a training set would
hold), then times ``Scope.outside`` (what the gateway runs for a request chosen for the
student: the labels check, the prompt's profile, the nearest-neighbour search) over prompts
of four kinds, one core, best of ``--repeat`` passes, and prints each kind's distance range.
``serve`` pins BLAS to one thread per worker (as this command should be run): with two
threads on a two-core machine the search took three times as long.

The kinds: *in domain* (new prompts drawn like the reference), *paraphrased* (the same topics
with other wording and a greeting), *other domain* (cooking and travel questions), *code* and
*another language* (German support questions). Prints a markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from gateway.core.novelty import NoveltyIndex
from gateway.core.scope import Scope

TOPICS = {
    "billing": ["invoice", "refund", "charge", "card", "billing address", "receipt", "VAT"],
    "delivery": ["parcel", "delivery", "tracking number", "courier", "late order", "address"],
    "account": ["password", "login", "two-factor code", "email change", "account deletion"],
}
VERBS = ["where is", "how do I get", "why was", "can you check", "I need help with", "what about"]
FILLER = ["my", "the", "last", "this month", "again", "please", "for order 4411", "today"]


def support_prompt(rng: random.Random, wording: list[str]) -> str:
    topic = rng.choice(list(TOPICS))
    words = [rng.choice(wording)]
    for _ in range(rng.randint(3, 30)):
        words.append(rng.choice(TOPICS[topic] + FILLER))
    return " ".join(words) + "?"


def kinds(rng: random.Random) -> dict[str, Callable[[], str]]:
    paraphrase = ["hello there, quick one:", "hi team -", "good morning, regarding"]
    return {
        "in domain": lambda: support_prompt(rng, VERBS),
        "paraphrased": lambda: support_prompt(rng, paraphrase),
        "other domain": lambda: rng.choice(
            [
                "how long should I roast a chicken at 200 degrees",
                "what is a good itinerary for three days in Lisbon",
                "can you suggest a vegetarian lasagne recipe for six people",
                "which train goes from Munich to Vienna overnight",
            ]
        ),
        "code": lambda: rng.choice(
            [
                "def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)",
                "SELECT count(*) FROM orders WHERE created_at > now() - interval '1 day'",
                "for (let i = 0; i < items.length; i++) { total += items[i].price; }",
            ]
        ),
        "another language": lambda: rng.choice(
            [
                "Wo ist meine Rechnung vom letzten Monat und warum wurde doppelt abgebucht",
                "Wie kann ich mein Passwort zurücksetzen, der Code kommt nicht an",
                "Mein Paket ist seit einer Woche unterwegs, bitte prüfen Sie die Sendung",
            ]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=int, default=10_000, help="reference prompts")
    parser.add_argument("--queries", type=int, default=500, help="prompts timed per kind")
    parser.add_argument("--repeat", type=int, default=3, help="passes; the best is reported")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    started = time.perf_counter()
    index = NoveltyIndex(support_prompt(rng, VERBS) for _ in range(args.reference))
    built = time.perf_counter() - started
    scope = Scope({"tier": frozenset({"free", "pro"})}, index, 0.5)
    labels = {"tier": "pro"}
    print(f"index of {len(index)} prompts built in {built:.2f} s\n")
    print(
        "| prompts | per request (best pass) | distance min / median / max | out of scope at 0.5 |"
    )
    print("|---|---|---|---|")
    for name, make in kinds(rng).items():
        prompts = [make() for _ in range(args.queries)]
        best = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            for prompt in prompts:
                scope.outside(labels, prompt)
            best = min(best, (time.perf_counter() - started) / len(prompts))
        distances = sorted(index.distance(prompt) for prompt in prompts)
        outside = sum(distance > 0.5 for distance in distances) / len(distances)
        print(
            f"| {name} | {best * 1e3:.3f} ms | {distances[0]:.2f} / "
            f"{statistics.median(distances):.2f} / {distances[-1]:.2f} | {outside:.0%} |"
        )


if __name__ == "__main__":
    main()
