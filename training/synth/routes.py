"""Routes through the street grid and the traverses that drive them.

A route is a list of street intersections; the path follows street centrelines with rounded
corners. A traverse samples the path at a jittered spacing, with a lateral offset (another lane)
and a slowly varying heading error, so no query frame coincides with a database frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.synth.world import TownLayout


@dataclass(frozen=True)
class Path:
    """A dense polyline with arc length and heading, queried by arc length."""

    points: np.ndarray  # [M, 2]
    arclen: np.ndarray  # [M]

    @property
    def length(self) -> float:
        return float(self.arclen[-1])

    def at(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions [N, 2] and headings [N] at arc lengths ``s`` (clamped to the path)."""
        s = np.clip(np.asarray(s, np.float64), 0.0, self.length)
        xy = np.stack([np.interp(s, self.arclen, self.points[:, i]) for i in (0, 1)], axis=1)
        ahead = np.stack(
            [np.interp(np.minimum(s + 0.5, self.length), self.arclen, self.points[:, i]) for i in (0, 1)], 1
        )
        behind = np.stack(
            [np.interp(np.maximum(s - 0.5, 0.0), self.arclen, self.points[:, i]) for i in (0, 1)], 1
        )
        d = ahead - behind
        return xy, np.arctan2(d[:, 1], d[:, 0])


def route_path(layout: TownLayout, waypoints: list[tuple[int, int]], corner_radius_m: float = 4.0) -> Path:
    """The path through the intersections ``waypoints`` (grid indices), corners rounded.

    Consecutive waypoints must share a row or a column of the grid (they are joined along a street).
    """
    corners = np.asarray(waypoints, np.float64) * layout.pitch
    for (ax, ay), (bx, by) in zip(waypoints[:-1], waypoints[1:]):
        if (ax != bx) == (ay != by):
            raise ValueError(f"route leg {(ax, ay)} -> {(bx, by)} does not follow one street")
    step = 0.1
    dense = [corners[0]]
    for a, b in zip(corners[:-1], corners[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        dense.extend(a + (b - a) * (i / n) for i in range(1, n + 1))
    pts = np.asarray(dense)
    half = int(corner_radius_m / step)
    padded = np.concatenate([np.repeat(pts[:1], half, 0), pts, np.repeat(pts[-1:], half, 0)])
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    smooth = np.stack([np.convolve(padded[:, i], kernel, mode="valid") for i in (0, 1)], axis=1)
    seg = np.linalg.norm(np.diff(smooth, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-9])
    smooth = smooth[keep]
    return Path(smooth, np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(smooth, axis=0), axis=1))]))


def smooth_walk(rng: np.random.Generator, n: int, sigma: float, correlation_frames: float) -> np.ndarray:
    """A zero-mean, slowly varying random signal of standard deviation ~sigma (low-passed noise)."""
    if n == 0:
        return np.zeros(0)
    white = rng.standard_normal(n + 4 * int(correlation_frames) + 1)
    width = max(1, int(correlation_frames))
    kernel = np.exp(-0.5 * (np.arange(-2 * width, 2 * width + 1) / width) ** 2)
    walk = np.convolve(white, kernel / np.sqrt((kernel**2).sum()), mode="valid")[:n]
    return sigma * walk


@dataclass(frozen=True)
class Drive:
    """How one traverse drives its path."""

    spacing_m: float  # mean distance between frames
    lateral_offset_m: float  # positive = right of the centreline
    heading_jitter_deg: float
    speed_mps: float


def sample_drive(path: Path, drive: Drive, rng: np.random.Generator, start_ns: int):
    """Frame stamps [N] int64 ns, body positions [N, 2] and yaws [N] along ``path``."""
    steps = drive.spacing_m * rng.uniform(0.8, 1.2, size=int(path.length / drive.spacing_m * 1.3) + 2)
    s = np.concatenate([[rng.uniform(0, drive.spacing_m)], steps]).cumsum()
    s = s[s <= path.length]
    xy, heading = path.at(s)
    normal_right = np.stack([np.sin(heading), -np.cos(heading)], axis=1)
    xy = xy + drive.lateral_offset_m * normal_right
    yaw = heading + np.radians(smooth_walk(rng, len(s), drive.heading_jitter_deg, 15.0))
    yaw = (yaw + np.pi) % (2 * np.pi) - np.pi
    stamps = start_ns + np.rint(s / drive.speed_mps * 1e9).astype(np.int64)
    return stamps, xy, yaw, s
