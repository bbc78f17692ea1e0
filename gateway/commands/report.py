"""``report slices|disagreements|thresholds|drift|candidates|quality``: the analyst reports.

The same reports as ``/admin/reports`` (the same JSON with ``--json``), read straight from
Postgres. Exit status 2 for arguments that cannot work (a malformed time, since after until,
a bad range), 1 for what the data says no to (unknown route or dimension, an empty window,
too little data, a malformed reference file, an unknown dataset or another route's).
``--teacher-version`` (slices, disagreements, thresholds, candidates) keeps the requests
whose teacher reported that fingerprint or model; ``report teacher-versions ROUTE`` lists
them.

The config models, SQLAlchemy and the report services are imported when a report runs, not
when the parser is built: ``--help`` and a bad argument answer without them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from gateway.commands.common import CommandError, arguments_checked, print_table, with_engine
from gateway.core.paired import MIN_PAIRS
from gateway.errors import GatewayError, InvalidRequest
from gateway.protocol.reports import (
    DAY,
    DEFAULT_MIN_ROWS,
    DEFAULT_PSI_THRESHOLD,
    QUALITY_SPAN,
    WEEK,
    Window,
    check_dimension,
    check_range,
    check_teacher_version,
    decode_cursor,
    parse_reference_dataset,
    parse_slice,
    parse_thresholds,
    window,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from gateway.services.reports import Reports

_checked = arguments_checked("report", "report")


def _teacher_version(args: argparse.Namespace) -> str | None:
    version: str | None = args.teacher_version
    return check_teacher_version(version, "--teacher-version") if version is not None else None


def _run(args: argparse.Namespace, work: Callable[[Reports], Any]) -> dict[str, Any]:
    from gateway.config import load_settings
    from gateway.services.reports import Reports

    settings = load_settings(args.config)
    try:
        settings.config.find_route(args.route)
    except GatewayError as exc:
        raise CommandError(exc.message) from exc

    async def report(engine: AsyncEngine) -> dict[str, Any]:
        result: dict[str, Any] = await work(Reports(engine, settings.config))
        return result

    return with_engine(settings, report)


def _print(args: argparse.Namespace, result: dict[str, Any], table: Callable[..., None]) -> int:
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        table(result)
    return 0


# -- the four reports -----------------------------------------------------------------------


@_checked
def cmd_slices(args: argparse.Namespace) -> int:
    span = window(args.since, args.until, DAY)
    dimension = check_dimension(args.dimension) if args.dimension else None
    version = _teacher_version(args)
    result = _run(args, lambda reports: reports.slices(args.route, span, dimension, version))
    return _print(args, result, _slices_table)


@_checked
def cmd_disagreements(args: argparse.Namespace) -> int:
    span = window(args.since, args.until, DAY)
    slices = [parse_slice(text, "--slice") for text in args.slice]
    score = check_range(args.min_score, args.max_score, ("--min-score", "--max-score"))
    confidence = check_range(
        args.min_confidence, args.max_confidence, ("--min-confidence", "--max-confidence")
    )
    cursor = decode_cursor(args.cursor, "--cursor") if args.cursor else None
    version = _teacher_version(args)
    result = _run(
        args,
        lambda reports: reports.disagreements(
            args.route,
            span,
            slices=slices,
            served_by=args.served_by,
            score=score,
            confidence=confidence,
            limit=args.limit,
            cursor=cursor,
            teacher_version=version,
        ),
    )
    return _print(args, result, _disagreements_table)


@_checked
def cmd_thresholds(args: argparse.Namespace) -> int:
    span = window(args.since, args.until, WEEK)
    candidates = parse_thresholds(args.thresholds, "--thresholds") if args.thresholds else None
    dimension = check_dimension(args.dimension) if args.dimension else None
    version = _teacher_version(args)
    result = _run(
        args,
        lambda reports: reports.thresholds(
            args.route, span, candidates, dimension, args.conservative, version
        ),
    )
    return _print(args, result, _thresholds_table)


@_checked
def cmd_drift(args: argparse.Namespace) -> int:
    current = window(args.since, args.until, DAY, params=("--since", "--until"))
    dimension = check_dimension(args.dimension) if args.dimension else None
    given = [
        args.reference_file,
        args.reference_dataset,
        args.reference_since or args.reference_until,
    ]
    if sum(1 for option in given if option) > 1:
        raise InvalidRequest(
            "give one reference: a window, --reference-file or --reference-dataset"
        )
    reference: Window | int | str = window(
        args.reference_since,
        args.reference_until,
        WEEK,
        params=("--reference-since", "--reference-until"),
        default_until=current.since,
    )
    if args.reference_dataset:
        reference = parse_reference_dataset(args.reference_dataset, "--reference-dataset")

    async def drift(reports: Reports) -> dict[str, Any]:
        from gateway.services.reports import reference_dataset

        if not args.reference_file:
            return await reports.drift(
                args.route,
                current,
                reference,
                psi_threshold=args.psi_threshold,
                min_rows=args.min_rows,
                dimension=dimension,
            )
        dataset = reference_dataset(reports.route(args.route), str(args.reference_file))
        try:
            with args.reference_file.open("rb") as lines:
                dataset.add_lines(lines)
        except OSError as exc:
            raise CommandError(f"cannot read {args.reference_file}: {exc.strerror}") from exc
        except InvalidRequest as exc:
            raise CommandError(exc.message) from exc
        return await reports.drift(
            args.route,
            current,
            dataset,
            psi_threshold=args.psi_threshold,
            min_rows=args.min_rows,
            dimension=dimension,
        )

    return _print(args, _run(args, drift), _drift_table)


@_checked
def cmd_candidates(args: argparse.Namespace) -> int:
    span = window(args.since, args.until, WEEK)
    version = _teacher_version(args)
    result = _run(
        args,
        lambda reports: reports.candidates(
            args.route, span, args.baseline, args.min_pairs, version
        ),
    )
    return _print(args, result, _candidates_table)


@_checked
def cmd_teacher_versions(args: argparse.Namespace) -> int:
    from gateway.config import load_settings
    from gateway.services.teachers import route_versions

    settings = load_settings(args.config)
    result = with_engine(
        settings, lambda engine: route_versions(engine, settings.config, args.route)
    )
    return _print(args, result, _teacher_versions_table)


@_checked
def cmd_quality(args: argparse.Namespace) -> int:
    span = window(args.since, args.until, QUALITY_SPAN)
    dimension = check_dimension(args.dimension) if args.dimension else None
    result = _run(args, lambda reports: reports.quality(args.route, span, dimension))
    return _print(args, result, _quality_table)


# -- tables ---------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _interval(item: dict[str, Any]) -> str:
    if item.get("ci_low") is None:
        return "-"
    return f"{item['ci_low']:.1%}-{item['ci_high']:.1%}"


def _short(text: str | None, width: int = 40) -> str:
    if text is None:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _slices_table(result: dict[str, Any]) -> None:
    print(f"{result['route']}: {result['since']} to {result['until']}")
    print(
        "slices worst first: failing critical slices, then by the low end of the 95% Wilson "
        "interval; * too few comparisons to rank (listed last); the aggregate last; "
        "KEPT: chosen for the student but kept on the teacher (scope, slice override)\n"
    )
    verdicts = {"pass": "pass", "fail": "FAIL", "not_enough_data": "not enough data"}
    rows = [
        (
            (f"{line['dimension']}={line['value']}" if line is not result["aggregate"] else "all")
            + ("" if line.get("enough_samples", True) else " *"),
            str(line["requests"]),
            str(line["samples"]),
            _pct(line["agreement"]),
            _interval(line),
            _pct(line["bar"]),
            verdicts.get(line["verdict"], "-"),
            _pct(line["fallback_rate"]),
            _pct(line["student_share"]),
            str(line["out_of_scope"] + line["slice_teacher_only"]),
        )
        for line in [*result["slices"], result["aggregate"]]
    ]
    header = ("SLICE", "REQUESTS", "COMPARED", "AGREEMENT", "95% CI", "BAR", "VERDICT")
    print_table((*header, "FALLBACKS", "STUDENT", "KEPT"), rows)
    if result["teacher_versions"]:
        print("\nper teacher version (fingerprint, else model), oldest first")
        versions = [
            (
                str(line["version"]),
                line["model_reported"] or "-",
                str(line["requests"]),
                str(line["samples"]),
                _pct(line["agreement"]),
                _interval(line),
                line["first_seen"],
                line["last_seen"],
            )
            for line in result["teacher_versions"]
        ]
        columns = ("TEACHER VERSION", "MODEL", "REQUESTS", "COMPARED", "AGREEMENT", "95% CI")
        print_table((*columns, "FIRST", "LAST"), versions)


def _teacher_versions_table(result: dict[str, Any]) -> None:
    if not result["versions"]:
        print(f"{result['route']}: no teacher version seen yet")
        return
    rows = [
        (
            str(line["version"]) + (" (latest)" if line["latest"] else ""),
            line["model_reported"] or "-",
            line["fingerprint"] or "-",
            line["first_seen"],
            line["last_seen"],
            str(line["requests"]),
        )
        for line in result["versions"]
    ]
    print_table(
        ("TEACHER VERSION", "MODEL", "FINGERPRINT", "FIRST SEEN", "LAST SEEN", "REQUESTS"), rows
    )


def _disagreements_table(result: dict[str, Any]) -> None:
    rows = [
        (
            item["created_at"],
            item["request_id"],
            item["served_by"] or "-",
            "-" if item["student_confidence"] is None else f"{item['student_confidence']:.2f}",
            "-" if item["agreement_score"] is None else f"{item['agreement_score']:.2f}",
            item["agreement_reason"] or "-",
            _short(item["prompt"]),
            _short(item["teacher_answer"]),
            _short(item["student_answer"]),
        )
        for item in result["disagreements"]
    ]
    if not rows:
        print(f"{result['route']}: no disagreements match, {result['since']} to {result['until']}")
        return
    header = ("CREATED", "REQUEST", "SERVED", "CONF", "SCORE", "REASON", "PROMPT")
    print_table((*header, "TEACHER", "STUDENT"), rows)
    if result["next_cursor"]:
        print(f"\nmore: add --cursor {result['next_cursor']}")


def _thresholds_table(result: dict[str, Any]) -> None:
    print(f"{result['route']}: {result['since']} to {result['until']}, ", end="")
    print(f"{result['comparisons']} shadow comparisons with a confidence")
    print("per threshold: share the student would serve; agreement on it (* meets the bar)\n")
    curves = result["curves"]
    header = ["THRESHOLD"]
    for curve in curves:
        name = f"{curve['dimension']}={curve['value']}" if curve["dimension"] != "all" else "all"
        bar = f" (bar {curve['bar']:.0%})" if curve["bar"] is not None else ""
        header += [f"{name} SERVED", f"AGREEMENT{bar}"]
    recommended = result["recommendation"]["threshold"]
    rows = []
    for index, point in enumerate(curves[0]["points"]):
        mark = " <- recommended" if point["threshold"] == recommended else ""
        if point["threshold"] == result["current_threshold"]:
            mark += " (current)"
        row = [f"{point['threshold']:g}{mark}"]
        for curve in curves:
            at = curve["points"][index]
            star = "*" if at["meets_bar"] else ""
            row += [f"{_pct(at['share'])} ({at['served']})", f"{_pct(at['agreement'])}{star}"]
        rows.append(row)
    print_table(header, rows)
    print()
    if recommended is None:
        print(f"No recommendation: {result['recommendation']['reason']}")
        return
    print(f"Recommended threshold: {recommended:g}, {result['recommendation']['reason']}.")
    print("At it, the student would have served:")
    for served in result["recommendation"]["served"]:
        name = "all" if served["dimension"] == "all" else f"{served['dimension']}={served['value']}"
        print(
            f"  {name}: {_pct(served['share'])} ({served['served']} of {served['total']}), "
            f"agreement {_pct(served['agreement'])} (95% CI {_interval(served)})"
        )


def _against(ref: dict[str, Any]) -> str:
    if ref["kind"] == "window":
        return f"{ref['since']} to {ref['until']} ({ref['requests']} requests)"
    if ref["kind"] == "registered":
        whose = f", champion {ref['champion']}'s training set" if ref["champion"] else ""
        return (
            f"dataset {ref['dataset_id']} ({ref['dataset_kind']}{whose}, {ref['requests']} of "
            f"its {ref['items']} requests still logged)"
        )
    return f"{ref['source']} ({ref['prompts']} prompts)"


def _content_line(content: dict[str, Any]) -> str:
    held, now = content["held_out"], content["current"]
    return (
        f"prompt content: {_pct(now['share'])} of {now['prompts']} sampled prompts are farther "
        f"than {content['max_distance']:g} ({content['max_distance_from']}) from every "
        f"reference prompt; {_pct(held['share'])} of {held['prompts']} held-out reference "
        f"prompts are (PSI {content['psi']:.3f}{', DRIFT' if content['flagged'] else ''})"
    )


def _drift_table(result: dict[str, Any]) -> None:
    against = _against(result["reference"])
    current = result["current"]
    print(f"{result['route']}: {current['since']} to {current['until']} ", end="")
    print(f"({current['requests']} requests) against {against}\n")
    items = list(result["dimensions"])
    if result["prompt_length"] is not None:
        items.append({**result["prompt_length"], "dimension": "prompt length (chars)"})
    rows = []
    for item in items:
        movers = ", ".join(
            f"{b['value']} {b['reference_share']:.0%}->{b['current_share']:.0%}"
            for b in sorted(item["bins"], key=lambda b: -b["contribution"])[:3]
        )
        flag = "DRIFT" if item["flagged"] else "-"
        rows.append((item["dimension"], f"{item['psi']:.3f}", flag, movers))
    print_table(("DIMENSION", "PSI", f"PSI>={result['psi_threshold']:g}", "BIGGEST MOVES"), rows)
    if result["content"] is not None:
        print(_content_line(result["content"]))
    for skipped in result["skipped_dimensions"]:
        print(f"not compared: {skipped['dimension']} ({skipped['why']})")
    print("\nagreement per day (UTC)")
    trend = [
        (
            day["day"],
            str(day["requests"]),
            str(day["samples"]),
            _pct(day["agreement"]),
            _interval(day),
        )
        for day in result["agreement_trend"]
    ]
    print_table(("DAY", "REQUESTS", "COMPARED", "AGREEMENT", "95% CI"), trend)
    if result["reference_agreement"] is not None:
        agreement = result["reference_agreement"]
        print(f"reference window: {_pct(agreement['agreement'])} ({_interval(agreement)})")


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


_VERDICTS = {
    "baseline": "(baseline)",
    "better": "BETTER",
    "worse": "WORSE",
    "inconclusive": "inconclusive",
    "not_enough_data": "too few pairs",
}


def _candidates_table(result: dict[str, Any]) -> None:
    print(f"{result['route']}: {result['since']} to {result['until']}")
    print(
        f"each student against {result['baseline']} on the requests both answered (paired: "
        f"Newcombe's interval; fewer than {result['min_pairs']} pairs is not judged)"
    )
    for source in result["sources"]:
        print(f"\n{source['source']} answers, slices worst first, all requests last")
        rows = []
        for line in [*source["slices"], source["overall"]]:
            name = "all" if line["dimension"] == "all" else f"{line['dimension']}={line['value']}"
            for entry in line["candidates"]:
                paired = entry["paired"] or {}
                rows.append(
                    (
                        name,
                        entry["student"],
                        str(entry["compared"]),
                        _pct(entry["agreement"]),
                        _interval(entry),
                        "-" if not paired else str(paired["pairs"]),
                        _signed(paired.get("difference")),
                        "-"
                        if paired.get("ci_low") is None
                        else f"{paired['ci_low']:+.1%} to {paired['ci_high']:+.1%}",
                        _VERDICTS[entry["verdict"]],
                        _ms(entry["latency_p50_ms"]),
                        _ms(entry["latency_p95_ms"]),
                        "-"
                        if entry["mean_confidence"] is None
                        else f"{entry['mean_confidence']:.2f}",
                    )
                )
                name = ""
        header = ("SLICE", "STUDENT", "COMPARED", "AGREEMENT", "95% CI", "PAIRS", "DIFF")
        print_table((*header, "DIFF 95% CI", "VERDICT", "P50 MS", "P95 MS", "CONF"), rows)


def _quality_table(result: dict[str, Any]) -> None:
    print(f"{result['route']}: {result['since']} to {result['until']}")
    print(f"who was judged wrong, from reviews and feedback ({result['rules']})")
    rows = []
    for name, subjects in [
        *((f"{line['dimension']}={line['value']}", line["subjects"]) for line in result["slices"]),
        ("all", result["overall"]),
    ]:
        for subject, figures in subjects.items():
            error = figures["error"]
            right = figures.get("student_right_in_disagreements")
            rows.append(
                (
                    name,
                    subject,
                    str(figures["judged"]),
                    str(figures["wrong"]),
                    _pct(error["rate"]),
                    _interval(error),
                    f"{figures['from_reviews']}/{figures['from_feedback']}",
                    "-" if right is None else str(figures["reviewed_disagreements"]),
                    "-" if right is None else _pct(right["rate"]),
                )
            )
            name = ""
    header = ("SLICE", "ANSWERS OF", "JUDGED", "WRONG", "ERROR", "95% CI", "REVIEW/FEEDBACK")
    print_table((*header, "DISAGREEMENTS", "STUDENT RIGHT"), rows)


# -- the parser -----------------------------------------------------------------------------


def _unit(what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {text!r}") from None
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"{what} must be from 0 to 1, not {text}")
        return value

    return parse


def _positive(kind: Callable[[str], Any], what: str, most: float | None = None) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {text!r}") from None
        if value <= 0 or (most is not None and value > most):
            limit = f" and at most {most:g}" if most is not None else ""
            raise argparse.ArgumentTypeError(f"{what} must be above 0{limit}, not {text}")
        return value

    return parse


def _teacher_version_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--teacher-version",
        metavar="V",
        help="only requests whose teacher reported this system_fingerprint or this model "
        "(report teacher-versions lists them)",
    )


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    report = commands.add_parser(
        "report",
        help="Analyst reports: slices, disagreements, thresholds, drift, candidates, quality.",
        description="Analyst reports from the logged traffic (tables; --json for JSON).",
    )
    kinds = report.add_subparsers(dest="report", required=True, metavar="REPORT")

    def sub(name: str, help_text: str, default_span: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = kinds.add_parser(
            name, parents=[parent], help=help_text, description=help_text
        )
        parser.add_argument("route", help="the route's name")
        parser.add_argument(
            "--since",
            help=f"start: ISO 8601 or an age like 24h, 7d (default: {default_span} before --until)",
        )
        parser.add_argument("--until", help="end, excluded: ISO 8601 or an age (default: now)")
        parser.add_argument("--json", action="store_true", help="JSON instead of a table")
        return parser

    slices = sub("slices", "Agreement per slice with Wilson intervals, worst first.", "1 day")
    slices.add_argument("--dimension", help="only this slice dimension, e.g. tier")
    _teacher_version_option(slices)
    slices.set_defaults(handler=cmd_slices)

    listing = sub("disagreements", "Comparisons that disagreed, newest first.", "1 day")
    listing.add_argument(
        "--slice", action="append", default=[], help="dimension=value (repeatable: all must hold)"
    )
    listing.add_argument("--served-by", choices=("teacher", "student"))
    listing.add_argument("--min-score", type=_unit("--min-score"))
    listing.add_argument("--max-score", type=_unit("--max-score"))
    listing.add_argument("--min-confidence", type=_unit("--min-confidence"))
    listing.add_argument("--max-confidence", type=_unit("--max-confidence"))
    listing.add_argument(
        "--limit", type=_positive(int, "--limit", 500), default=50, help="rows per page (1-500)"
    )
    listing.add_argument("--cursor", help="next page: the cursor the previous page printed")
    _teacher_version_option(listing)
    listing.set_defaults(handler=cmd_disagreements)

    calibration = sub(
        "thresholds",
        "Served share and agreement per confidence threshold, and a recommendation.",
        "7 days",
    )
    calibration.add_argument(
        "--thresholds", help="candidates, e.g. 0.5,0.7,0.9 (default: 0 to 1 by 0.05)"
    )
    calibration.add_argument("--dimension", help="also a curve for each value of this dimension")
    calibration.add_argument(
        "--conservative",
        action="store_true",
        help="judge bars by the lower end of the 95%% interval, not the observed agreement",
    )
    _teacher_version_option(calibration)
    calibration.set_defaults(handler=cmd_thresholds)

    drift = sub(
        "drift",
        "Traffic drift (PSI) per slice dimension and prompt length; agreement trend.",
        "1 day",
    )
    drift.add_argument(
        "--reference-since",
        help="reference window start (default: 7 days before --reference-until)",
    )
    drift.add_argument("--reference-until", help="reference window end (default: --since)")
    drift.add_argument(
        "--reference-file", type=Path, help="JSONL reference prompts instead (docs/reports.md)"
    )
    drift.add_argument(
        "--reference-dataset",
        metavar="ID",
        help="a registered dataset instead (its requests; also compares the prompt content), "
        "or 'champion' for the training set of the route's champion",
    )
    drift.add_argument(
        "--psi-threshold",
        type=_positive(float, "--psi-threshold"),
        default=DEFAULT_PSI_THRESHOLD,
        help=f"flag dimensions at or above this PSI (default {DEFAULT_PSI_THRESHOLD:g})",
    )
    drift.add_argument(
        "--min-rows",
        type=_positive(int, "--min-rows"),
        default=DEFAULT_MIN_ROWS,
        help=f"fewest rows on each side (default {DEFAULT_MIN_ROWS})",
    )
    drift.add_argument("--dimension", help="only this slice dimension")
    drift.set_defaults(handler=cmd_drift)

    candidates = sub(
        "candidates",
        "Each student's agreement per slice and its paired difference to the champion.",
        "7 days",
    )
    candidates.add_argument(
        "--baseline", help="compare with this student (default: the route's champion)"
    )
    candidates.add_argument(
        "--min-pairs",
        type=_positive(int, "--min-pairs"),
        default=MIN_PAIRS,
        help=f"fewest paired comparisons a verdict needs (default {MIN_PAIRS})",
    )
    _teacher_version_option(candidates)
    candidates.set_defaults(handler=cmd_candidates)

    versions = kinds.add_parser(
        "teacher-versions",
        parents=[parent],
        help="The versions (model, system fingerprint) the route's teacher answered with.",
        description="The versions (model, system fingerprint) the route's teacher answered "
        "with, oldest first: when each was first and last seen, on how many requests.",
    )
    versions.add_argument("route", help="the route's name")
    versions.add_argument("--json", action="store_true", help="JSON instead of a table")
    versions.set_defaults(handler=cmd_teacher_versions)

    quality = sub(
        "quality",
        "Per slice, how often the teacher and each student were judged wrong (reviews, "
        "feedback), and how often the student was right where it disagreed.",
        "30 days",
    )
    quality.add_argument("--dimension", help="only this slice dimension")
    quality.set_defaults(handler=cmd_quality)
