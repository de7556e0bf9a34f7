"""Pose from the map's neighbours: top-1 vs IM2GPS-style kNN with a Gaussian kernel, and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vpr_ros.errors import InputError
from vpr_ros.geometry import yaw_of
from vpr_ros.localization.pose_estimate import UNESTIMATED_VARIANCE, estimate_pose
from vpr_ros.mapping.place_map import PlaceMap

DIM = 8


def yaw_quat(yaw_deg: float) -> np.ndarray:
    half = math.radians(yaw_deg) / 2
    return np.array([0.0, 0.0, math.sin(half), math.cos(half)])


def map_at(positions: list[list[float]], yaws_deg: list[float]) -> PlaceMap:
    """Keyframes at the given poses (descriptors do not matter here: the matches are given)."""
    n = len(positions)
    d = np.eye(n, DIM, dtype=np.float32)
    place_map = PlaceMap(DIM, "sha256:" + "0" * 64)
    place_map.add(d, np.arange(n), np.array(positions, float), np.stack([yaw_quat(y) for y in yaws_deg]))
    return place_map


# Keyframe 0: an outlier 100 m away that looks most similar; 1-4 agree around (10, 5).
OUTLIER_CASE = map_at(
    [[110.0, 5.0, 0.0], [10.0, 5.0, 0.0], [11.0, 5.0, 0.0], [10.0, 6.0, 0.0], [9.5, 4.5, 0.0]],
    [0.0, 90.0, 95.0, 85.0, 90.0],
)
SIMS = np.array([0.90, 0.80, 0.75, 0.70, 0.70])
IDS = np.array([0, 1, 2, 3, 4])


def test_top1_follows_the_outlier():
    est = estimate_pose(SIMS, IDS, OUTLIER_CASE, method="top1")
    assert est.accepted and est.keyframe_id == 0 and est.similarity == pytest.approx(0.9)
    np.testing.assert_array_equal(est.position, [110.0, 5.0, 0.0])
    assert est.neighbours == 1
    np.testing.assert_allclose(np.diag(est.covariance), [0.25, 0.25, 0.25, 1e6, 1e6, math.radians(10) ** 2])


def test_knn_lands_on_the_consistent_neighbours():
    est = estimate_pose(SIMS, IDS, OUTLIER_CASE, method="knn_gaussian", sigma_m=2.0)
    assert est.accepted and est.method == "knn_gaussian" and est.neighbours == 5
    consistent = OUTLIER_CASE.positions[1:]
    assert np.linalg.norm(est.position - consistent.mean(axis=0)) < 0.5
    assert est.keyframe_id in (1, 2, 3, 4)
    assert yaw_of(est.orientation) == pytest.approx(yaw_of(OUTLIER_CASE.orientations[est.keyframe_id]))
    cov = est.covariance
    assert np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
    # The spread of the four (about 0.5 m) sets the variance, not the 100 m outlier.
    assert 0.25 <= cov[0, 0] < 1.0 and 0.25 <= cov[1, 1] < 1.0 and cov[2, 2] == pytest.approx(0.25)
    assert cov[3, 3] == cov[4, 4] == UNESTIMATED_VARIANCE
    assert math.radians(10) ** 2 <= cov[5, 5] < math.radians(20) ** 2


def test_yaw_spread_is_circular():
    spread = map_at([[0.0, 0.0, 0.0]] * 2, [179.0, -179.0])
    est = estimate_pose(np.array([0.9, 0.9]), np.array([0, 1]), spread, min_yaw_std_deg=0.0)
    assert est.covariance[5, 5] == pytest.approx(math.radians(1) ** 2, rel=1e-3)  # 2 degrees apart, not 358


def test_knn_equals_top1_for_one_neighbour_and_padding_is_ignored():
    est = estimate_pose(np.array([0.8, -np.inf]), np.array([2, -1]), OUTLIER_CASE)
    assert est.accepted and est.keyframe_id == 2 and est.neighbours == 1
    np.testing.assert_allclose(est.position, [11.0, 5.0, 0.0])
    np.testing.assert_allclose(np.diag(est.covariance)[:3], [0.25] * 3)


def test_tiny_sigma_reduces_to_the_most_similar_neighbour():
    est = estimate_pose(SIMS, IDS, OUTLIER_CASE, sigma_m=1e-9)
    assert est.keyframe_id == 0
    np.testing.assert_allclose(est.position, OUTLIER_CASE.positions[0])
    # ... but neighbours at the same position still add up: two co-located weak votes beat one strong.
    twins = map_at([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [5.0, 0.0, 0.0]], [0.0, 0.0, 0.0])
    est = estimate_pose(np.array([0.9, 0.6, 0.6]), np.array([0, 1, 2]), twins, sigma_m=1e-9)
    assert est.keyframe_id == 1
    np.testing.assert_allclose(est.position, [5.0, 0.0, 0.0])


def test_neighbours_below_the_threshold_do_not_vote():
    est = estimate_pose(SIMS, IDS, OUTLIER_CASE, sigma_m=2.0, similarity_threshold=0.85)
    assert est.keyframe_id == 0 and est.neighbours == 1


@pytest.mark.parametrize("method", ["top1", "knn_gaussian"])
def test_refusal_below_the_threshold_still_names_the_best_keyframe(method):
    est = estimate_pose(np.array([0.4, 0.3]), np.array([3, 1]), OUTLIER_CASE, method=method)
    assert not est.accepted and est.keyframe_id == 3 and est.similarity == pytest.approx(0.4)
    assert np.all(np.isnan(est.position)) and np.all(np.isnan(est.covariance)) and est.neighbours == 0
    empty = estimate_pose(np.array([-np.inf, -np.inf]), np.array([-1, -1]), OUTLIER_CASE, method=method)
    assert not empty.accepted and empty.keyframe_id == -1 and empty.similarity == -math.inf


def test_works_on_a_real_search_row():
    place_map = map_at([[float(i), 0.0, 0.0] for i in range(6)], [0.0] * 6)
    query = place_map.descriptors[2] * 0.9 + place_map.descriptors[3] * 0.436
    sims, ids = place_map.search((query / np.linalg.norm(query))[None], 4)
    est = estimate_pose(sims[0], ids[0], place_map, sigma_m=1.0, similarity_threshold=0.3)
    assert est.accepted and est.keyframe_id == 2 and 2.0 < est.position[0] < 3.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "nn"}, "method 'nn' is unknown"),
        ({"sigma_m": 0.0}, "sigma_m"),
        ({"sigma_m": math.nan}, "sigma_m"),
        ({"similarity_threshold": 0.0}, "similarity_threshold"),
        ({"similarity_threshold": 1.5}, "similarity_threshold"),
        ({"min_position_std_m": -1.0}, "min_position_std_m"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(InputError, match=message):
        estimate_pose(SIMS, IDS, OUTLIER_CASE, **kwargs)


def test_bad_matches():
    with pytest.raises(InputError, match="one query's row"):
        estimate_pose(SIMS[None], IDS[None], OUTLIER_CASE)
    with pytest.raises(InputError, match="keyframe ids of this map"):
        estimate_pose(SIMS, IDS + 10, OUTLIER_CASE)
