"""The replay report's figures, one function per PNG (:data:`FIGURES`).

Each takes the JSON-ready report, the evaluation (for the per-frame and per-method arrays) and the
map, and returns False without writing anything when its data do not exist - a raw-pixel baseline
has no pose estimates, a run without headings no second recall curve. Figures are drawn on a bare
``matplotlib.figure.Figure`` (the Agg renderer, no pyplot), as in ``training.evaluation.plots``,
so plotting works headless, keeps no global figure state to close, and never changes the
process-wide backend of whoever imports this.

``vpr-bench`` (image-folder datasets, no map) draws its precision-recall curve and a grid of
example matches with :func:`precision_recall_curve` and :func:`example_matches`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vpr_ros.evaluation.metrics import Evaluation
from vpr_ros.mapping.place_map import PlaceMap

DPI = 110
RECALL_LABELS = {"distance": "distance", "distance_and_heading": "distance and heading"}


def axes(title: str, xlabel: str, ylabel: str, size: tuple[float, float] = (6.4, 4.4)) -> tuple[Figure, Axes]:
    figure = Figure(figsize=size, layout="constrained")
    ax = figure.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return figure, ax


def _save(figure: Figure, ax: Axes, png: Path) -> bool:
    if ax.get_legend() is None and ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    figure.savefig(png, format="png", dpi=DPI)
    return True


# Single-frame curves solid, the sequence filter's (when it ran) dashed in the same colour.
PART_STYLES = {"single": ("", "-"), "sequence": (", sequence filter", "--")}


def _parts(report: dict) -> list[tuple[str, dict]]:
    """The single-frame report and, when the sequence filter ran, its section."""
    return [("single", report)] + ([("sequence", report["sequence"])] if report.get("sequence") else [])


def recall_at_n(report: dict, evaluation: Evaluation, place_map: PlaceMap, png: Path) -> bool:
    """recall@N against N, by distance and by distance and heading."""
    curves = {
        (kind, part): sorted((int(n), r) for n, r in table["at"].items() if r is not None)
        for part, section in _parts(report)
        for kind, table in section["recall"].items()
    }
    if not any(curves.values()):
        return False
    figure, ax = axes("Retrieval recall@N (on-route queries)", "N (results considered)", "recall@N")
    kinds = list(dict.fromkeys(kind for kind, _ in curves))
    for (kind, part), points in curves.items():
        if points:
            ns, recall = zip(*points)
            suffix, line = PART_STYLES[part]
            label = RECALL_LABELS.get(kind, kind) + suffix
            ax.plot(ns, recall, marker="o", linestyle=line, color=f"C{kinds.index(kind)}", label=label)
    ax.set_xscale("log")
    ax.set_xticks(sorted({n for points in curves.values() for n, _ in points}))
    ax.xaxis.set_major_formatter("{x:g}")
    ax.minorticks_off()
    ax.set_ylim(0.0, 1.02)
    return _save(figure, ax, png)


def accuracy_vs_distance(report: dict, evaluation: Evaluation, place_map: PlaceMap, png: Path) -> bool:
    """Share of on-route queries whose top-1 keyframe lies within t metres, against t."""
    curve = report["localization"]
    if not curve["queries"]:
        return False
    figure, ax = axes("Top-1 localization accuracy", "distance threshold t [m]", "share of queries within t")
    for part, section in _parts(report):
        suffix, line = PART_STYLES[part]
        accuracy = section["localization"]
        ax.plot(
            accuracy["thresholds_m"], accuracy["accuracy"], linestyle=line, color="C0", label=f"top-1{suffix}"
        )
    distance = report["settings"]["distance_m"]
    ax.axvline(distance, color="grey", linestyle="--", linewidth=1, label=f"correct: within {distance:g} m")
    ax.set_xlim(0, curve["thresholds_m"][-1])
    ax.set_ylim(0.0, 1.02)
    return _save(figure, ax, png)


def pr_curve(report: dict, evaluation: Evaluation, place_map: PlaceMap, png: Path) -> bool:
    """Precision against recall of the unknown-place decision as its threshold sweeps; the
    configured and the best-F1 thresholds marked."""
    unknown = report["unknown_place"]
    if unknown is None or not unknown["curve"]["recall"] or not unknown["on_route_queries"]:
        return False  # with nothing on the route there is nothing to recall
    figure, ax = _precision_recall_axes(unknown, "Unknown place: precision vs recall")
    filtered = (report.get("sequence") or {}).get("unknown_place")
    if filtered is not None and filtered["curve"]["recall"]:
        label = f"sequence filter (AP {filtered['average_precision']:.3f})"
        curve = filtered["curve"]
        ax.plot(
            curve["recall"], curve["precision"], linestyle=PART_STYLES["sequence"][1], color="C0", label=label
        )
    configured = unknown["configured"]
    if configured is not None and configured["precision"] is not None:
        label = f"configured {configured['threshold']:.3g} (F1 {configured['f1']:.2f})"
        ax.plot(configured["recall"], configured["precision"], "o", markersize=9, color="C3", label=label)
    return _save(figure, ax, png)


def _precision_recall_axes(pr: dict, title: str) -> tuple[Figure, Axes]:
    """The curve and best-F1 point of a :func:`vpr_ros.evaluation.metrics.precision_recall` result."""
    figure, ax = axes(f"{title} (AP {pr['average_precision']:.3f})", "recall", "precision")
    ax.plot(pr["curve"]["recall"], pr["curve"]["precision"], color="C0", label="threshold swept")
    best = pr["best"]
    if best is not None:
        label = f"best F1 {best['f1']:.2f} at {best['threshold']:.3g}"
        ax.plot(best["recall"], best["precision"], "*", markersize=14, color="C1", label=label)
    ax.set_xlim(0.0, 1.02)
    ax.set_ylim(0.0, 1.02)
    return figure, ax


def precision_recall_curve(pr: dict, title: str, png: Path) -> bool:
    """Precision against recall of accepting a query's top-1 as its score threshold sweeps (a
    ``precision_recall`` result, e.g. vpr-bench's), the best-F1 threshold marked; False without
    a curve (no query has a match, or no score)."""
    if pr["average_precision"] is None or not pr["curve"]["recall"]:
        return False
    figure, ax = _precision_recall_axes(pr, title)
    return _save(figure, ax, png)


@dataclass(frozen=True)
class Tile:
    """One image of :func:`example_matches`: RGB uint8, a caption above it, and whether it is a
    correct match (green border), a wrong one (red) or the query itself (None: no border)."""

    image: np.ndarray
    caption: str
    correct: bool | None = None


def example_matches(rows: list[list[Tile]], title: str, png: Path) -> bool:
    """A grid of retrieval examples: one row per query, the query first and its top results after
    it, each result framed green when correct and red when wrong. False when there are no rows."""
    if not rows:
        return False
    columns = max(len(row) for row in rows)
    figure = Figure(figsize=(2.0 * columns, 1.9 * len(rows) + 0.4), layout="constrained")
    figure.suptitle(title)
    grid = figure.subplots(len(rows), columns, squeeze=False)
    for tiles, line in zip(rows, grid):
        for ax, tile in zip(line, [*tiles, *[None] * (columns - len(tiles))]):
            ax.set_xticks([])
            ax.set_yticks([])
            if tile is None:
                ax.set_axis_off()
                continue
            ax.imshow(tile.image)
            ax.set_title(tile.caption, fontsize="x-small")
            colour = {None: "0.4", True: "tab:green", False: "tab:red"}[tile.correct]
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(1.0 if tile.correct is None else 4.0)
    figure.savefig(png, format="png", dpi=DPI)
    return True


def trajectory(report: dict, evaluation: Evaluation, place_map: PlaceMap, png: Path) -> bool:
    """Top-down view: the map's keyframes, every query at its true position coloured by its top-1
    error, a line to the keyframe it matched; refused, dropped and off-route queries marked."""
    q = evaluation.queries
    map_xy = place_map.positions[:, :2]
    distance = report["settings"]["distance_m"]
    figure, ax = axes("Queries at their true positions", "x [m]", "y [m]", size=(8.0, 6.4))
    ax.plot(map_xy[:, 0], map_xy[:, 1], "-", color="0.7", linewidth=1, zorder=1)
    ax.plot(map_xy[:, 0], map_xy[:, 1], ".", color="0.55", markersize=3, zorder=1)
    refused = q["answered"] & ~q["accepted"] if report["settings"]["threshold"] is not None else None
    # lines for what a robot would have used: accepted answers (every answer without a threshold)
    matched = q["answered"] & (q["top1_id"] >= 0) & (True if refused is None else ~refused)
    query_xy = np.column_stack([q["x"], q["y"]])
    lines = np.stack([query_xy[matched], map_xy[q["top1_id"][matched]]], axis=1)
    line_colours = np.where(
        q["top1_correct"][matched][:, None], [[0.35, 0.35, 0.35, 0.6]], [[0.85, 0.1, 0.1, 0.8]]
    )
    ax.add_collection(LineCollection(lines, colors=line_colours, linewidths=0.6, zorder=2))
    norm = Normalize(0.0, 2.0 * distance, clip=True)
    cmap = colormaps["viridis"]
    error = q["top1_error_m"]
    colour = cmap(norm(np.where(np.isfinite(error), error, 2.0 * distance)))  # no result: worst colour
    for on_route, marker in ((True, "o"), (False, "^")):
        shown = q["answered"] & (q["on_route"] == on_route)
        filled = shown if refused is None else shown & ~refused
        ax.scatter(*query_xy[filled].T, s=28, marker=marker, c=colour[filled], edgecolors="k", linewidths=0.4)
        if refused is not None:
            hollow = shown & refused
            ax.scatter(*query_xy[hollow].T, s=34, marker=marker, facecolors="none", edgecolors=colour[hollow])
    dropped = ~q["answered"]
    ax.scatter(*query_xy[dropped].T, s=16, marker="x", color="0.5", linewidths=0.8, zorder=3)
    figure.colorbar(ScalarMappable(norm, cmap), ax=ax, label=f"top-1 error [m] (clipped at {2 * distance:g})")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(handles=_trajectory_legend(refused is not None), loc="best", fontsize="small")
    return _save(figure, ax, png)


def _trajectory_legend(thresholded: bool) -> list[Line2D]:
    def marker(symbol: str, label: str, face: str = "0.6", edge: str = "k", line: str = "none") -> Line2D:
        return Line2D([], [], marker=symbol, linestyle=line, color=edge, markerfacecolor=face, label=label)

    handles = [
        marker(".", "map keyframes", face="0.55", edge="0.55", line="-"),
        Line2D([], [], color="0.35", linewidth=0.8, label="accepted: to the top-1 keyframe"),
        Line2D([], [], color=(0.85, 0.1, 0.1), linewidth=0.8, label="accepted, wrong keyframe"),
        marker("o", "query on the route"),
        marker("^", "query off the route"),
    ]
    if thresholded:
        handles.append(marker("o", "refused (unknown place)", face="none", edge="0.3"))
    handles.append(marker("x", "dropped (no answer)", edge="0.5"))
    return handles


def accuracy_vs_spacing(report: dict, evaluation: Evaluation, place_map: PlaceMap, png: Path) -> bool:
    """Top-1 accuracy of the map as built and thinned to sparser keyframe spacings."""
    rows = [r for r in report["spacing"] if r["accuracy"] is not None]
    if not rows:
        return False
    figure, ax = axes("Accuracy vs keyframe spacing", "keyframe spacing [m]", "share of on-route queries")
    spacing = [r["spacing_m"] for r in rows]
    ax.plot(spacing, [r["accuracy"] for r in rows], marker="o", label="top-1 correct")
    ax.plot(
        spacing,
        [r["found_in_top_k"] for r in rows],
        marker=".",
        linestyle="--",
        label="a kept keyframe in top K",
    )
    for r in rows:
        ax.annotate(
            f"{r['keyframes']} kf",
            (r["spacing_m"], r["accuracy"]),
            textcoords="offset points",
            xytext=(0, -12),
            ha="center",
            fontsize="x-small",
        )
    ax.set_ylim(0.0, 1.05)
    return _save(figure, ax, png)


def pose_error(report: dict, evaluation: Evaluation, place_map: PlaceMap, png: Path) -> bool:
    """Cumulative distribution of the position error, top-1 against kNN voting per sigma."""
    errors = {label: np.sort(e) for label, e in evaluation.estimate_errors.items() if len(e)}
    if not errors:
        return False
    figure, ax = axes(
        "Pose estimate error (accepted on-route queries)",
        "position error e [m]",
        "share of queries with error <= e",
    )
    floor = 0.1  # log axis: errors at the keyframe spacing and below are what tell methods apart
    for label, error in errors.items():
        share = np.arange(1, len(error) + 1) / len(error)
        ax.step(np.append(floor, np.maximum(error, floor)), np.append(0.0, share), where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlim(floor, 50.0)
    ax.set_ylim(0.0, 1.02)
    return _save(figure, ax, png)


FIGURES: dict[str, Callable[[dict, Evaluation, PlaceMap, Path], bool]] = {
    "recall_at_n.png": recall_at_n,
    "accuracy_vs_distance.png": accuracy_vs_distance,
    "pr_curve.png": pr_curve,
    "trajectory.png": trajectory,
    "accuracy_vs_spacing.png": accuracy_vs_spacing,
    "pose_error.png": pose_error,
}
