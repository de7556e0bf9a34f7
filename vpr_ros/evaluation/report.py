"""The replay report on disk: report.json for tools, queries.csv per frame, report.md and PNGs for people.

A report is a directory, written like a place map (:mod:`vpr_ros.io.fileio`): everything is staged in
a hidden sibling and swapped in at once, so an interrupted or failed run leaves the previous report
whole, never half of two. report.json (schema :data:`REPORT_SCHEMA`) holds ``run`` - what was
evaluated - and every section of :attr:`~vpr_ros.evaluation.metrics.Evaluation.report`, with numpy
numbers made plain and NaN / infinity written as null, so any JSON reader takes it. Sections that
do not apply (pose estimates and the configured threshold of a raw-pixel baseline) are null there
and "not applicable" in report.md, and their figures are not drawn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.evaluation import plots
from vpr_ros.evaluation.metrics import WITHIN_M, Evaluation
from vpr_ros.io.fileio import (
    check_replaceable,
    has_schema,
    replace_directory,
    staging_directory,
    sweep_leftovers,
)
from vpr_ros.mapping.place_map import PlaceMap

REPORT_SCHEMA = "vpr_ros.eval_report/1"
REPORT_JSON = "report.json"
QUERIES_CSV = "queries.csv"
REPORT_MD = "report.md"
LOCALIZATION_AT_M = (1, 2, 5, 10, 25, 50)
DASH = "–"


def check_report_dir(out: Path, overwrite: bool) -> None:
    """Refuse, before any work is done, an ``out`` the report could not or should not replace: a
    file, a non-empty directory without ``overwrite``, and - even with it - a directory that is not
    a report, which may be someone's folder. Leftovers of killed writers are swept first, so an
    old report they had moved aside counts as the report it is."""
    out = Path(out).expanduser()
    sweep_leftovers(out.absolute())
    check_replaceable(
        out,
        overwrite,
        _is_report,
        f"report directory {out}",
        "vpr_ros report",
        "pass --overwrite (node: report.overwrite)",
    )


def _is_report(directory: Path) -> bool:
    return has_schema(directory, REPORT_JSON, REPORT_SCHEMA.split("/")[0])


def write_report(out: Path, evaluation: Evaluation, place_map: PlaceMap, run: dict, overwrite: bool) -> Path:
    """Write the report directory ``out`` atomically (see the module doc); returns its report.md.
    ``run`` says what was evaluated (mode, model, map, bag, topics) and goes into report.json as is."""
    out = Path(out).expanduser().absolute()
    check_report_dir(out, overwrite)  # again: the disk may have changed while the evaluation ran
    out.parent.mkdir(parents=True, exist_ok=True)
    report = _plain({"schema": REPORT_SCHEMA, "run": run, **evaluation.report})
    with staging_directory(out) as staging:
        (staging / REPORT_JSON).write_text(
            json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        (staging / QUERIES_CSV).write_text(_csv(evaluation.queries), encoding="utf-8")
        figures = [
            name
            for name, draw in plots.FIGURES.items()
            if draw(report, evaluation, place_map, staging / name)
        ]
        (staging / REPORT_MD).write_text(_markdown(report, figures), encoding="utf-8")
        replace_directory(staging, out)
    return out / REPORT_MD


def _plain(value: Any) -> Any:
    """A JSON-native copy: numpy scalars and arrays become Python numbers and lists, tuples lists,
    NaN and infinity None (JSON has neither, and most readers choke on the non-standard tokens)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _csv(columns: dict[str, np.ndarray]) -> str:
    """One row per frame: integers exact, booleans 0/1, floats to 9 significant digits (exact for
    the float32 scores, millimetres for coordinates up to 1000 km), nan / inf where not measured."""
    cells = []
    for values in map(np.asarray, columns.values()):
        if values.dtype == bool:
            values = values.astype(np.int64)
        if np.issubdtype(values.dtype, np.integer):
            cells.append([str(v) for v in values.tolist()])
        else:
            cells.append([f"{v:.9g}" for v in values.tolist()])
    if len({len(c) for c in cells}) > 1:
        raise ValueError(f"query columns differ in length: { {k: len(v) for k, v in columns.items()} }")
    return "\n".join([",".join(columns), *(",".join(row) for row in zip(*cells))]) + "\n"


