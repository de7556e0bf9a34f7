"""FoV overlap (GCL's graded similarity) against the paper's stated values and exact polygons."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import Polygon

from training.datasets.base import PlaceSet
from training.errors import UserError
from training.similarity import binary_positives, fov_overlap, graded_labels

R, FOV = 50.0, np.radians(90.0)


def one(xy_a, yaw_a_deg, xy_b, yaw_b_deg, radius=R, fov=FOV) -> float:
    return float(
        fov_overlap(
            np.array([xy_a], float),
            np.radians([yaw_a_deg]),
            np.array([xy_b], float),
            np.radians([yaw_b_deg]),
            radius,
            fov,
        )[0]
    )


def sector_polygon(xy, yaw, radius, fov, segments=4000) -> Polygon:
    angles = np.linspace(yaw - fov / 2, yaw + fov / 2, segments)
    arc = np.asarray(xy) + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return Polygon([tuple(xy), *map(tuple, arc)])


def test_values_stated_in_the_gcl_paper():
    """r = 50 m, theta = 90 deg: 55.63 % (same spot, 40 deg apart) and 45.01 % (25 m apart side by
    side); theta = 80 deg: 50 %. The exact sector geometry gives 55.56 %, 44.97 %, 50.00 %; the
    paper approximated arcs by polygons. IoU would give 38.5 % and 29.0 % instead."""
    assert one((0, 0), 0, (0, 0), 40) == pytest.approx(50 / 90, abs=1e-9)
    assert one((0, 0), 0, (0, 0), 40) == pytest.approx(0.5563, abs=1e-3)
    assert one((0, 0), 90, (25, 0), 90) == pytest.approx(0.4501, abs=1e-3)
    assert one((0, 0), 0, (0, 0), 40, fov=np.radians(80)) == pytest.approx(0.5, abs=1e-9)


def test_limits_and_symmetry():
    assert one((3, 4), 30, (3, 4), 30) == pytest.approx(1.0, abs=1e-9)
    assert one((0, 0), 0, (0, 0), 180) == 0.0  # back to back
    assert one((0, 0), 0, (100.0, 0), 180) == 0.0  # 2r apart, facing each other
    assert one((0, 0), 0, (99.0, 0), 180) > 0.0
    rng = np.random.default_rng(3)
    a, b = rng.uniform(-40, 40, (200, 2)), rng.uniform(-40, 40, (200, 2))
    ya, yb = rng.uniform(-np.pi, np.pi, 200), rng.uniform(-np.pi, np.pi, 200)
    np.testing.assert_allclose(
        fov_overlap(a, ya, b, yb, R, FOV), fov_overlap(b, yb, a, ya, R, FOV), atol=1e-9
    )
    shift = fov_overlap(a + 1000, ya + 2 * np.pi, b + 1000, yb - 2 * np.pi, R, FOV)
    np.testing.assert_allclose(shift, fov_overlap(a, ya, b, yb, R, FOV), atol=1e-9)


@pytest.mark.parametrize("fov_deg", [60.0, 90.0, 150.0, 180.0])
def test_matches_exact_polygon_intersection(fov_deg):
    rng = np.random.default_rng(int(fov_deg))
    n = 80
    a, b = rng.uniform(-60, 60, (n, 2)), rng.uniform(-60, 60, (n, 2))
    b[: n // 4] = a[: n // 4] + rng.normal(0, 2, (n // 4, 2))  # many near-coincident cameras too
    ya, yb = rng.uniform(-np.pi, np.pi, n), rng.uniform(-np.pi, np.pi, n)
    fov = np.radians(fov_deg)
    ours = fov_overlap(a, ya, b, yb, R, fov)
    ref = np.array(
        [
            sector_polygon(a[i], ya[i], R, fov).intersection(sector_polygon(b[i], yb[i], R, fov)).area
            / (fov / 2 * R**2)
            for i in range(n)
        ]
    )
    assert (ref > 0.05).sum() > n // 5  # the sample covers real overlaps
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_rejects_bad_arguments():
    z = np.zeros((2, 2))
    with pytest.raises(ValueError, match="same length"):
        fov_overlap(z, np.zeros(2), np.zeros((3, 2)), np.zeros(3), R, FOV)
    with pytest.raises(ValueError, match="shape"):
        fov_overlap(np.zeros(2), np.zeros(2), z, np.zeros(2), R, FOV)
    with pytest.raises(ValueError, match="0 < fov <= pi"):
        fov_overlap(z, np.zeros(2), z, np.zeros(2), R, 4.0)
    with pytest.raises(ValueError, match="headings must be finite"):
        fov_overlap(z, np.array([0, np.nan]), z, np.zeros(2), R, FOV)


def _street(n: int, y: float, yaw: float, step: float = 2.0) -> PlaceSet:
    xy = np.stack([np.arange(n) * step, np.full(n, y)], axis=1)
    return PlaceSet(tuple(f"{y}_{i}.jpg" for i in range(n)), xy, np.full(n, yaw))


def test_graded_labels_equal_brute_force_and_prune_far_pairs():
    database = _street(60, 0.0, 0.0)
    queries = _street(40, 1.5, 0.1, step=3.1)
    labels = graded_labels(database, queries, radius=10.0, fov=FOV)
    assert labels.shape == (40, 60)
    qi, di = np.meshgrid(np.arange(40), np.arange(60), indexing="ij")
    brute = fov_overlap(
        queries.xy[qi.ravel()],
        queries.yaw[qi.ravel()],
        database.xy[di.ravel()],
        database.yaw[di.ravel()],
        10.0,
        FOV,
    ).reshape(40, 60)
    np.testing.assert_allclose(labels.toarray(), brute, atol=1e-6)
    assert labels.nnz == (brute > 0).sum() < brute.size / 3


def test_graded_labels_need_headings():
    pitts = PlaceSet(("a.jpg",), np.zeros((1, 2)), np.array([np.nan]))
    with pytest.raises(UserError, match="need camera headings"):
        graded_labels(pitts, pitts, 10.0, FOV)


def test_binary_positives_distance_and_heading():
    database = _street(10, 0.0, 0.0)
    queries = PlaceSet(("q0", "q1"), np.array([[4.0, 1.0], [4.0, 1.0]]), np.array([0.0, np.pi]))
    by_distance = binary_positives(database, queries, 3.0)
    assert [list(p) for p in by_distance] == [[1, 2, 3], [1, 2, 3]]
    by_heading = binary_positives(database, queries, 3.0, angle_deg=40)
    assert [list(p) for p in by_heading] == [[1, 2, 3], []]
