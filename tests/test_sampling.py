"""Tests of training.sampling on a hand-built street.

The database looks down a straight street (+x) every metre; queries stand beside it with small
heading jitter, and a few stand far away, so every psi bin is populated and some queries only
have psi = 0 pairs. Labels come from ``training.similarity.graded_labels`` (r = 10 m, 90 deg).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from training.datasets.base import PlaceSet
from training.sampling import STRATEGIES, BinaryPairSampler, GradedPairSampler, HardNegativeMiner
from training.similarity import binary_positives, graded_labels

N_PAIRS = 5000
BINS = {  # bin name -> test on psi, written out independently of the sampler's intervals
    "psi in [0.5, 1]": lambda p: p >= 0.5,
    "psi in [0.75, 1]": lambda p: p >= 0.75,
    "psi in [0.5, 0.75)": lambda p: (p >= 0.5) & (p < 0.75),
    "psi in (0, 0.5)": lambda p: (p > 0) & (p < 0.5),
    "psi = 0": lambda p: p == 0,
    "psi in [0, 0.5)": lambda p: p < 0.5,
}


def place_set(xy: np.ndarray, yaw: np.ndarray) -> PlaceSet:
    return PlaceSet(
        tuple(Path(f"{i}.jpg") for i in range(len(xy))), np.asarray(xy, float), np.asarray(yaw, float)
    )


@pytest.fixture(scope="module")
def street() -> tuple[PlaceSet, PlaceSet]:
    rng = np.random.default_rng(7)
    db = place_set(np.stack([np.arange(200.0), np.zeros(200)], axis=1), np.zeros(200))
    n_near, n_far = 60, 5
    near = np.stack([rng.uniform(5, 195, n_near), rng.uniform(-3, 3, n_near)], axis=1)
    far = np.stack([rng.uniform(0, 200, n_far), np.full(n_far, 1000.0)], axis=1)
    yaw = rng.normal(0, np.radians(10), n_near + n_far)
    return db, place_set(np.concatenate([near, far]), yaw)


@pytest.fixture(scope="module")
def labels(street: tuple[PlaceSet, PlaceSet]) -> sparse.csr_matrix:
    return graded_labels(*street, radius=10, fov=np.pi / 2)


def psi_of(labels: sparse.csr_matrix, q: np.ndarray, d: np.ndarray) -> np.ndarray:
    return np.asarray(labels[q, d]).ravel()


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategy_proportions_and_labels(labels: sparse.csr_matrix, strategy: str) -> None:
    q, d, psi = GradedPairSampler(labels, strategy, seed=3).batch(step=0, size=N_PAIRS)
    assert q.dtype == d.dtype == np.int64 and psi.dtype == np.float32
    np.testing.assert_array_equal(psi, psi_of(labels, q, d))
    in_bin = np.zeros(N_PAIRS, dtype=int)
    for interval, prob in STRATEGIES[strategy]:
        members = BINS[interval.name](psi)
        in_bin += members
        assert abs(members.mean() - prob) < 0.03, (interval.name, members.mean(), prob)
    assert (in_bin == 1).all()  # each strategy's bins partition [0, 1]


def test_zero_pairs_are_uniform_outside_the_row() -> None:
    stored = [0, 1, 2, 5, 9]
    labels = sparse.csr_matrix((np.full(6, 0.7, np.float32), ([0] * 5 + [1], [*stored, 4])), shape=(2, 10))
    q, d, psi = GradedPairSampler(labels, "D", seed=1).batch(0, 4000)
    zero = (psi == 0) & (q == 0)
    values, counts = np.unique(d[zero], return_counts=True)
    np.testing.assert_array_equal(values, [3, 4, 6, 7, 8])
    assert counts.min() > 0.8 * counts.mean()
    assert set(d[(psi == 0) & (q == 1)]) == set(range(10)) - {4}


def test_unsorted_duplicate_free_input_is_accepted(labels: sparse.csr_matrix) -> None:
    coo = labels.tocoo()
    order = np.random.default_rng(0).permutation(coo.nnz)
    shuffled = sparse.csr_matrix((coo.data[order], (coo.row[order], coo.col[order])), shape=labels.shape)
    a = GradedPairSampler(labels, "A", seed=5).batch(2, 300)
    b = GradedPairSampler(shuffled, "A", seed=5).batch(2, 300)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_batches_are_a_pure_function_of_seed_and_step(labels: sparse.csr_matrix) -> None:
    sampler = GradedPairSampler(labels, "A", seed=11)
    first = sampler.batch(4, 64)
    sampler.batch(5, 64)
    again = GradedPairSampler(labels, "A", seed=11).batch(4, 64)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    for other in (sampler.batch(5, 64), GradedPairSampler(labels, "A", seed=12).batch(4, 64)):
        assert not np.array_equal(first[1], other[1])


def test_empty_required_bin_raises(labels: sparse.csr_matrix) -> None:
    only_positive = labels.multiply(labels >= 0.5).tocsr()
    with pytest.raises(ValueError, match=r"strategy A.*\(0, 0\.5\)"):
        GradedPairSampler(only_positive, "A")
    GradedPairSampler(only_positive, "D")  # D's low bin also holds the psi = 0 pairs
    with pytest.raises(ValueError, match=r"\[0\.5, 1\]"):
        GradedPairSampler(labels - labels.multiply(labels >= 0.5), "C")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"strategy": "E"}, "unknown batch strategy"), ({"binary_threshold": 0.0}, "binary_threshold")],
)
def test_bad_options_raise(labels: sparse.csr_matrix, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GradedPairSampler(labels, **kwargs)


def test_labels_out_of_range_raise() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        GradedPairSampler(sparse.csr_matrix(np.array([[0.5, -0.2]])))


def test_bin_counts(labels: sparse.csr_matrix) -> None:
    counts = GradedPairSampler(labels, "A").bin_counts()
    psi = labels.data
    assert counts == {
        "psi in [0.5, 1]": np.count_nonzero(psi >= 0.5),
        "psi in (0, 0.5)": np.count_nonzero(psi < 0.5),
        "psi = 0": labels.shape[0] * labels.shape[1] - labels.nnz,
    }


def test_binary_threshold_variant(labels: sparse.csr_matrix) -> None:
    q, d, y = GradedPairSampler(labels, binary_threshold=0.5, seed=2).batch(0, N_PAIRS)
    assert set(np.unique(y)) == {0.0, 1.0}
    assert abs(y.mean() - 0.5) < 0.03
    np.testing.assert_array_equal(y, (psi_of(labels, q, d) >= 0.5).astype(np.float32))
    assert np.count_nonzero((y == 0) & (psi_of(labels, q, d) > 0)) > 0  # soft pairs are negatives too


def test_binary_pair_sampler(street: tuple[PlaceSet, PlaceSet]) -> None:
    db, queries = street
    positives = binary_positives(db, queries, 10.0)
    exclude = binary_positives(db, queries, 25.0)
    q, d, y = BinaryPairSampler(positives, len(db), exclude, seed=4).batch(1, N_PAIRS)
    assert abs(y.mean() - 0.5) < 0.03
    for qi, di, yi in zip(q, d, y):
        assert (di in positives[qi]) == (yi == 1)
        assert yi == 1 or di not in exclude[qi]
    with pytest.raises(ValueError, match="positives"):
        BinaryPairSampler([np.zeros(0, np.int64)] * 3, 10)


# --- hard-negative mining ----------------------------------------------------------------------

DIM = 16


@pytest.fixture(scope="module")
def mining(street: tuple[PlaceSet, PlaceSet]) -> dict:
    """Positives (10 m), potential positives (25 m) and a random unit descriptor cache."""
    db, queries = street
    rng = np.random.default_rng(0)
    return {
        "train": binary_positives(db, queries, 10.0),
        "potential": binary_positives(db, queries, 25.0),
        "n_database": len(db),
        "db_desc": rng.normal(size=(len(db), DIM)).astype(np.float32),
        "q_desc": rng.normal(size=(len(queries), DIM)).astype(np.float32),
    }


def make_miner(m: dict, **kwargs) -> HardNegativeMiner:
    return HardNegativeMiner(m["train"], m["potential"], m["n_database"], **kwargs)


def planted(m: dict, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Descriptors where three true negatives and one potential (not training) positive of ``q``
    look almost like ``q``, and one training positive is closer to ``q`` than the others."""
    rng = np.random.default_rng(1)
    db_desc, q_desc = m["db_desc"].copy(), m["q_desc"].copy()
    outside = np.setdiff1d(np.arange(m["n_database"]), m["potential"][q])
    hard = rng.choice(outside, 3, replace=False)
    away = rng.normal(size=DIM)
    away -= away @ q_desc[q] / (q_desc[q] @ q_desc[q]) * q_desc[q]  # orthogonal: hardness falls with k
    for k, i in enumerate(hard):
        db_desc[i] = q_desc[q] + 0.01 * (k + 1) * away
    trap = np.setdiff1d(m["potential"][q], m["train"][q])[0]
    db_desc[trap] = q_desc[q]
    best = m["train"][q][-1]
    db_desc[best] = q_desc[q] + 0.5 * rng.normal(size=DIM)
    return db_desc, q_desc, hard, int(best)


