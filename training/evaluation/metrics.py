"""Retrieval metrics: exact search, ground-truth positives, recall@N and localization accuracy.

Descriptors are float32 arrays [N, D], one L2-normalised row per image, so the inner product is
the cosine similarity and a flat inner-product index is the exact nearest-neighbour search the
papers report. Two views of the same ranking are reported because the literature uses both:

- recall@N (NetVLAD, MSLS): a query counts when any of its first N results is a positive. Queries
  without a positive in the database cannot be scored and are dropped, as MSLS does
  (``query_keys_with_no_match``) and Pittsburgh does by construction; the number dropped is
  reported so a shrinking query set is visible.
- top-1 localization accuracy against a distance threshold (the generalized-contrastive-loss
  supplement): what a robot using the first result as its position estimate gets. It is taken
  over all queries, so a query with nothing nearby counts as a failure rather than vanishing.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np
from scipy.spatial import cKDTree

from training.datasets.base import PlaceDataset
from vpr_ros.geometry import yaw_difference

DEFAULT_NS = (1, 5, 10, 20)
_NORM_TOLERANCE = 1e-3


def _descriptors(x: np.ndarray, name: str) -> np.ndarray:
    """Checked float32 copy: the search is only a cosine search if the rows are unit vectors."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty [N, D] array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    norms = np.linalg.norm(x, axis=1)
    if np.any(np.abs(norms - 1.0) > _NORM_TOLERANCE):
        raise ValueError(
            f"{name}: rows must be L2-normalised (norms range {norms.min():.4g}..{norms.max():.4g})"
        )
    return x


def _same_dim(db: np.ndarray, q: np.ndarray) -> None:
    if db.shape[1] != q.shape[1]:
        raise ValueError(f"database descriptors have {db.shape[1]} dims but queries {q.shape[1]}")


