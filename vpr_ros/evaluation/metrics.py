"""The replay report's numbers: retrieval, localization, map density, pose estimates, unknown places.

Definitions (one query = one frame with ground truth that was answered):

- A keyframe is **correct** for a query when it lies within ``distance_m`` of the query's true
  position (3-D Euclidean, in the map frame) and, with ``angle_deg`` set, its heading (yaw) is
  within ``angle_deg`` of the query's. A query is **on the route** when the map holds a correct
  keyframe for it at all, **off the route** otherwise: then the right answer is "unknown place".
- **recall@N** (NetVLAD, MSLS): share of on-route queries with a correct keyframe among the first
  N results; reported by distance alone and, with headings, by distance and heading.
- **top-1 localization accuracy** at t metres (the GCL supplement's curve): share of on-route
  queries whose first keyframe lies within t metres, t = 0 .. ``curve_max_m``.
- **accuracy vs keyframe spacing**: the map thinned greedily along its keyframe order to one
  keyframe per ``s`` metres; a query's answer is its first result that survived the thinning, so
  no re-embedding is needed. When none of the K results survived, the query counts as a failure
  (``found_in_top_k`` says how often): with K = 20 that matters only for spacings of many times
  the map's own.
- **pose estimates** (IM2GPS, Vo et al. 2017, supplement Table 3, at robot scale): the position
  error of the top-1 keyframe against kNN Gaussian voting (:mod:`vpr_ros.localization.pose_estimate`) for
  several kernel widths sigma, over the on-route queries accepted at the threshold; the share
  within 1/2/5/10/25 m replaces the paper's street/city/region/country/continent columns.
- **unknown place** (precision-recall over the top-1 score): accepting a query when its best
  score is >= tau, a true positive is an accepted query whose first keyframe is correct;
  precision = TP / accepted, recall = TP / on-route queries, so an accepted off-route query costs
  precision. The best threshold maximises F1; average precision is the area under the curve
  (sum of precision at each true positive / on-route queries). At the configured threshold the
  report adds the share of off-route queries refused. The curve is :func:`precision_recall`, which
  ``vpr-bench`` uses too (queries without a match in an image-folder set play the off-route part).
- **latency**: percentiles of the per-frame time from image arrival to answer, where measured;
  **dropped**: frames with ground truth that got no answer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.evaluation.answers import Answers
from vpr_ros.evaluation.ground_truth import GroundTruth
from vpr_ros.geometry import yaw_difference, yaw_of
from vpr_ros.localization.pose_estimate import estimate_pose
from vpr_ros.mapping.place_map import PlaceMap

WITHIN_M = (1.0, 2.0, 5.0, 10.0, 25.0)


@dataclass(frozen=True)
class EvalSettings:
    """What counts as correct and what is swept; ``threshold`` is the unknown-place threshold the
    localizer used (None for scores that are not cosine similarities, e.g. raw pixels)."""

    distance_m: float = 10.0
    angle_deg: float | None = 40.0
    ns: tuple[int, ...] = (1, 5, 10, 20)
    threshold: float | None = None
    sigmas_m: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0)
    min_position_std_m: float = 0.5
    spacings_m: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0)
    curve_max_m: int = 50

    def __post_init__(self) -> None:
        """Refuse bad settings when they are made, before a run spends minutes embedding frames."""

        def positive(name: str, value: float) -> None:
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InputError(f"evaluation setting {name} must be a finite number > 0, got {value!r}")

        positive("distance_m", self.distance_m)
        if self.angle_deg is not None:
            positive("angle_deg", self.angle_deg)
        if self.threshold is not None and not (-1.0 <= self.threshold <= 1.0):
            raise InputError(f"evaluation setting threshold must be in [-1, 1], got {self.threshold}")
        for name in ("sigmas_m", "spacings_m"):
            for value in getattr(self, name):
                positive(name, value)
        if not self.ns or min(self.ns) < 1:
            raise InputError(f"evaluation setting ns must be integers >= 1, got {self.ns}")
        positive("curve_max_m", self.curve_max_m)


@dataclass
class Evaluation:
    """``report``: every number, JSON-ready. ``queries``: one row per frame with ground truth
    (columns of equal length, for queries.csv and the trajectory plot). ``estimate_errors``: the
    position errors behind the pose-estimate table, by method label (for the error plot)."""

    report: dict
    queries: dict[str, np.ndarray]
    estimate_errors: dict[str, np.ndarray] = field(default_factory=dict)


def evaluate(place_map: PlaceMap, truth: GroundTruth, answers: Answers, settings: EvalSettings) -> Evaluation:
    """All metrics of one query run against one map (see the module doc for the definitions)."""
    if len(place_map) == 0:
        raise InputError("evaluation: the map has no keyframes")
    where = {int(s): i for i, s in enumerate(answers.stamps_ns)}
    answer_of = np.array([where.get(int(s), -1) for s in truth.stamps_ns], dtype=np.int64)
    answered = answer_of >= 0
    if not answered.any():
        raise InputError(
            f"evaluation: none of the {len(truth)} frames of {truth.info.path} with a pose was answered"
        )
    rows = answer_of[answered]
    ids, scores = answers.ids[rows], answers.scores[rows]
    positions, yaws = truth.positions[answered], yaw_of(truth.orientations[answered])
    map_yaws = yaw_of(place_map.orientations)
    correct_d = _correct(place_map, map_yaws, ids, positions, yaws, settings.distance_m, None)
    correct = _correct(place_map, map_yaws, ids, positions, yaws, settings.distance_m, settings.angle_deg)
    on_route_d, on_route = _on_route(
        place_map, map_yaws, positions, yaws, settings.distance_m, settings.angle_deg
    )
    top1_error = _top1_error(place_map, ids[:, 0] if ids.shape[1] else np.full(len(ids), -1), positions)
    top_score = np.where(np.isnan(scores[:, 0]), -np.inf, scores[:, 0]) if scores.shape[1] else None

    ns = [n for n in sorted(set(settings.ns)) if n <= answers.k]
    recall = {"distance": _recall(correct_d, on_route_d, ns)}
    if settings.angle_deg is not None:
        recall["distance_and_heading"] = _recall(correct, on_route, ns)
    estimates, estimate_errors = _pose_estimates(
        place_map, ids, scores, positions, on_route, answers, settings
    )
    report = {
        "settings": {**asdict(settings), "ns": ns, "score": answers.score, "k": answers.k},
        "frames": {
            "images_in_bag": truth.image_count,
            "with_ground_truth": len(truth),
            "without_ground_truth": truth.without_pose,
            "answered": int(answered.sum()),
            "dropped": int((~answered).sum()),
            "answers_without_ground_truth": len(answers) - int(answered.sum()),
            "on_route": int(on_route.sum()),
            "off_route": int((~on_route).sum()),
        },
        "map": {"keyframes": len(place_map), "median_spacing_m": _median_spacing(place_map)},
        "recall": recall,
        "localization": _accuracy_curve(top1_error[on_route], settings.curve_max_m),
        "spacing": _spacing_sweep(place_map, map_yaws, ids, positions, yaws, on_route, settings),
        "pose_estimates": estimates,
        "unknown_place": _unknown_place(
            top_score, correct[:, 0] if ids.shape[1] else None, on_route, settings
        ),
        "latency_ms": _latency(answers.latency_s[rows]),
    }
    queries = _query_table(place_map, truth, answered, rows, answers, on_route, top1_error, correct, settings)
    return Evaluation(report, queries, estimate_errors)


def sequence_section(filtered: Evaluation, settings: dict) -> dict:
    """The report's ``sequence`` part: the filter's settings, its retrieval, localization, pose and
    unknown-place numbers (the filter's confidence is its top-1 score), and the re-localisation
    delay: for every return to the route after off-route frames, how many frames passed until the
    filter's top-1 was correct again (None when it never was)."""
    on_route, correct = filtered.queries["on_route"], filtered.queries["top1_correct"]
    delays = []
    for start in np.flatnonzero(on_route[1:] & ~on_route[:-1]) + 1:
        later = np.flatnonzero(correct[start:] & on_route[start:])
        delays.append(int(later[0]) if len(later) else None)
    keys = ("recall", "localization", "pose_estimates", "unknown_place")
    numbers = {key: filtered.report[key] for key in keys}
    return {"settings": settings, **numbers, "relocalisation_frames": delays}


# ---------------------------------------------------------------------- correctness


def _correct(
    place_map: PlaceMap,
    map_yaws: np.ndarray,
    ids: np.ndarray,
    positions: np.ndarray,
    yaws: np.ndarray,
    distance_m: float,
    angle_deg: float | None,
) -> np.ndarray:
    """[Q, K]: is result j of query i a correct keyframe (-1 never is)."""
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    near = np.linalg.norm(place_map.positions[safe] - positions[:, None, :], axis=2) <= distance_m
    ok = valid & near
    if angle_deg is not None:
        ok &= yaw_difference(map_yaws[safe], yaws[:, None]) <= math.radians(angle_deg)
    return ok


def _on_route(
    place_map: PlaceMap,
    map_yaws: np.ndarray,
    positions: np.ndarray,
    yaws: np.ndarray,
    distance_m: float,
    angle_deg: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """[Q] twice: does the map hold a keyframe within ``distance_m`` of the query, and one that is
    also within ``angle_deg`` of its heading (the same as the first without an angle). One range
    search over the keyframe positions serves both."""
    # float32 search around a common origin (UTM-sized coordinates would lose centimetres), with a
    # margin; the exact float64 check below removes the extras
    origin = place_map.positions.mean(axis=0)
    index = faiss.IndexFlatL2(3)
    index.add(np.ascontiguousarray(place_map.positions - origin, dtype=np.float32))
    margin = (distance_m * (1 + 1e-4) + 1e-2) ** 2
    limits, _, found = index.range_search(np.ascontiguousarray(positions - origin, dtype=np.float32), margin)
    by_distance = np.zeros(len(positions), dtype=bool)
    by_heading = np.zeros(len(positions), dtype=bool)
    for i in range(len(positions)):
        candidates = found[limits[i] : limits[i + 1]]
        near = np.linalg.norm(place_map.positions[candidates] - positions[i], axis=1) <= distance_m
        if angle_deg is not None:
            near_and_facing = near & (
                yaw_difference(map_yaws[candidates], yaws[i]) <= math.radians(angle_deg)
            )
        else:
            near_and_facing = near
        by_distance[i], by_heading[i] = near.any(), near_and_facing.any()
    return by_distance, by_heading


def _top1_error(place_map: PlaceMap, top1: np.ndarray, positions: np.ndarray) -> np.ndarray:
    error = np.full(len(top1), np.inf)
    found = top1 >= 0
    error[found] = np.linalg.norm(place_map.positions[top1[found]] - positions[found], axis=1)
    return error


# ---------------------------------------------------------------------- sections


def _share(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if mask.size else None


def _recall(correct: np.ndarray, on_route: np.ndarray, ns: list[int]) -> dict:
    return {
        "at": {str(n): _share(correct[on_route, :n].any(axis=1)) for n in ns},
        "queries": int(on_route.sum()),
    }


def _accuracy_curve(top1_error: np.ndarray, curve_max_m: int) -> dict:
    thresholds = np.arange(0, int(curve_max_m) + 1, dtype=np.float64)
    accuracy = [_share(top1_error <= t) for t in thresholds]
    return {"thresholds_m": thresholds.tolist(), "accuracy": accuracy, "queries": len(top1_error)}


def _median_spacing(place_map: PlaceMap) -> float | None:
    steps = np.linalg.norm(np.diff(place_map.positions, axis=0), axis=1)
    return float(np.median(steps)) if len(steps) else None


def thin_keyframes(positions: np.ndarray, spacing_m: float) -> np.ndarray:
    """Keyframe ids kept when a map is thinned to one keyframe per ``spacing_m`` metres: walking
    the keyframes in order, keep one when it is at least ``spacing_m`` from the last kept one."""
    kept = [0]
    for i in range(1, len(positions)):
        if np.linalg.norm(positions[i] - positions[kept[-1]]) >= spacing_m:
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def _spacing_sweep(
    place_map: PlaceMap,
    map_yaws: np.ndarray,
    ids: np.ndarray,
    positions: np.ndarray,
    yaws: np.ndarray,
    on_route: np.ndarray,
    settings: EvalSettings,
) -> list[dict]:
    rows: list[dict] = []
    if ids.shape[1] == 0:
        return rows
    base = _median_spacing(place_map) or 0.0
    for spacing in [None, *sorted(s for s in settings.spacings_m if s > base)]:
        kept = np.arange(len(place_map)) if spacing is None else thin_keyframes(place_map.positions, spacing)
        member = np.isin(ids, kept) & (ids >= 0)
        found = member.any(axis=1)
        first = np.where(found, ids[np.arange(len(ids)), member.argmax(axis=1)], -1)[:, None]
        hit = _correct(place_map, map_yaws, first, positions, yaws, settings.distance_m, settings.angle_deg)[
            :, 0
        ]
        rows.append(
            {
                "spacing_m": base if spacing is None else float(spacing),
                "map": "as built" if spacing is None else "thinned",
                "keyframes": len(kept),
                "accuracy": _share(hit[on_route]),
                "found_in_top_k": _share(found[on_route]),
            }
        )
    return rows


def _pose_estimates(
    place_map: PlaceMap,
    ids: np.ndarray,
    scores: np.ndarray,
    positions: np.ndarray,
    on_route: np.ndarray,
    answers: Answers,
    settings: EvalSettings,
) -> tuple[dict | None, dict[str, np.ndarray]]:
    """Top-1 vs kNN Gaussian errors over the on-route queries accepted at the threshold; only for
    cosine scores (the estimator weighs neighbours by similarity)."""
    tau = settings.threshold
    if answers.score != "cosine" or tau is None or not 0 < tau <= 1 or ids.shape[1] == 0:
        return None, {}
    methods = [("top1", "top1", None)] + [
        (f"knn sigma={s:g} m", "knn_gaussian", s) for s in settings.sigmas_m
    ]
    chosen = np.flatnonzero(on_route & (np.nan_to_num(scores[:, 0], nan=-np.inf) >= tau))
    errors: dict[str, np.ndarray] = {}
    table = []
    for label, method, sigma in methods:
        error = np.empty(len(chosen))
        for j, q in enumerate(chosen):
            estimate = estimate_pose(
                scores[q],
                ids[q],
                place_map,
                method=method,
                sigma_m=sigma or 1.0,
                similarity_threshold=tau,
                min_position_std_m=settings.min_position_std_m,
            )
            error[j] = np.linalg.norm(estimate.position - positions[q])
        errors[label] = error
        table.append(
            {
                "method": method,
                "sigma_m": sigma,
                "within_m": {f"{d:g}": _share(error <= d) for d in WITHIN_M},
                "median_error_m": float(np.median(error)) if len(error) else None,
                "mean_error_m": float(np.mean(error)) if len(error) else None,
            }
        )
    return {"queries": len(chosen), "threshold": tau, "rows": table}, errors


def precision_recall(top_score: np.ndarray, true_positive: np.ndarray, positives: int) -> dict:
    """The precision-recall curve of accepting a query when its top-1 score is >= a threshold.

    ``top_score`` [Q]: each query's best score (higher is more similar; -inf for a query with no
    result, which no threshold accepts). ``true_positive`` [Q]: the query has a correct top-1
    result. ``positives``: how many queries could be recalled at all (those with a correct answer
    somewhere); the others are queries that should be refused and only cost precision when
    accepted. Returns ``average_precision`` (sum of precision at each true positive / positives;
    None without positives), ``curve`` (threshold, precision, recall at every distinct finite
    score, descending) and ``best`` (the best-F1 point; None without positives or scores).
    """
    order = np.argsort(-top_score, kind="stable")
    sorted_scores = top_score[order]
    tp = np.cumsum(true_positive[order])
    accepted = np.arange(1, len(order) + 1)
    # a threshold accepts every query scoring >= it, so only the last of a run of equal scores counts
    last = np.append(sorted_scores[1:] != sorted_scores[:-1], True) & np.isfinite(sorted_scores)
    precision, recall = tp / accepted, tp / max(positives, 1)
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    # with no positive query there is nothing to recall: only the refusals mean something
    average_precision = float(np.sum(precision[true_positive[order]]) / positives) if positives else None
    best = None
    if last.any() and positives:
        i = np.flatnonzero(last)[np.argmax(f1[last])]
        best = {
            "threshold": float(sorted_scores[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
        }
    return {
        "average_precision": average_precision,
        "curve": {
            "threshold": sorted_scores[last].astype(float).tolist(),
            "precision": precision[last].tolist(),
            "recall": recall[last].tolist(),
        },
        "best": best,
    }


def _unknown_place(
    top_score: np.ndarray | None, top_correct: np.ndarray | None, on_route: np.ndarray, settings: EvalSettings
) -> dict | None:
    if top_score is None:
        return None
    n_on = int(on_route.sum())
    true_positive = on_route & top_correct
    return {
        "on_route_queries": n_on,
        "off_route_queries": int((~on_route).sum()),
        **precision_recall(top_score, true_positive, n_on),
        "configured": None
        if settings.threshold is None
        else _at_threshold(top_score, true_positive, on_route, settings.threshold),
    }


def _at_threshold(top_score: np.ndarray, true_positive: np.ndarray, on_route: np.ndarray, tau: float) -> dict:
    accepted = top_score >= tau
    tp = int((accepted & true_positive).sum())
    n_accepted = int(accepted.sum())
    precision = tp / n_accepted if n_accepted else None
    recall = tp / int(on_route.sum()) if on_route.any() else None
    f1 = None if precision is None or recall is None else 2 * tp / (n_accepted + int(on_route.sum()))
    return {
        "threshold": float(tau),
        "accepted": n_accepted,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_accepts": n_accepted - tp,
        "on_route_accepted": _share(accepted[on_route]),
        "off_route_refused": _share(~accepted[~on_route]),
    }


def _latency(latency_s: np.ndarray) -> dict:
    measured = latency_s[np.isfinite(latency_s)] * 1e3
    if not measured.size:
        return {"frames": 0, "p50": None, "p95": None, "p99": None, "mean": None}
    p50, p95, p99 = (float(v) for v in np.percentile(measured, [50, 95, 99]))
    return {"frames": int(measured.size), "p50": p50, "p95": p95, "p99": p99, "mean": float(measured.mean())}


def _query_table(
    place_map: PlaceMap,
    truth: GroundTruth,
    answered: np.ndarray,
    rows: np.ndarray,
    answers: Answers,
    on_route: np.ndarray,
    top1_error: np.ndarray,
    correct: np.ndarray,
    settings: EvalSettings,
) -> dict[str, np.ndarray]:
    """One row per frame with ground truth; unanswered frames keep NaN / -1 in the answer columns."""
    n = len(truth)
    table: dict[str, np.ndarray] = {
        "stamp_ns": truth.stamps_ns,
        "x": truth.positions[:, 0],
        "y": truth.positions[:, 1],
        "z": truth.positions[:, 2],
        "answered": answered,
        "on_route": np.zeros(n, dtype=bool),
        "top1_id": np.full(n, -1, dtype=np.int64),
        "top1_score": np.full(n, np.nan),
        "top1_error_m": np.full(n, np.nan),
        "top1_correct": np.zeros(n, dtype=bool),
        "accepted": np.zeros(n, dtype=bool),
        "latency_ms": np.full(n, np.nan),
    }
    table["on_route"][answered] = on_route
    if answers.k:
        table["top1_id"][answered] = answers.ids[rows, 0]
        table["top1_score"][answered] = answers.scores[rows, 0]
        table["top1_error_m"][answered] = top1_error
        table["top1_correct"][answered] = correct[:, 0]
        if settings.threshold is not None:
            table["accepted"][answered] = (
                np.nan_to_num(answers.scores[rows, 0], nan=-np.inf) >= settings.threshold
            )
    table["latency_ms"][answered] = answers.latency_s[rows] * 1e3
    return table
