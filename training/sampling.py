"""Which (query, database) pairs and tuples each training step sees.

Two ways to feed the losses in ``training.losses``:

- Pairs without mining, for the (generalized) contrastive loss: :class:`GradedPairSampler`
  composes batches from bins of the graded label psi (GCL train.py, and the supplement's
  strategies A-D); :class:`BinaryPairSampler` draws 50 % positives / 50 % negatives where only
  binary positives exist (Pittsburgh has no headings, so no graded labels).
- Tuples with hard-negative mining, for SARE and triplet: :class:`HardNegativeMiner` follows
  NetVLAD (nearest positive in descriptor space, hardest negatives among a random pool united
  with the query's previous hard negatives).

Exact resume and DDP: the pair samplers keep no state. ``batch(step, size)`` is a pure function
of (seed, step, size), seeded with ``np.random.default_rng([seed, step])``, so a resumed run draws
the same batches as an uninterrupted one and every DDP rank can compute the same global batch and
take its slice. The miner does have state (its descriptor cache and negCache), which
``state_dict`` exports as plain arrays for the checkpoint.

Drawing a database image with psi = 0 (or outside a query's positives) never enumerates the
complement, which is nearly all of a city's database. Each query's stored indices are sorted;
the r-th absent index is r plus the number of stored indices with fewer than r+1 absent indices
before them, and one ``searchsorted`` over keys ``row * (D + 1) + gap`` answers that for a whole
batch at once. This is exact and uniform, with no rejection loop that could stall on a query
that overlaps almost the whole database.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse


def _rng(seed: int, step: int) -> np.random.Generator:
    if step < 0 or seed < 0:
        raise ValueError(f"seed and step must be >= 0, got seed {seed}, step {step}")
    return np.random.default_rng([seed, step])


class _SortedRows:
    """Per-query sorted sets of database indices, and the k-th database index outside each set."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, n_database: int) -> None:
        self.indptr = indptr
        self.indices = indices
        self.n_database = n_database
        counts = np.diff(indptr)
        self.n_outside = n_database - counts
        rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        gaps = indices - (np.arange(len(indices), dtype=np.int64) - indptr[rows])  # absent before each
        self._keys = rows * (n_database + 1) + gaps  # sorted: rows ascend, gaps never decrease

    @classmethod
    def union(cls, n_database: int, *lists: list[np.ndarray]) -> _SortedRows:
        """The per-query union of several lists of database indices (one array per query each)."""
        n_queries = len(lists[0])
        rows, cols = [], []
        for per_query in lists:
            if len(per_query) != n_queries:
                raise ValueError(f"index lists cover {n_queries} and {len(per_query)} queries")
            counts = [len(ix) for ix in per_query]
            rows.append(np.repeat(np.arange(n_queries, dtype=np.int64), counts))
            cols.append(np.concatenate([np.asarray(ix, dtype=np.int64).ravel() for ix in per_query] or [[]]))
        row, col = np.concatenate(rows), np.concatenate(cols).astype(np.int64)
        if len(col) and (col.min() < 0 or col.max() >= n_database):
            raise ValueError(f"database indices must lie in [0, {n_database}), got {col.min()}..{col.max()}")
        keys = np.sort(row * n_database + col)  # np.unique's hash path is ~8x slower on 1e7 keys
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        row, col = np.divmod(keys[first], n_database)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=n_queries))]).astype(np.int64)
        return cls(indptr, col, n_database)

    def row(self, q: int) -> np.ndarray:
        return self.indices[self.indptr[q] : self.indptr[q + 1]]

    def outside(self, q: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """The ``rank``-th (0-based, ascending) database index not in query ``q``'s set."""
        base = q * (self.n_database + 1)
        return rank + np.searchsorted(self._keys, base + rank, side="right") - self.indptr[q]


@dataclass(frozen=True)
class _Interval:
    """Stored labels in [lo, hi), plus the unstored zeros (psi = 0) when ``with_zeros``."""

    name: str
    lo: float
    hi: float
    with_zeros: bool


_POSITIVE = _Interval("psi in [0.5, 1]", 0.5, np.inf, False)
_SOFT = _Interval("psi in (0, 0.5)", 0.0, 0.5, False)
_ZERO = _Interval("psi = 0", 0.0, 0.0, True)

# GCL supplement, "Batch composition": (bin, probability) per strategy; A is the paper's default.
STRATEGIES: dict[str, tuple[tuple[_Interval, float], ...]] = {
    "A": ((_POSITIVE, 0.5), (_SOFT, 0.25), (_ZERO, 0.25)),
    "B": (
        (_Interval("psi in [0.75, 1]", 0.75, np.inf, False), 0.25),
        (_Interval("psi in [0.5, 0.75)", 0.5, 0.75, False), 0.25),
        (_SOFT, 0.25),
        (_ZERO, 0.25),
    ),
    "C": ((_POSITIVE, 1 / 3), (_SOFT, 1 / 3), (_ZERO, 1 / 3)),
    "D": ((_POSITIVE, 0.5), (_Interval("psi in [0, 0.5)", 0.0, 0.5, True), 0.5)),
}


class _Bin:
    """The pairs of one bin: explicit (query, db, label) members per query, then ``n_zeros[q]``
    members drawn from outside the sampler's stored rows (label 0)."""

    def __init__(
        self, name: str, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, n_zeros: np.ndarray
    ) -> None:
        self.name = name
        self.indptr, self.indices, self.values = indptr, indices, values
        self.total = np.diff(indptr) + n_zeros
        self.eligible = np.flatnonzero(self.total > 0)


def _csr_bin(name: str, rows: _SortedRows, keep: np.ndarray, values: np.ndarray, n_zeros: np.ndarray) -> _Bin:
    """The bin made of the stored entries where ``keep`` holds (CSR order is preserved)."""
    n_queries = len(rows.indptr) - 1
    row_of = np.repeat(np.arange(n_queries, dtype=np.int64), np.diff(rows.indptr))
    counts = np.bincount(row_of[keep], minlength=n_queries)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return _Bin(name, indptr, rows.indices[keep], values[keep].astype(np.float32), n_zeros)


class _PairSampler:
    """Per-pair bin choice, then a query uniform among those with pairs in the bin, then a member
    uniform among that query's pairs in the bin. Choosing the bin first keeps the proportions
    exact; the GCL code picks the query first and drops the pair when its bin is empty there."""

    def __init__(
        self, bins: list[_Bin], probs: list[float], outside: _SortedRows, seed: int, what: str
    ) -> None:
        for b in bins:
            if not len(b.eligible):
                raise ValueError(f"{what} needs pairs with {b.name}, but the labels have none")
        self._bins, self._probs, self._outside, self.seed = bins, np.asarray(probs), outside, seed

    def batch(self, step: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query indices int64, database indices int64, labels float32), each [size], a pure
        function of (seed, step, size): resume and DDP ranks redraw the same global batch."""
        rng = _rng(self.seed, step)
        which = rng.choice(len(self._bins), size=size, p=self._probs)
        q_idx = np.empty(size, dtype=np.int64)
        db_idx = np.empty(size, dtype=np.int64)
        label = np.zeros(size, dtype=np.float32)
        for b, bin_ in enumerate(self._bins):
            at = np.flatnonzero(which == b)
            q = bin_.eligible[rng.integers(len(bin_.eligible), size=len(at))]
            k = rng.integers(bin_.total[q])
            n_explicit = bin_.indptr[q + 1] - bin_.indptr[q]
            explicit = k < n_explicit
            member = bin_.indptr[q[explicit]] + k[explicit]
            db = np.empty(len(at), dtype=np.int64)
            db[explicit] = bin_.indices[member]
            label[at[explicit]] = bin_.values[member]
            rest = ~explicit  # members past the explicit ones: label 0, outside the stored rows
            db[rest] = self._outside.outside(q[rest], k[rest] - n_explicit[rest])
            q_idx[at], db_idx[at] = q, db
        return q_idx, db_idx, label

    def bin_counts(self) -> dict[str, int]:
        """Pairs available per bin (for the training log: how much each bin can offer)."""
        return {b.name: int(b.total.sum()) for b in self._bins}


class GradedPairSampler(_PairSampler):
    """GCL pairs labelled with their FoV overlap psi, composed by strategy "A"-"D" (no mining).

    ``labels`` is ``training.similarity.graded_labels``' [Q, D] matrix: a missing entry is psi = 0.
    ``binary_threshold=t`` gives the contrastive baseline's labels instead, 1 where psi >= t and
    0 otherwise, drawn 50 % positive (psi >= t) / 50 % negative (psi < t, zeros included): the GCL
    repo's "sim" 50/50 variant. The strategy's bins are then not used.
    """

    def __init__(
        self,
        labels: sparse.spmatrix,
        strategy: str = "A",
        seed: int = 0,
        binary_threshold: float | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown batch strategy {strategy!r}, expected one of {sorted(STRATEGIES)}")
        labels = sparse.csr_matrix(labels, dtype=np.float32, copy=True)
        labels.eliminate_zeros()
        labels.sum_duplicates()  # also sorts each row's indices, which _SortedRows needs
        if not ((labels.data > 0) & (labels.data <= 1)).all():
            raise ValueError("graded labels must lie in [0, 1]")
        rows = _SortedRows(labels.indptr.astype(np.int64), labels.indices.astype(np.int64), labels.shape[1])
        psi = labels.data
        if binary_threshold is None:
            intervals = STRATEGIES[strategy]
            what = f"batch strategy {strategy}"
        else:
            t = binary_threshold
            if not 0 < t <= 1:
                raise ValueError(f"binary_threshold must lie in (0, 1], got {t}")
            intervals = (
                (_Interval(f"psi >= {t}", t, np.inf, False), 0.5),
                (_Interval(f"psi < {t}", 0.0, t, True), 0.5),
            )
            psi = (psi >= np.float32(t)).astype(np.float32)
            what = f"binary sampling at psi >= {t}"
        no_zeros = np.zeros(labels.shape[0], dtype=np.int64)
        bins = [
            _csr_bin(
                iv.name,
                rows,
                (labels.data >= iv.lo) & (labels.data < iv.hi),
                psi,
                rows.n_outside if iv.with_zeros else no_zeros,
            )
            for iv, _ in intervals
        ]
        super().__init__(bins, [p for _, p in intervals], rows, seed, what)


class BinaryPairSampler(_PairSampler):
    """Contrastive pairs where only binary positives exist: 50 % (query, one of its positives,
    label 1), 50 % (query, a database image outside its positives and ``exclude``, label 0).

    ``exclude[q]`` are the "potential positives" (NetVLAD: within 25 m), too close to be sure
    negatives but too far to be training positives, so they are never drawn at all.
    """

    def __init__(
        self,
        positives: list[np.ndarray],
        n_database: int,
        exclude: list[np.ndarray] | None = None,
        seed: int = 0,
    ) -> None:
        pos = _SortedRows.union(n_database, positives)
        blocked = _SortedRows.union(n_database, positives, *([exclude] if exclude is not None else []))
        n_queries = len(positives)
        bins = [
            _csr_bin(
                "positives",
                pos,
                np.ones(len(pos.indices), dtype=bool),
                np.ones(len(pos.indices), dtype=np.float32),
                np.zeros(n_queries, dtype=np.int64),
            ),
            _Bin(
                "negatives",
                np.zeros(n_queries + 1, dtype=np.int64),
                np.zeros(0, dtype=np.int64),
                np.zeros(0, dtype=np.float32),
                blocked.n_outside,
            ),
        ]
        super().__init__(bins, [0.5, 0.5], blocked, seed, "binary pair sampling")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


class HardNegativeMiner:
    """NetVLAD-style tuples (query, positive, hard negatives) for SARE and triplet.

    For a query with at least one training positive (``train_positives``, e.g. 10 m): the
    positive is the training positive nearest in descriptor space; the negatives are the
    ``n_negatives`` nearest among ``negative_pool`` random database images outside the query's
    training and potential positives (``potential_positives``, e.g. 25 m), united with the hard
    negatives it got last time (the negCache), so hard negatives stay found across cache refreshes.
    The pool is drawn without replacement (pytorch-NetVlad draws with replacement and dedupes, so
    its pool is slightly smaller than asked).

    ``margin`` (a Euclidean-distance margin, as the triplet loss's; pytorch-NetVlad passes
    sqrt(0.1)): pytorch-NetVlad keeps only negatives closer than d(q, p) + margin and skips the
    query when none is left, which changes the batch size. Here the tuple is always filled with
    the hardest negatives (the violating ones are a prefix of those), and the margin decides only
    what goes into the negCache: the violating negatives, as in pytorch-NetVlad. Without margin
    the negCache keeps all selected negatives.
    """

    def __init__(
        self,
        train_positives: list[np.ndarray],
        potential_positives: list[np.ndarray],
        n_database: int,
        n_negatives: int = 10,
        negative_pool: int = 1000,
        seed: int = 0,
        margin: float | None = None,
    ) -> None:
        if not 1 <= n_negatives <= negative_pool:
            raise ValueError(f"need 1 <= n_negatives <= negative_pool, got {n_negatives} and {negative_pool}")
        self._train = _SortedRows.union(n_database, train_positives)
        self._blocked = _SortedRows.union(n_database, train_positives, potential_positives)
        self.queries_with_positives = np.flatnonzero(np.diff(self._train.indptr) > 0)
        if not len(self.queries_with_positives):
            raise ValueError("no query has a training positive: nothing to mine tuples from")
        short = np.count_nonzero(self._blocked.n_outside[self.queries_with_positives] < n_negatives)
        if short:
            raise ValueError(
                f"{short} queries have fewer than {n_negatives} database images outside "
                "their potential positives"
            )
        self.n_database, self.n_negatives, self.negative_pool = n_database, n_negatives, negative_pool
        self.seed, self.margin = seed, margin
        self._neg_cache = np.full((len(train_positives), n_negatives), -1, dtype=np.int64)
        self._db_desc: np.ndarray | None = None
        self._q_desc: np.ndarray | None = None

    def refresh(self, db_desc: np.ndarray, q_desc: np.ndarray) -> None:
        """Store the current descriptors ([n_database, dim] and [Q, dim]), L2-normalised float32,
        so the nearest in L2 is the largest dot product. The negCache is kept."""
        self._set_cache(_unit_rows(db_desc), _unit_rows(q_desc))

    def _set_cache(self, db_desc: np.ndarray, q_desc: np.ndarray) -> None:
        n_queries = len(self._neg_cache)
        if (
            db_desc.ndim != 2
            or q_desc.ndim != 2
            or db_desc.shape[1] != q_desc.shape[1]
            or len(db_desc) != self.n_database
            or len(q_desc) != n_queries
        ):
            raise ValueError(
                f"descriptor caches must be [{self.n_database}, dim] and [{n_queries}, dim], "
                f"got {list(db_desc.shape)} and {list(q_desc.shape)}"
            )
        self._db_desc, self._q_desc = db_desc, q_desc

    def tuples(self, step: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query [size], positive [size], negatives [size, n_negatives]) int64, determined by
        (seed, step, size, descriptor cache, negCache); updates the negCache of the drawn queries."""
        if self._db_desc is None:
            raise RuntimeError("HardNegativeMiner.tuples: call refresh() with descriptors first")
        rng = _rng(self.seed, step)
        n = len(self.queries_with_positives)
        q_idx = rng.choice(self.queries_with_positives, size=size, replace=size > n)
        pos_idx = np.empty(size, dtype=np.int64)
        neg_idx = np.empty((size, self.n_negatives), dtype=np.int64)
        for i, q in enumerate(q_idx):
            pos_idx[i], neg_idx[i] = self._mine(int(q), rng)
        return q_idx.astype(np.int64), pos_idx, neg_idx

    def _mine(self, q: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        query = self._q_desc[q]
        positives = self._train.row(q)
        pos_sim = self._db_desc[positives] @ query
        best = int(np.argmax(pos_sim))
        n_out = int(self._blocked.n_outside[q])
        rank = rng.choice(n_out, size=min(self.negative_pool, n_out), replace=False)
        pool = self._blocked.outside(np.full(len(rank), q, dtype=np.int64), rank)
        cached = self._neg_cache[q]
        candidates = np.unique(np.concatenate([pool, cached[cached >= 0]]))
        sim = self._db_desc[candidates] @ query
        order = np.argsort(-sim, kind="stable")[: self.n_negatives]
        hardest = candidates[order]
        keep = len(hardest)
        if self.margin is not None:
            dist = np.sqrt(np.maximum(2 - 2 * sim[order], 0))  # unit vectors: |a-b|^2 = 2 - 2 a.b
            keep = int(np.count_nonzero(dist < np.sqrt(max(2 - 2 * pos_sim[best], 0)) + self.margin))
        self._neg_cache[q] = -1
        self._neg_cache[q, :keep] = hardest[:keep]
        return int(positives[best]), hardest

    def state_dict(self) -> dict[str, np.ndarray]:
        """The miner's state as plain arrays; a checkpoint must store it for an exact resume.

        ``neg_cache`` [Q, n_negatives] (-1 = empty) and the descriptor caches the next tuples are
        mined with (empty [0, 0] before the first refresh). Re-extracting descriptors instead would
        not reproduce them bit for bit on a GPU, and so not the same hardest negatives.
        """
        empty = np.zeros((0, 0), dtype=np.float32)
        return {
            "neg_cache": self._neg_cache.copy(),
            "db_desc": empty if self._db_desc is None else self._db_desc.copy(),
            "q_desc": empty if self._q_desc is None else self._q_desc.copy(),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`'s arrays (descriptors as stored, not normalised again)."""
        neg_cache = np.asarray(state["neg_cache"], dtype=np.int64)
        if (
            neg_cache.shape != self._neg_cache.shape
            or neg_cache.min(initial=-1) < -1
            or neg_cache.max(initial=-1) >= self.n_database
        ):
            raise ValueError(
                f"neg_cache must be [{len(self._neg_cache)}, {self.n_negatives}] with entries "
                f"in [-1, {self.n_database}), got shape {list(neg_cache.shape)}"
            )
        db_desc = np.asarray(state["db_desc"], dtype=np.float32)
        if db_desc.size:
            self._set_cache(db_desc.copy(), np.asarray(state["q_desc"], dtype=np.float32).copy())
        else:
            self._db_desc = self._q_desc = None
        self._neg_cache = neg_cache.copy()