def search(db_desc: np.ndarray, q_desc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine similarity: (similarities [Q, k], database indices [Q, k]).

    Where k exceeds the database size, the missing columns hold index -1 (as faiss returns them),
    which every metric here treats as "no result".
    """
    db = _descriptors(db_desc, "database descriptors")
    q = _descriptors(q_desc, "query descriptors")
    _same_dim(db, q)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    similarities, indices = index.search(q, k)
    return similarities, indices.astype(np.int64)


def positives(
    dataset: PlaceDataset, distance_m: float | None = None, angle_deg: float | None = None
) -> list[np.ndarray]:
    """Sorted database indices that count as correct for each query.

    ``distance_m`` defaults to the protocol's ``dataset.positive_m``. The heading test applies
    only when ``angle_deg`` is given (pass ``dataset.positive_deg`` for the protocol), and only
    to pairs whose two yaws are both known: formats without headings still get distance-only
    positives instead of none.
    """
    radius = dataset.positive_m if distance_m is None else distance_m
    if radius < 0:
        raise ValueError(f"distance_m must be non-negative, got {radius}")
    db, q = dataset.database, dataset.queries
    if len(db) == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(len(q))]
    neighbours = cKDTree(db.xy).query_ball_point(q.xy, r=radius)
    result = []
    for i, near in enumerate(neighbours):
        near = np.asarray(sorted(near), dtype=np.int64)
        if angle_deg is not None and not np.isnan(q.yaw[i]) and len(near):
            db_yaw = db.yaw[near]
            unknown = np.isnan(db_yaw)
            close = yaw_difference(np.where(unknown, 0.0, db_yaw), q.yaw[i]) <= np.deg2rad(angle_deg)
            near = near[unknown | close]
        result.append(near)
    return result


def _hits(indices: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    """[Q, K] booleans: is the j-th result of query i one of its positives (-1 never is)."""
    if len(positives) != indices.shape[0]:
        raise ValueError(f"{indices.shape[0]} rows of results but positives for {len(positives)} queries")
    hits = np.zeros(indices.shape, dtype=bool)
    for i, pos in enumerate(positives):
        hits[i] = np.isin(indices[i], pos) & (indices[i] >= 0)
    return hits


def recall_at_n(indices: np.ndarray, positives: Sequence[np.ndarray], ns: Sequence[int] = DEFAULT_NS) -> dict:
    """recall@N over the queries that have at least one positive.

    Returns ``{"recall": {"1": r, "5": r, ...}, "n_evaluated": int, "n_dropped": int}``; string
    keys keep the dict identical after a JSON round trip. A recall is None when no query could
    be scored.
    """
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise ValueError(f"indices: expected [Q, K], got shape {indices.shape}")
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < 1 or ns[-1] > indices.shape[1]:
        raise ValueError(f"ns {ns} must lie in 1..{indices.shape[1]} (the number of results per query)")
    hits = _hits(indices, positives)
    scorable = np.array([len(p) > 0 for p in positives], dtype=bool)
    n_evaluated = int(scorable.sum())
    recall = {}
    for n in ns:
        found = hits[scorable, :n].any(axis=1)
        recall[str(n)] = float(found.mean()) if n_evaluated else None
    return {"recall": recall, "n_evaluated": n_evaluated, "n_dropped": int(len(positives) - n_evaluated)}


def localization_accuracy_curve(
    dataset: PlaceDataset, top1_indices: np.ndarray, thresholds_m: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Share of ALL queries whose first result lies within t metres, for each threshold t.

    ``thresholds_m`` defaults to 0, 1, ..., 50 m (the supplement's x axis). A result of -1 (empty
    database) never localizes.
    """
    thresholds = np.asarray(np.arange(0, 51) if thresholds_m is None else thresholds_m, dtype=np.float64)
    top1 = np.asarray(top1_indices, dtype=np.int64).reshape(-1)
    if len(top1) != len(dataset.queries):
        raise ValueError(f"{len(top1)} top-1 results but {len(dataset.queries)} queries")
    if len(top1) == 0:
        return thresholds, np.zeros_like(thresholds)
    error = np.full(len(top1), np.inf)
    found = top1 >= 0
    error[found] = np.linalg.norm(dataset.database.xy[top1[found]] - dataset.queries.xy[found], axis=1)
    accuracy = (error[None, :] <= thresholds[:, None]).mean(axis=1)
    return thresholds, accuracy


def evaluate_retrieval(
    dataset: PlaceDataset, db_desc: np.ndarray, q_desc: np.ndarray, ns: Sequence[int] = DEFAULT_NS
) -> dict:
    """Everything a training run reports about one dataset, as plain JSON-serialisable values.

    ``protocol`` uses (positive_m, positive_deg); ``distance_only`` drops the heading test so
    the two can be compared (with no positive_deg they are equal). ``per_tag`` splits recall@1
    by the query tags (traverse or condition), where day/night gaps show up.
    """
    if len(db_desc) != len(dataset.database) or len(q_desc) != len(dataset.queries):
        raise ValueError(
            f"{dataset.name}: {len(db_desc)} database / {len(q_desc)} query descriptors for "
            f"{len(dataset.database)} database / {len(dataset.queries)} query images"
        )
    _, indices = search(db_desc, q_desc, max(ns))
    protocol_positives = positives(dataset, dataset.positive_m, dataset.positive_deg)
    thresholds, accuracy = localization_accuracy_curve(dataset, indices[:, 0])
    tags = np.array([dataset.queries.tag(i) for i in range(len(dataset.queries))], dtype=object)
    per_tag = {}
    for tag in sorted(set(tags)):
        members = np.flatnonzero(tags == tag)
        result = recall_at_n(indices[members], [protocol_positives[i] for i in members], ns=(1,))
        per_tag[tag] = {
            "recall@1": result["recall"]["1"],
            "n_evaluated": result["n_evaluated"],
            "n_dropped": result["n_dropped"],
        }
    return {
        "dataset": dataset.name,
        "n_database": len(dataset.database),
        "n_queries": len(dataset.queries),
        "dim": int(np.shape(db_desc)[1]),
        "positive_m": float(dataset.positive_m),
        "positive_deg": None if dataset.positive_deg is None else float(dataset.positive_deg),
        "protocol": recall_at_n(indices, protocol_positives, ns),
        "distance_only": recall_at_n(indices, positives(dataset, dataset.positive_m), ns),
        "localization": {"thresholds_m": thresholds.tolist(), "accuracy": accuracy.tolist()},
        "per_tag": per_tag,
    }


def _fit_pca_whitening(x: np.ndarray, eps: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Mean and whitening projection [D, min(N, D)] (columns by decreasing variance) of x [N, D].

    The SVD of the centred data gives the covariance eigenvectors without forming a D x D
    covariance, which also works when there are fewer images than dimensions.
    """
    x = x.astype(np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    eigenvalues = s**2 / max(len(x) - 1, 1)
    return mean, vt.T / np.sqrt(eigenvalues + eps)


def pca_dim_sweep(
    db_desc: np.ndarray, q_desc: np.ndarray, dataset: PlaceDataset, dims: Sequence[int]
) -> dict:
    """recall@1/5/10 after PCA-whitening to each dimension, fitted on the database descriptors.

    Fitting on the database matches GCL's headline numbers (the whitening is learnt at test time
    on the map being searched) and vpr_ros's mapping workflow, where the projection is stored
    next to the index. ``raw`` holds the unprojected recall for reference. The number of
    components is bounded by min(D, database size), the rank of the database.
    """
    db = _descriptors(db_desc, "database descriptors")
    q = _descriptors(q_desc, "query descriptors")
    _same_dim(db, q)
    if len(db) != len(dataset.database) or len(q) != len(dataset.queries):
        raise ValueError(f"{dataset.name}: descriptor counts do not match the dataset's images")
    dims = [int(d) for d in dims]
    limit = min(db.shape)
    if not dims or min(dims) < 1 or max(dims) > limit:
        raise ValueError(f"dims {dims} must lie in 1..{limit} (min of dimension and database size)")
    ns = (1, 5, 10)
    k = max(ns)
    truth = positives(dataset, dataset.positive_m, dataset.positive_deg)
    raw = recall_at_n(search(db, q, k)[1], truth, ns)
    mean, projection = _fit_pca_whitening(db)
    db_centred, q_centred = db - mean, q - mean
    recall: dict[str, list] = {str(n): [] for n in ns}
    for dim in dims:
        reduced = [c @ projection[:, :dim] for c in (db_centred, q_centred)]
        db_w, q_w = (r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12) for r in reduced)
        result = recall_at_n(search(db_w, q_w, k)[1], truth, ns)
        for n in ns:
            recall[str(n)].append(result["recall"][str(n)])
    return {"dims": dims, "recall": recall, "raw": raw["recall"], "n_evaluated": raw["n_evaluated"]}