# ---------------------------------------------------------------------- formatting


def percent(share: float | None) -> str:
    return DASH if share is None else f"{100 * share:.1f} %"


def number(value: float | None, spec: str = ".3g") -> str:
    return DASH if value is None else format(value, spec)


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(row) + " |" for row in rows), ""]


def _accuracy_at(localization: dict, metres: float) -> float | None:
    """The top-1 accuracy curve at ``metres`` (None where the curve has no such threshold)."""
    curve = dict(zip(localization["thresholds_m"], localization["accuracy"]))
    return curve.get(float(metres))


def recall_kind(report: dict) -> tuple[str, str]:
    """The stricter recall the run has: by distance and heading where headings were compared."""
    if "distance_and_heading" in report["recall"]:
        return "distance_and_heading", "distance and heading"
    return "distance", "distance"


# ---------------------------------------------------------------------- report.md


def _markdown(report: dict, figures: list[str]) -> str:
    def figure(name: str, caption: str) -> list[str]:
        return [f"![{caption}]({name})", ""] if name in figures else []

    s = report["settings"]
    heading = "" if s["angle_deg"] is None else f" and {s['angle_deg']:g} degrees of heading"
    lines = [
        f"# Replay evaluation ({report['run'].get('mode', 'unknown mode')})",
        "",
        *_runmarkdown_table(report["run"]),
        f"A keyframe is correct for a query within {s['distance_m']:g} m{heading}; a query is on the route "
        f"when the map holds a correct keyframe for it. Scores: {s['score']}, {s['k']} results per query.",
        "",
        *_frames(report["frames"]),
        "## Retrieval",
        "",
        *_recall(report["recall"]),
        *figure("recall_at_n.png", "recall@N"),
        "## Top-1 localization accuracy",
        "",
        *_localization(report["localization"]),
        *figure("accuracy_vs_distance.png", "accuracy vs distance threshold"),
        "## Map density",
        "",
        *_spacing(report["map"], report["spacing"]),
        *figure("accuracy_vs_spacing.png", "accuracy vs keyframe spacing"),
        "## Pose estimates",
        "",
        *_pose_estimates(report["pose_estimates"]),
        *figure("pose_error.png", "pose error CDF"),
        "## Unknown place",
        "",
        *_unknown_place(report["unknown_place"]),
        *figure("pr_curve.png", "precision vs recall"),
        "## Trajectory",
        "",
        *figure("trajectory.png", "queries and their matches, top-down"),
        "## Latency",
        "",
        *_latency(report["latency_ms"], report["frames"]),
        *_sequence(report),
    ]
    return "\n".join(lines)


def _runmarkdown_table(run: dict) -> list[str]:
    model = run.get("model")
    if model:
        content_hash = str(model.get("content_hash", ""))[:19]
        model_text = f"{model.get('summary', '')} (`{content_hash}…`, {model.get('dir', '')})"
    else:
        model_text = "none (raw-pixel baseline)"
    topics = (
        f"`{run.get('image_topic')}` images, `{run.get('pose_topic')}` poses in frame `{run.get('frame_id')}`"
    )
    rows = [
        ["mode", str(run.get("mode"))],
        ["model", model_text],
        ["map", f"`{run.get('map')}`"],
        ["bag", f"`{run.get('bag')}`"],
        ["topics", topics],
        ["created", str(run.get("created"))],
    ]
    return markdown_table(["run", ""], rows)


def _frames(frames: dict) -> list[str]:
    rows = [
        ["images in the bag", frames["images_in_bag"]],
        ["with ground truth (evaluated)", frames["with_ground_truth"]],
        ["without ground truth (no pose within the sync tolerance)", frames["without_ground_truth"]],
        ["answered", frames["answered"]],
        ["dropped (no answer)", frames["dropped"]],
        ["answers for frames without ground truth", frames["answers_without_ground_truth"]],
        ["answered, on the route", frames["on_route"]],
        ["answered, off the route", frames["off_route"]],
    ]
    return ["## Frames", "", *markdown_table(["frames", "count"], [[name, str(n)] for name, n in rows])]


