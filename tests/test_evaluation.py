"""Evaluation: metrics on hand-made cases with known answers, baselines on real_dev, plots."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.datasets.base import PlaceDataset, PlaceSet
from training.errors import UserError
from training.evaluation.baselines import raw_pixel_descriptors, sad_search
from training.evaluation.metrics import (
    evaluate_retrieval,
    localization_accuracy_curve,
    pca_dim_sweep,
    positives,
    recall_at_n,
    search,
)
from training.evaluation.plots import (
    plot_localization_curve,
    plot_loss_curve,
    plot_pca_sweep,
    plot_recall_at_n,
)
from training.evaluation.real_dev import (
    default_real_dev_root,
    read_real_dev,
    real_dev_recall_at_1,
    real_dev_recall_at_1_sad,
)

REAL_DEV = default_real_dev_root()
needs_real_dev = pytest.mark.skipif(
    not (REAL_DEV / "MatchingPairs").is_dir(),
    reason=f"real_dev photographs not found at {REAL_DEV} (set VPR_REAL_DEV to the folder)",
)


def place_set(x: list[float], yaw_deg: list[float] | None = None, tags: tuple[str, ...] = ()) -> PlaceSet:
    n = len(x)
    yaw = np.full(n, np.nan) if yaw_deg is None else np.deg2rad(np.asarray(yaw_deg, dtype=float))
    xy = np.stack([np.asarray(x, dtype=float), np.zeros(n)], axis=1)
    return PlaceSet(tuple(Path(f"img{i}.jpg") for i in range(n)), xy, yaw, tags)


def dataset(db: PlaceSet, q: PlaceSet, positive_deg: float | None = None) -> PlaceDataset:
    return PlaceDataset("toy", db, q, positive_m=25.0, positive_deg=positive_deg)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def one_hot(ids: np.ndarray) -> np.ndarray:
    return np.eye(int(ids.max()) + 1, dtype=np.float32)[ids]


# --- positives and recall@N ---------------------------------------------------------------


def test_recall_drops_queries_without_positive() -> None:
    data = dataset(place_set([0, 100, 200, 300]), place_set([1, 101, 1000]))
    truth = positives(data)
    assert [p.tolist() for p in truth] == [[0], [1], []]
    indices = np.array([[0, 1], [2, 1], [3, 2]])  # query 1 finds its place second; query 2 is unscorable
    result = recall_at_n(indices, truth, ns=(1, 2))
    assert result == {"recall": {"1": 0.5, "2": 1.0}, "n_evaluated": 2, "n_dropped": 1}


def test_recall_ignores_padding_and_rejects_too_large_n() -> None:
    truth = [np.array([0]), np.array([1])]
    assert recall_at_n(np.array([[0, -1], [-1, -1]]), truth, ns=(1, 2))["recall"] == {"1": 0.5, "2": 0.5}
    with pytest.raises(ValueError, match="ns"):
        recall_at_n(np.array([[0, 1], [1, 0]]), truth, ns=(1, 5))
    with pytest.raises(ValueError, match="positives for 1"):
        recall_at_n(np.array([[0, 1], [1, 0]]), truth[:1], ns=(1,))
    assert recall_at_n(np.array([[0]]), [np.array([], dtype=np.int64)], ns=(1,))["recall"] == {"1": None}


def test_heading_filter_and_wrap_around() -> None:
    db = place_set([0, 0, 0, 0, 5], yaw_deg=[0, 180, -179, np.nan, 100])
    q = place_set([0, 0, 0], yaw_deg=[10, 179, np.nan])
    data = dataset(db, q, positive_deg=40)
    distance_only = positives(data)
    assert all(p.tolist() == [0, 1, 2, 3, 4] for p in distance_only)
    with_heading = positives(data, angle_deg=data.positive_deg)
    assert with_heading[0].tolist() == [0, 3]  # 10 vs 0 degrees; unknown heading kept
    assert with_heading[1].tolist() == [1, 2, 3]  # 179 vs 180 and vs -179 (2 degrees across the wrap)
    assert with_heading[2].tolist() == [0, 1, 2, 3, 4]  # query heading unknown: distance only
    assert positives(data, distance_m=4.0)[0].tolist() == [0, 1, 2, 3]


def test_localization_curve_on_toy_case() -> None:
    data = dataset(place_set([0, 10, 20]), place_set([3, 0, 50, 7]))
    thresholds, accuracy = localization_accuracy_curve(data, np.array([0, 2, 1, -1]))
    errors = {0: 0.0, 2: 0.0, 3: 0.25, 20: 0.5, 39: 0.5, 40: 0.75, 50: 0.75}
    for t, expected in errors.items():
        assert accuracy[t] == pytest.approx(expected), t
    assert thresholds.tolist() == list(range(51))
    assert np.all(np.diff(accuracy) >= 0)
    with pytest.raises(ValueError, match="4 queries"):
        localization_accuracy_curve(data, np.array([0, 1]))


# --- search, evaluate_retrieval, PCA sweep ------------------------------------------------


def test_faiss_search_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    db, q = unit(rng.normal(size=(300, 32))), unit(rng.normal(size=(40, 32)))
    similarities, indices = search(db, q, 10)
    brute = q @ db.T
    expected = np.argsort(-brute, axis=1)[:, :10]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(similarities, np.take_along_axis(brute, expected, axis=1), atol=1e-5)
    padded_sims, padded = search(db[:3], q, 5)
    assert padded.shape == (40, 5) and np.all(padded[:, 3:] == -1)
    assert np.all(np.isin(padded[:, :3], [0, 1, 2]))
    assert padded_sims.shape == (40, 5)


def test_search_rejects_bad_descriptors() -> None:
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="dims"):
        search(unit(rng.normal(size=(5, 8))), unit(rng.normal(size=(2, 4))), 1)
    with pytest.raises(ValueError, match="L2-normalised"):
        search(rng.normal(size=(5, 8)) * 3, unit(rng.normal(size=(2, 8))), 1)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        search(unit(rng.normal(size=(5, 8))), np.ones(8, dtype=np.float32), 1)


def test_evaluate_retrieval_bundle_is_json_clean() -> None:
    db = place_set([0, 100, 200], yaw_deg=[0, 0, 0])
    q = place_set([0, 100, 100, 900], yaw_deg=[0, 0, 180, 0], tags=("day", "night", "night", "day"))
    db_desc = np.eye(3, dtype=np.float32)
    q_desc = unit(np.array([[1, 0, 0], [0, 1, 0], [0, 0.9, 0.1], [0, 0, 1]]))
    result = evaluate_retrieval(dataset(db, q, positive_deg=40), db_desc, q_desc, ns=(1, 2))
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    # Query 2 looks backwards: a positive by distance only. Query 3 has nothing within 25 m.
    assert result["protocol"] == {"recall": {"1": 1.0, "2": 1.0}, "n_evaluated": 2, "n_dropped": 2}
    assert result["distance_only"] == {"recall": {"1": 1.0, "2": 1.0}, "n_evaluated": 3, "n_dropped": 1}
    assert result["per_tag"] == {
        "day": {"recall@1": 1.0, "n_evaluated": 1, "n_dropped": 1},
        "night": {"recall@1": 1.0, "n_evaluated": 1, "n_dropped": 1},
    }
    assert (result["n_queries"], result["n_database"], result["dim"]) == (4, 3, 3)
    assert result["localization"]["accuracy"][0] == 0.75  # over all four queries
    with pytest.raises(ValueError, match="descriptors for"):
        evaluate_retrieval(dataset(db, q), db_desc[:2], q_desc)


def sweep_case(n: int = 120, dim: int = 16) -> tuple[np.ndarray, np.ndarray, PlaceDataset]:
    rng = np.random.default_rng(2)
    db = unit(rng.normal(size=(n, dim)))
    q = unit(db[:40] + rng.normal(scale=0.02, size=(40, dim)))
    xs = [100.0 * i for i in range(n)]
    return db, q, dataset(place_set(xs), place_set(xs[:40]))


def test_pca_sweep_shapes_and_full_dim_keeps_recall() -> None:
    db, q, data = sweep_case()
    sweep = pca_dim_sweep(db, q, data, dims=[2, 4, 8, 16])
    assert sweep["dims"] == [2, 4, 8, 16]
    assert set(sweep["recall"]) == {"1", "5", "10"}
    assert all(len(v) == 4 for v in sweep["recall"].values())
    assert sweep["raw"]["1"] == 1.0 and sweep["recall"]["1"][-1] == 1.0
    assert sweep["recall"]["1"][0] < 1.0  # two dimensions cannot separate 120 random places
    assert sweep["n_evaluated"] == 40
    json.dumps(sweep, allow_nan=False)
    with pytest.raises(ValueError, match="dims"):
        pca_dim_sweep(db, q, data, dims=[17])


# --- baselines and real_dev ---------------------------------------------------------------


def test_sad_search_ranks_by_absolute_difference() -> None:
    rng = np.random.default_rng(3)
    db, q = rng.normal(size=(50, 12)).astype(np.float32), rng.normal(size=(7, 12)).astype(np.float32)
    scores, indices = sad_search(db, q, 5)
    brute = np.abs(q[:, None] - db[None]).sum(axis=2)
    np.testing.assert_array_equal(indices, np.argsort(brute, axis=1)[:, :5])
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, :5], rtol=1e-5)
    with pytest.raises(ValueError, match="expected"):
        sad_search(db, q[:, :3], 1)


def test_raw_pixels_are_patch_normalised_and_unreadable_files_named(tmp_path: Path) -> None:
    image = np.tile(np.arange(64, dtype=np.uint8) * 3, (48, 1))
    cv2.imwrite(str(tmp_path / "ramp.png"), image)
    desc = raw_pixel_descriptors([tmp_path / "ramp.png"])
    assert desc.shape == (1, 24 * 32) and desc.dtype == np.float32
    blocks = desc.reshape(3, 8, 4, 8).transpose(0, 2, 1, 3).reshape(12, 64)
    np.testing.assert_allclose(blocks.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(blocks.std(axis=1), 1.0, atol=1e-4)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="broken.jpg"):
        raw_pixel_descriptors([tmp_path / "broken.jpg"])


@needs_real_dev
@pytest.mark.parametrize(("subset", "reference"), [("MatchingPairs", 0.45), ("MatchingTriplets", 0.60)])
def test_raw_pixel_baseline_reproduces_readme(subset: str, reference: float) -> None:
    paths, ids = read_real_dev(REAL_DEV, subset)
    area = real_dev_recall_at_1_sad(raw_pixel_descriptors(paths), ids)
    assert area == pytest.approx(reference, abs=0.05 + 1e-9)
    nearest = real_dev_recall_at_1_sad(raw_pixel_descriptors(paths, interpolation=cv2.INTER_NEAREST), ids)
    assert nearest == pytest.approx(reference)  # the README's exact numbers


@needs_real_dev
def test_real_dev_layout_and_oracle() -> None:
    paths, ids = read_real_dev(REAL_DEV / "MatchingTriplets")
    assert len(paths) == 30 and ids.tolist() == [p for p in range(10) for _ in range(3)]
    assert all(path.parts[-3] == f"p{i}" for path, i in zip(paths, ids))
    assert real_dev_recall_at_1(one_hot(ids), ids) == 1.0
    with pytest.raises(UserError, match="pick a subset"):
        read_real_dev(REAL_DEV)


def test_real_dev_oracle_and_reader_without_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for place in range(3):
        for view in range(2):
            folder = tmp_path / "MatchingPairs" / f"p{place}" / f"i{view}"
            folder.mkdir(parents=True)
            (folder / "a.jpg").write_bytes(b"")
    (tmp_path / "MatchingPairs" / "README.md").write_text("ignored")
    monkeypatch.setenv("VPR_REAL_DEV", str(tmp_path))
    paths, ids = read_real_dev(subset="MatchingPairs")
    assert ids.tolist() == [0, 0, 1, 1, 2, 2] and paths[0].parent.name == "i0"
    assert real_dev_recall_at_1(one_hot(ids), ids) == 1.0
    assert real_dev_recall_at_1_sad(one_hot(ids), ids) == 1.0
    assert real_dev_recall_at_1(one_hot(np.array([0, 1, 2, 0, 1, 2])), ids) == 0.0
    with pytest.raises(ValueError, match="place ids"):
        real_dev_recall_at_1(one_hot(ids), ids[:3])


def test_real_dev_missing_root_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPR_REAL_DEV", str(tmp_path / "absent"))
    with pytest.raises(UserError, match="VPR_REAL_DEV"):
        read_real_dev()
    with pytest.raises(UserError, match="subset"):
        read_real_dev(tmp_path, subset="Quadruplets")
    with pytest.raises(UserError, match="no pN place folders"):
        read_real_dev(tmp_path)


# --- plots --------------------------------------------------------------------------------


def test_plots_write_readable_pngs(tmp_path: Path) -> None:
    db, q, data = sweep_case()
    evaluation = evaluate_retrieval(data, db, q)
    curve = localization_accuracy_curve(data, search(db, q, 1)[1][:, 0])
    written = [
        plot_recall_at_n(
            {"model": evaluation, "other": evaluation["distance_only"]}, tmp_path / "recall.png"
        ),
        plot_localization_curve({"model": curve, "bundle": evaluation["localization"]}, tmp_path / "loc.png"),
        plot_pca_sweep(pca_dim_sweep(db, q, data, [2, 4, 8, 16]), tmp_path / "pca.png"),
        plot_loss_curve(
            [0, 1, 2, 3], [1.0, 0.7, 0.5, 0.4], tmp_path / "sub" / "loss.png", val=([1, 3], [0.8, 0.6])
        ),
    ]
    for png in written:
        image = cv2.imread(str(png))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100, png
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["loc.png", "loss.png", "pca.png", "recall.png"]  # no temporary files left
    with pytest.raises(ValueError, match="losses"):
        plot_loss_curve([0, 1], [1.0], tmp_path / "bad.png")