def all_queries(miner: HardNegativeMiner, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One tuple per query (a permutation), so every query is mined once."""
    return miner.tuples(step, len(miner.queries_with_positives))


def tuple_of(result: tuple[np.ndarray, np.ndarray, np.ndarray], q: int) -> tuple[int, np.ndarray]:
    i = int(np.flatnonzero(result[0] == q)[0])
    return int(result[1][i]), result[2][i]


def test_planted_hard_negatives_and_nearest_positive_are_selected(mining: dict) -> None:
    q = next(i for i, p in enumerate(mining["train"]) if len(p) > 3)
    db_desc, q_desc, hard, best = planted(mining, q)
    miner = make_miner(mining, n_negatives=3, negative_pool=mining["n_database"])
    miner.refresh(db_desc, q_desc)
    result = all_queries(miner, 0)
    pos, neg = tuple_of(result, q)
    assert pos == best
    np.testing.assert_array_equal(neg, hard)  # hardest first, in order of planted distance
    np.testing.assert_array_equal(np.sort(result[0]), miner.queries_with_positives)
    for qi, pi, ni in zip(*result):
        assert pi in mining["train"][qi]
        assert not np.isin(ni, mining["potential"][qi]).any() and len(set(ni)) == len(ni)


def test_neg_cache_carries_over_refreshes(mining: dict) -> None:
    q = int(make_miner(mining).queries_with_positives[0])
    db_desc, q_desc, hard, _ = planted(mining, q)
    full_pool = make_miner(mining, n_negatives=3, negative_pool=mining["n_database"])
    full_pool.refresh(db_desc, q_desc)
    all_queries(full_pool, 0)
    small_pool = make_miner(mining, n_negatives=3, negative_pool=3)
    small_pool.load_state_dict(full_pool.state_dict())
    rng = np.random.default_rng(9)
    others = np.setdiff1d(np.arange(mining["n_database"]), hard)
    db_desc[others] = rng.normal(size=(len(others), DIM))  # new descriptors, same hard negatives
    small_pool.refresh(db_desc, q_desc)
    np.testing.assert_array_equal(tuple_of(all_queries(small_pool, 1), q)[1], hard)
    fresh = make_miner(mining, n_negatives=3, negative_pool=3)
    fresh.refresh(db_desc, q_desc)
    assert not np.array_equal(tuple_of(all_queries(fresh, 1), q)[1], hard)


def test_margin_limits_the_cache_not_the_tuple(mining: dict) -> None:
    for margin, cached in ((0.0, 0), (10.0, 4)):
        miner = make_miner(mining, n_negatives=4, negative_pool=20, margin=margin)
        q_desc = mining["q_desc"].copy()
        for q in miner.queries_with_positives:  # each query sits on a positive: d(q, p) = 0
            q_desc[q] = mining["db_desc"][mining["train"][q][0]]
        miner.refresh(mining["db_desc"], q_desc)
        q, _, neg = miner.tuples(0, 8)
        assert neg.shape == (8, 4) and (neg >= 0).all()
        assert ((miner.state_dict()["neg_cache"][q] >= 0).sum(axis=1) == cached).all()


def test_state_dict_round_trip_reproduces_next_tuples(mining: dict) -> None:
    a = make_miner(mining, n_negatives=5, negative_pool=30, seed=3)
    a.refresh(mining["db_desc"], mining["q_desc"])
    for step in range(3):
        a.tuples(step, 16)
    b = make_miner(mining, n_negatives=5, negative_pool=30, seed=3)
    b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()})
    for step in (3, 4):
        for x, y in zip(a.tuples(step, 16), b.tuples(step, 16)):
            np.testing.assert_array_equal(x, y)
    state = a.state_dict()
    assert state["neg_cache"].dtype == np.int64 and state["neg_cache"].shape == (len(mining["train"]), 5)
    assert (state["neg_cache"] >= -1).all() and (state["neg_cache"] == -1).any()


def test_miner_bad_inputs(mining: dict) -> None:
    with pytest.raises(ValueError, match="negative_pool"):
        make_miner(mining, n_negatives=10, negative_pool=5)
    empty = [np.zeros(0, np.int64)] * len(mining["train"])
    with pytest.raises(ValueError, match="no query has a training positive"):
        HardNegativeMiner(empty, empty, mining["n_database"])
    with pytest.raises(ValueError, match="fewer than"):
        HardNegativeMiner([np.array([0])], [np.arange(8)], 10, n_negatives=3)
    miner = make_miner(mining)
    with pytest.raises(RuntimeError, match="refresh"):
        miner.tuples(0, 4)
    with pytest.raises(ValueError, match="descriptor caches"):
        miner.refresh(mining["db_desc"][:-1], mining["q_desc"])
    with pytest.raises(ValueError, match="neg_cache"):
        miner.load_state_dict(
            {"neg_cache": np.zeros((2, 2)), "db_desc": np.zeros((0, 0)), "q_desc": np.zeros((0, 0))}
        )