def _recall(recall: dict) -> list[str]:
    kinds = [kind for kind in ("distance", "distance_and_heading") if kind in recall]
    header = ["N", *(f"{kind.replace('_', ' ')} ({recall[kind]['queries']} queries)" for kind in kinds)]
    ns = list(recall["distance"]["at"])
    rows = [[f"recall@{n}", *(percent(recall[kind]["at"][n]) for kind in kinds)] for n in ns]
    return markdown_table(header, rows)


def _localization(localization: dict) -> list[str]:
    at = [m for m in LOCALIZATION_AT_M if _accuracy_at(localization, m) is not None]
    if not at:
        return ["Not applicable: no on-route queries.", ""]
    header = ["", *(f"within {m} m" for m in at)]
    row = [
        f"top-1 ({localization['queries']} on-route queries)",
        *(percent(_accuracy_at(localization, m)) for m in at),
    ]
    return markdown_table(header, [row])


def _spacing(map_section: dict, spacing: list[dict]) -> list[str]:
    intro = (
        f"{map_section['keyframes']} keyframes, median spacing {number(map_section['median_spacing_m'])} m. "
        "Thinned maps keep one keyframe per spacing; a query's answer is its first result that was kept."
    )
    rows = [
        [
            number(r["spacing_m"]),
            r["map"],
            str(r["keyframes"]),
            percent(r["accuracy"]),
            percent(r["found_in_top_k"]),
        ]
        for r in spacing
    ]
    header = ["spacing [m]", "map", "keyframes", "top-1 correct", "a kept keyframe in the results"]
    return [intro, "", *markdown_table(header, rows)]


def _pose_estimates(estimates: dict | None) -> list[str]:
    if estimates is None:
        return ["Not applicable: pose estimates need cosine similarities and a similarity threshold.", ""]
    header = ["method", *(f"within {d:g} m" for d in WITHIN_M), "median [m]", "mean [m]"]
    rows = [
        [
            "top-1" if r["sigma_m"] is None else f"kNN, sigma {r['sigma_m']:g} m",
            *(percent(r["within_m"][f"{d:g}"]) for d in WITHIN_M),
            number(r["median_error_m"]),
            number(r["mean_error_m"]),
        ]
        for r in estimates["rows"]
    ]
    intro = (
        f"Position error over the {estimates['queries']} on-route queries accepted at threshold "
        f"{estimates['threshold']:g}."
    )
    return [intro, "", *markdown_table(header, rows)]


def _unknown_place(unknown: dict | None) -> list[str]:
    if unknown is None:
        return ["Not applicable: no on-route queries, or no results at all.", ""]
    lines = [
        f"A query is accepted when its best score reaches the threshold; accepted with a correct top-1 "
        f"keyframe is a true positive. {unknown['on_route_queries']} on-route, "
        f"{unknown['off_route_queries']} off-route queries; average precision "
        f"{number(unknown['average_precision'], '.3f')}.",
        "",
    ]
    c = unknown["configured"]
    if c is None:
        lines += ["Configured threshold: not applicable (these scores have none).", ""]
    else:
        header = ["threshold", "accepted", "precision", "recall", "F1", "off-route refused", "false accepts"]
        row = [
            number(c["threshold"]),
            str(c["accepted"]),
            number(c["precision"], ".3f"),
            number(c["recall"], ".3f"),
            number(c["f1"], ".3f"),
            percent(c["off_route_refused"]),
            str(c["false_accepts"]),
        ]
        lines += ["Configured threshold:", "", *markdown_table(header, [row])]
    b = unknown["best"]
    if b is not None:
        lines += [
            f"Best-F1 threshold: {number(b['threshold'], '.4g')} (precision {b['precision']:.3f}, "
            f"recall {b['recall']:.3f}, F1 {b['f1']:.3f}).",
            "",
        ]
    return lines


def _latency(latency: dict, frames: dict) -> list[str]:
    dropped = f"Dropped frames: {frames['dropped']} of {frames['with_ground_truth']} with ground truth."
    if not latency["frames"]:
        return ["Latency: not measured.", "", dropped, ""]
    header = ["frames measured", "p50 [ms]", "p95 [ms]", "p99 [ms]", "mean [ms]"]
    row = [str(latency["frames"]), *(number(latency[key]) for key in ("p50", "p95", "p99", "mean"))]
    return [*markdown_table(header, [row]), dropped, ""]


