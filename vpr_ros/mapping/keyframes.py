"""Which frames of a recorded trajectory become keyframes of the place map.

A robot at 30 Hz standing still would fill the map with identical images that only compete with
each other at query time, so the mapper keeps a frame when the robot has moved or turned enough
since the last keyframe it kept. How sparse a map may be is a measured trade-off: the
soft-contrastive supplement (Thoma et al., NeurIPS 2020, ``shared/seeds/003_0f186a33bac5d94f.txt``
section 2, "spacing between reference images", Fig. 2) subsamples the reference sequence and
reports top-1 localization accuracy against the spacing between consecutive reference images;
models trained for the route stay accurate as the spacing grows. ``min_distance_m`` is that
spacing; ``min_rotation_deg`` adds a keyframe when the robot turns on the spot, where the view
changes completely without any travel.
"""

from __future__ import annotations

import math

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.geometry import quat_normalize, rotation_angle_deg


class KeyframeSelector:
    """Accept a pose when it is at least ``min_distance_m`` (straight line) OR ``min_rotation_deg``
    away from the last accepted one. The first pose is always accepted; both thresholds 0 accept
    every frame. Measuring from the last *accepted* keyframe (not the previous frame) means slow
    motion still adds keyframes once it has added up."""

    def __init__(self, min_distance_m: float, min_rotation_deg: float) -> None:
        for name, value in (("min_distance_m", min_distance_m), ("min_rotation_deg", min_rotation_deg)):
            if not math.isfinite(value) or value < 0:
                raise InputError(f"keyframe selection: {name} must be a finite number >= 0, got {value}")
        self.min_distance_m = float(min_distance_m)
        self.min_rotation_deg = float(min_rotation_deg)
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def accept(self, position: np.ndarray, orientation: np.ndarray) -> bool:
        """True when this pose should become a keyframe (and it then becomes the reference)."""
        p = np.asarray(position, dtype=np.float64)
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise InputError(f"keyframe selection: position must be 3 finite numbers, got {position!r}")
        q = quat_normalize(orientation)
        if q.shape != (4,):
            raise InputError(f"keyframe selection: orientation must be one quaternion, got {orientation!r}")
        if self._last is not None and not self._far_enough(p, q, *self._last):
            return False
        self._last = (p, q)
        return True

    def _far_enough(self, p: np.ndarray, q: np.ndarray, last_p: np.ndarray, last_q: np.ndarray) -> bool:
        return (
            float(np.linalg.norm(p - last_p)) >= self.min_distance_m
            or rotation_angle_deg(last_q, q) >= self.min_rotation_deg
        )

    def reset(self) -> None:
        """Forget the last keyframe: the next pose is accepted (a new recording, a map reset)."""
        self._last = None
