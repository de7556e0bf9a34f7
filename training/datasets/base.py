"""The one shape every dataset reader returns: places seen by a database and by queries.

Readers of MSLS, Pittsburgh, TB-Places and recorded trajectories all convert their own pose
conventions to this planar one (x east / y north or a map frame, metres; yaw counter-clockwise
from +x, radians), so labelling, sampling and evaluation never see a format again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PlaceSet:
    """Images of one side (database or queries) with their camera positions and headings.

    ``yaw`` is NaN where the format has no heading (Pittsburgh). ``tags`` carries one label per
    image that evaluation groups by (the sequence, traverse or condition), "" when unknown.
    """

    paths: tuple[Path, ...]
    xy: np.ndarray  # float64 [N, 2], metres
    yaw: np.ndarray  # float64 [N], radians CCW from +x, NaN = unknown
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.paths)
        if self.xy.shape != (n, 2) or self.yaw.shape != (n,):
            raise ValueError(f"PlaceSet: {n} paths but xy {self.xy.shape} and yaw {self.yaw.shape}")
        if self.tags and len(self.tags) != n:
            raise ValueError(f"PlaceSet: {n} paths but {len(self.tags)} tags")

    def __len__(self) -> int:
        return len(self.paths)

    def tag(self, i: int) -> str:
        return self.tags[i] if self.tags else ""

    def subset(self, index: np.ndarray) -> PlaceSet:
        index = np.asarray(index, dtype=np.int64)
        return PlaceSet(
            tuple(self.paths[i] for i in index),
            self.xy[index],
            self.yaw[index],
            tuple(self.tags[i] for i in index) if self.tags else (),
        )


@dataclass(frozen=True)
class PlaceDataset:
    """A database and its queries in one metric frame (one MSLS city, one Pittsburgh split...).

    ``positive_m`` / ``positive_deg`` are the evaluation thresholds of the protocol (MSLS: 25 m and
    40 degrees; Pittsburgh: 25 m, no heading); ``train_positive_m`` the stricter training one
    (Pittsburgh's "non-trivial" 10 m). ``radius_m`` / ``fov_deg`` parametrise the graded
    field-of-view labels of GCL (MSLS: 50 m, 90 degrees; TB-Places: 3.5 m, 90 degrees).
    """

    name: str
    database: PlaceSet
    queries: PlaceSet
    positive_m: float = 25.0
    positive_deg: float | None = None
    train_positive_m: float = 10.0
    radius_m: float = 50.0
    fov_deg: float = 90.0
    meta: dict = field(default_factory=dict)  # numpy arrays here are per query (one row each)

    def subset(self, database: np.ndarray | None = None, queries: np.ndarray | None = None) -> PlaceDataset:
        """The same protocol on some database images and/or queries; per-query meta arrays follow."""
        meta = self.meta
        if queries is not None:
            meta = {k: v[queries] if isinstance(v, np.ndarray) else v for k, v in meta.items()}
        return replace(
            self,
            database=self.database if database is None else self.database.subset(database),
            queries=self.queries if queries is None else self.queries.subset(queries),
            meta=meta,
        )