# ---------------------------------------------------------------------- console


def _sequence(report: dict) -> list[str]:
    """The sequence filter beside single frames (only when it ran)."""
    sequence = report.get("sequence")
    if sequence is None:
        return []
    kind, label = recall_kind(report)
    single, filtered = report["recall"][kind]["at"], sequence["recall"][kind]["at"]
    rows = [[f"recall@{n} ({label})", number(single[n], ".3f"), number(filtered[n], ".3f")] for n in single]
    for metres in LOCALIZATION_AT_M:
        shares = [_accuracy_at(part["localization"], metres) for part in (report, sequence)]
        if None not in shares:
            rows.append([f"top-1 within {metres} m", *map(percent, shares)])
    parts = (report, sequence)
    rows.append(
        [
            "unknown place: average precision",
            *(number((p["unknown_place"] or {}).get("average_precision"), ".3f") for p in parts),
        ]
    )
    rows.append(
        ["position error of the top-1, median [m]", *(_top1_median_error(p["pose_estimates"]) for p in parts)]
    )
    refused = [
        percent(((part or {}).get("configured") or {}).get("off_route_refused"))
        for part in (report["unknown_place"], sequence["unknown_place"])
    ]
    rows.append(["off-route frames refused at the threshold", *refused])
    settings = ", ".join(f"{k} {v}" for k, v in sequence["settings"].items())
    delays = sequence["relocalisation_frames"]
    return [
        "",
        "## Sequence filter",
        "",
        f"Settings: {settings}. Its top-1 score is its confidence (mean similarity along the best "
        "trajectory), thresholded like a single frame's.",
        "",
        *markdown_table(["", "single frame", "sequence filter"], rows),
        "",
        "Frames until the filter's top-1 was correct again after each return to the route: "
        f"{delays or 'no return'}.",
    ]


def _top1_median_error(estimates: dict | None) -> str:
    rows = [] if estimates is None else [r for r in estimates["rows"] if r["sigma_m"] is None]
    return number(rows[0]["median_error_m"]) if rows else "–"


def summary(report: dict, out: Path | None = None) -> str:
    """A few lines for the console: ``report`` is ``{"run": run, **evaluation.report}`` or a
    loaded report.json; ``out`` the report directory, named on the last line."""
    report = _plain(report)
    s, f = report["settings"], report["frames"]
    kind, label = recall_kind(report)
    at = report["recall"][kind]["at"]
    mode = (report.get("run") or {}).get("mode", "unknown")
    lines = [
        f"mode: {mode} ({s['score']} scores, {s['k']} results per query)",
        f"frames: {f['answered']} answered, {f['dropped']} dropped of {f['with_ground_truth']} with ground "
        f"truth ({f['on_route']} on the route, {f['off_route']} off)",
        f"recall@{'/'.join(at)} ({label}): {' / '.join(number(r, '.3f') for r in at.values())}",
    ]
    if report.get("sequence") is not None:
        filtered = report["sequence"]["recall"][kind]["at"]
        values = " / ".join(number(r, ".3f") for r in filtered.values())
        lines.append(f"sequence filter recall@{'/'.join(filtered)}: {values}")
    accuracy = _accuracy_at(report["localization"], s["distance_m"])
    if accuracy is not None:
        lines.append(f"top-1 within {s['distance_m']:g} m: {percent(accuracy)}")
    unknown = report["unknown_place"]
    if unknown is not None and unknown["configured"] is not None:
        c = unknown["configured"]
        lines.append(
            f"unknown place at threshold {c['threshold']:g}: precision {number(c['precision'], '.3f')}, "
            f"recall {number(c['recall'], '.3f')}, off-route refused {percent(c['off_route_refused'])}"
        )
    if unknown is not None and unknown["best"] is not None:
        b = unknown["best"]
        lines.append(
            f"best threshold {b['threshold']:.4g} (F1 {b['f1']:.3f}); "
            f"average precision {unknown['average_precision']:.3f}"
        )
    lat = report["latency_ms"]
    if lat["frames"]:
        lines.append(f"latency p50/p95/p99: {lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} ms")
    if out is not None:
        lines.append(f"report: {Path(out) / REPORT_MD}")
    return "\n".join(lines)
