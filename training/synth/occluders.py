"""Moving cars and pedestrians near a traverse's path: the occluders of real street imagery.

Each occluder moves along the traverse's path (so it stays on the streets), at a lateral offset
that puts it in the oncoming lane, parked at the kerb, or on a sidewalk. It is placed per frame
at the frame's time, so it moves between frames like real traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.synth.routes import Path
from training.synth.world import Primitives, Town

CAR_LENGTH_M, CAR_WIDTH_M, CAR_HEIGHT_M = 4.2, 1.8, 1.5
PERSON_RADIUS_M, PERSON_HEIGHT_M = 0.3, 1.75


@dataclass(frozen=True)
class Occluders:
    is_car: np.ndarray  # [N] bool
    s0: np.ndarray  # arc length at t = 0
    speed: np.ndarray  # m/s along the path (negative = against it)
    offset: np.ndarray  # lateral offset, positive = right of the path
    texture: np.ndarray  # index into the town's car or person textures


def spawn(town: Town, path: Path, per_100m: float, rng: np.random.Generator) -> Occluders:
    """Draw ``per_100m`` occluders per 100 m of path: parked and oncoming cars, walkers."""
    n = int(rng.poisson(per_100m * path.length / 100.0))
    street_half = town.layout.street_m / 2
    is_car = rng.random(n) < 0.6
    parked = rng.random(n) < 0.5
    side = rng.choice([-1.0, 1.0], n)
    offset = np.where(is_car, np.where(parked, side * (street_half - 3.2), -2.2), side * (street_half - 0.6))
    speed = np.where(is_car, np.where(parked, 0.0, -rng.uniform(5, 10, n)), rng.uniform(-1.5, 1.5, n))
    n_tex = np.where(is_car, len(town.car_textures), len(town.person_textures))
    return Occluders(
        is_car, rng.uniform(0, path.length, n), speed, offset, rng.integers(0, 1 << 30, n) % n_tex
    )


def primitives_at(town: Town, path: Path, occ: Occluders, time_s: float) -> Primitives:
    """The occluders' primitives at ``time_s`` after the traverse started."""
    s = occ.s0 + occ.speed * time_s
    on_path = (s > 0) & (s < path.length)
    xy, heading = path.at(s[on_path])
    right = np.stack([np.sin(heading), -np.cos(heading)], axis=1)
    centre = xy + occ.offset[on_path, None] * right
    fwd = np.stack([np.cos(heading), np.sin(heading)], axis=1)
    cars, tex = occ.is_car[on_path], occ.texture[on_path]
    parts = [_boxes(town, centre[cars], fwd[cars], right[cars], tex[cars])]
    parts.append(_people(town, centre[~cars], tex[~cars]))
    return Primitives.concat(parts)


def _boxes(town: Town, centre, fwd, right, tex) -> Primitives:
    n = len(centre)
    hl, hw = CAR_LENGTH_M / 2, CAR_WIDTH_M / 2
    corners = [centre + sx * hl * fwd + sy * hw * right for sx, sy in ((1, 1), (-1, 1), (-1, -1), (1, -1))]
    a = np.concatenate([corners[i] for i in range(4)])
    b = np.concatenate([corners[(i + 1) % 4] for i in range(4)])
    u0, tw, th = (np.asarray([town.car_textures[t][i] for t in np.tile(tex, 4)], np.int64) for i in range(3))
    z = np.zeros(4 * n)
    return Primitives(
        np.zeros(4 * n, np.int8), a.reshape(-1, 2), b.reshape(-1, 2), z, z + CAR_HEIGHT_M, u0, u0, tw, th
    )


def _people(town: Town, centre, tex) -> Primitives:
    n = len(centre)
    u0, tw, th = (np.asarray([town.person_textures[t][i] for t in tex], np.int64) for i in range(3))
    b = np.zeros((n, 2))
    b[:, 0] = PERSON_RADIUS_M
    z = np.zeros(n)
    return Primitives(np.ones(n, np.int8), centre.reshape(-1, 2), b, z, z + PERSON_HEIGHT_M, u0, u0, tw, th)
