"""Speed and accuracy of the graded FoV labels (training.similarity).

    .venv/bin/python benchmarks/fov_labels.py [--pairs 200000] [--city-images 20000]

Prints pairs/s of ``fov_overlap`` on random nearby pairs, the time to label an MSLS-city-sized
set with k-d-tree pruning (``graded_labels``), and the error against exact polygon intersections
computed by shapely (arcs of 4,000 segments).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from shapely.geometry import Polygon

from training.datasets.base import PlaceSet
from training.similarity import fov_overlap, graded_labels


def _sector(xy, yaw, radius, fov, segments=4000) -> Polygon:
    angles = np.linspace(yaw - fov / 2, yaw + fov / 2, segments)
    return Polygon([tuple(xy), *zip(xy[0] + radius * np.cos(angles), xy[1] + radius * np.sin(angles))])


def _street_city(n: int, rng: np.random.Generator) -> PlaceSet:
    """Images along a grid of streets 100 m apart, headings along the street +- noise."""
    along = rng.uniform(0, 2000, n)
    street = rng.integers(0, 20, n) * 100.0
    horizontal = rng.random(n) < 0.5
    xy = np.where(horizontal[:, None], np.stack([along, street], 1), np.stack([street, along], 1))
    yaw = np.where(horizontal, 0.0, np.pi / 2) + rng.choice([0.0, np.pi], n) + rng.normal(0, 0.2, n)
    return PlaceSet(tuple(str(i) for i in range(n)), xy + rng.normal(0, 2, (n, 2)), yaw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--city-images", type=int, default=20_000)
    parser.add_argument("--radius", type=float, default=50.0)
    parser.add_argument("--fov-deg", type=float, default=90.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    r, fov = args.radius, np.radians(args.fov_deg)
    print(f"machine: {platform.machine()}, python {platform.python_version()}")
    print(f"r = {r} m, fov = {args.fov_deg} deg")

    a = rng.uniform(0, 2 * r, (args.pairs, 2))
    b = rng.uniform(0, 2 * r, (args.pairs, 2))
    ya, yb = rng.uniform(-np.pi, np.pi, args.pairs), rng.uniform(-np.pi, np.pi, args.pairs)
    start = time.perf_counter()
    fov_overlap(a, ya, b, yb, r, fov)
    pair_s = time.perf_counter() - start

    n_db = args.city_images
    database, queries = _street_city(n_db, rng), _street_city(n_db // 4, rng)
    start = time.perf_counter()
    labels = graded_labels(database, queries, r, fov)
    city_s = time.perf_counter() - start

    m = 300
    ours = fov_overlap(a[:m], ya[:m], b[:m], yb[:m], r, fov)
    ref = np.array(
        [
            _sector(a[i], ya[i], r, fov).intersection(_sector(b[i], yb[i], r, fov)).area / (fov / 2 * r**2)
            for i in range(m)
        ]
    )
    err = np.abs(ours - ref)
    print("| measure | value |")
    print("|---|---|")
    print(f"| fov_overlap, random pairs within 2r | {args.pairs / pair_s:,.0f} pairs/s |")
    city = f"graded_labels, {n_db:,} database x {n_db // 4:,} queries"
    print(f"| {city} | {city_s:.1f} s, {labels.nnz:,} overlapping pairs |")
    overlapping = int((ref > 0).sum())
    stats = f"max {err.max():.1e}, mean {err.mean():.1e}"
    print(f"| error vs shapely ({m} pairs, {overlapping} overlap) | {stats} |")


if __name__ == "__main__":
    main()
