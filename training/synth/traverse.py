"""What every writer of the synthetic world needs to know about the world and its traverses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROLES = ("database", "query")


@dataclass(frozen=True)
class GeoReference:
    """Places the planar map frame on the Earth so writers can emit UTM and WGS84 coordinates.

    Map x points east and y north; map (0, 0) is UTM (origin_easting, origin_northing).
    """

    utm_zone: int
    northern: bool
    origin_easting: float
    origin_northing: float

    def to_utm(self, xy: np.ndarray) -> np.ndarray:
        """Map-frame positions [N, 2] to UTM [N, 2] (easting, northing)."""
        return np.asarray(xy, dtype=np.float64) + (self.origin_easting, self.origin_northing)


@dataclass(frozen=True)
class Camera:
    """Pinhole camera mounted on the robot looking along the body +x axis, level with the ground."""

    width: int
    height: int
    hfov_deg: float
    mount_height_m: float

    @property
    def fx(self) -> float:
        return (self.width / 2.0) / np.tan(np.radians(self.hfov_deg) / 2.0)

    @property
    def cx(self) -> float:
        return (self.width - 1) / 2.0

    @property
    def cy(self) -> float:
        return (self.height - 1) / 2.0


@dataclass(frozen=True)
class Traverse:
    """One drive along a route under one appearance condition, with exact poses.

    Poses are of the robot body in the map frame: position in metres, yaw in radians counter-
    clockwise from +x (east). The camera sits ``Camera.mount_height_m`` above the body origin.
    """

    name: str
    condition: str
    role: str
    route: str
    stamps_ns: np.ndarray  # int64 [N], strictly increasing
    xy: np.ndarray  # float64 [N, 2]
    yaw: np.ndarray  # float64 [N]

    def __post_init__(self) -> None:
        n = len(self.stamps_ns)
        if self.role not in ROLES:
            raise ValueError(f"traverse {self.name}: role must be one of {ROLES}, got {self.role!r}")
        if self.xy.shape != (n, 2) or self.yaw.shape != (n,):
            raise ValueError(f"traverse {self.name}: pose arrays do not match {n} stamps")
        if n > 1 and not np.all(np.diff(self.stamps_ns) > 0):
            raise ValueError(f"traverse {self.name}: stamps must be strictly increasing")

    def __len__(self) -> int:
        return len(self.stamps_ns)


@dataclass(frozen=True)
class WorldInfo:
    """Metadata shared by all writers: where the world is, which camera saw it, its name."""

    city: str
    seed: int
    preset: str
    camera: Camera
    geo: GeoReference
    traverses: tuple[Traverse, ...]
