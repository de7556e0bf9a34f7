"""The FAISS index of a place map: which types, their parameters, how each is built and searched.

Index types. ``flat`` (exact, the default) and ``hnsw`` grow in place, so a mapper can load a map
and keep adding. ``ivfpq`` must be trained on the descriptors it indexes; keeping it simple, it is
(re)built from all descriptors - trained and filled - whenever it is needed (``search``,
``save``, ``build_index``) after keyframes were added, and its candidates are re-ranked with the
exact descriptors (``rerank`` of them), so the similarities it returns are true cosines, not PQ
approximations. Real descriptors are all alike (nearest neighbours at cosine 0.99), so PQ codes
alone rank them poorly: on a 1M map of 1280-D descriptors (``benchmarks/map_search.py``) 64-byte
codes put the true nearest keyframe among their top 10 for 24 % of the queries and among their top
256 for 79 %; 160-byte codes among their top 256 for 99 %. Hence the defaults: ``m``
is the largest divisor of D up to D / 8 (8 or more dimensions per one-byte sub-quantizer),
``rerank`` 256; ``nlist`` is the largest power of two <= min(2 sqrt(N), N / 39) (half FAISS's
4 sqrt(N) rule of thumb, and its 39 training points per list), and k-means trains on at most 64
points per centroid. Building a 1M-keyframe ivfpq map took 100 s on one core (about 35 s of it PQ
training, which is the same for any map of more than ~16k keyframes), so ivfpq is for maps whose
memory matters (175 MB instead of 5 GB at 1M x 1280-D); flat or hnsw serve small ones better.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from vpr_ros.errors import InputError

INDEX_TYPES = ("flat", "hnsw", "ivfpq")
# None = chosen from the data at build time (ivfpq nlist) or from the dimension (ivfpq m).
INDEX_DEFAULTS: dict[str, dict[str, int | None]] = {
    "flat": {},
    "hnsw": {"M": 32, "efConstruction": 40, "efSearch": 64},
    "ivfpq": {"nlist": None, "m": None, "nbits": 8, "nprobe": 32, "rerank": 256},
}
_TRAIN_POINTS_PER_CENTROID = 64
_RERANK_BLOCK = 32


def growable_index(index_type: str, dim: int, params: dict[str, int | None]) -> faiss.Index:
    """An empty flat or HNSW index (the types that grow by ``add``; ivfpq is trained instead)."""
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params["efConstruction"]
    index.hnsw.efSearch = params["efSearch"]
    return index


def set_search_params(index: faiss.Index, index_type: str, params: dict[str, int | None]) -> None:
    """The search-time parameters, which a serialized index does not keep."""
    if index_type == "hnsw":
        index.hnsw.efSearch = params["efSearch"]
    elif index_type == "ivfpq":
        index.nprobe = params["nprobe"]


def reranked_search(
    index: faiss.Index, descriptors: np.ndarray, q: np.ndarray, k: int, rerank: int
) -> tuple[np.ndarray, np.ndarray]:
    """IVF-PQ candidates re-scored with the exact descriptors, so sims are true cosines."""
    fetch = min(len(descriptors), max(k, rerank))
    _, cand = index.search(q, fetch)
    exact = np.empty(cand.shape, np.float32)
    for start in range(0, len(q), _RERANK_BLOCK):  # bounds the gathered rows to ~40 MB
        block = slice(start, start + _RERANK_BLOCK)
        rows = descriptors[np.maximum(cand[block], 0)]  # [b, fetch, D]
        exact[block] = np.einsum("bfd,bd->bf", rows, q[block])
    exact[cand < 0] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(exact, order, 1), np.take_along_axis(cand, order, 1)


def checked_params(index: str, given: dict[str, Any], dim: int) -> dict[str, int | None]:
    defaults = INDEX_DEFAULTS[index]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        known = ", ".join(defaults) or "none"
        raise InputError(f"place map: {index} index has no parameter {', '.join(unknown)} (known: {known})")
    params = {**defaults, **given}
    for key, value in params.items():
        if value is None and defaults[key] is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"place map: {index} parameter {key} must be an integer >= 1, got {value!r}")
    if index == "ivfpq":
        _check_pq(params, dim)
    return params


def _check_pq(params: dict[str, int | None], dim: int) -> None:
    if params["m"] is not None and dim % params["m"]:
        raise InputError(f"place map: ivfpq m={params['m']} must divide the descriptor dim {dim}")
    if params["nbits"] > 16:
        raise InputError(f"place map: ivfpq nbits must be <= 16, got {params['nbits']}")


def ivfpq_shape(n: int, dim: int, params: dict[str, int | None]) -> tuple[int, int]:
    """(nlist, m) an ivfpq index over n keyframes gets: the given values, or the automatic ones."""
    m = params["m"] or max(c for c in range(1, max(1, dim // 8) + 1) if dim % c == 0)
    nlist = params["nlist"] or 1 << int(math.log2(max(1.0, min(2 * math.sqrt(n), n / 39))))
    return nlist, m


def train_ivfpq(x: np.ndarray, params: dict[str, int | None]) -> faiss.Index:
    n, dim = x.shape
    nlist, m = ivfpq_shape(n, dim, params)
    needed = max(nlist, 1 << params["nbits"])
    if n < needed:
        raise InputError(
            f"an ivfpq index with nlist={nlist}, nbits={params['nbits']} needs at least {needed} keyframes "
            f"to train, the map has {n}; use index 'flat' for a map this small, or lower nlist/nbits"
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, params["nbits"], faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = index.pq.cp.max_points_per_centroid = _TRAIN_POINTS_PER_CENTROID
    index.train(x)
    index.add(x)
    index.nprobe = params["nprobe"]
    return index
