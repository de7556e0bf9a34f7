"""When a place-recognition answer is trusted enough to move the robot: the fix gate.

``map -> odom`` on TF and an ``/initialpose`` for AMCL reset what the rest of the robot believes,
so one look-alike frame must not do it. A **fix** is an answer that is

- accepted (its similarity, or the sequence filter's confidence, is above the unknown-place
  threshold) and, when the sequence filter is on, the filter's own (``filtered``: it has at least
  ``sequence.min_frames`` frames of history), and
- **consistent**: the last ``consistent_frames`` such answers in a row agree with the robot's own
  motion. With odometry, each answer is where the previous one plus the odometry increment says the
  robot is, within ``max_disagreement_m``; without odometry, within ``max_disagreement_m`` plus
  ``max_speed_mps`` times the time between the frames. Any refused or inconsistent answer restarts
  the count.

This is the check AMCL users otherwise write by hand (ROS_NOTES.md: AMCL re-initialises its
particle filter on every ``/initialpose``, so only a confident pose may be sent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.geometry import compose, inverse
from vpr_ros.localization.robot_pose import Pose


@dataclass(frozen=True)
class GateSettings:
    consistent_frames: int = 2
    max_disagreement_m: float = 3.0
    max_speed_mps: float = 2.0

    def check(self, prefix: str = "relocalization.") -> None:
        if self.consistent_frames < 1:
            raise InputError(f"{prefix}consistent_frames must be >= 1, got {self.consistent_frames}")
        if not self.max_disagreement_m > 0:
            raise InputError(f"{prefix}max_disagreement_m must be > 0, got {self.max_disagreement_m}")


class FixGate:
    """Counts consecutive answers that agree with the robot's motion; see the module doc."""

    def __init__(self, settings: GateSettings) -> None:
        settings.check()
        self.settings = settings
        self.streak = 0
        self._last: tuple[int, Pose, Pose | None] | None = None  # stamp, base in map, base in odom

    def reset(self) -> None:
        self.streak = 0
        self._last = None

    def update(
        self, stamp_ns: int, trusted: bool, base_in_map: Pose | None, base_in_odom: Pose | None
    ) -> bool:
        """Feed one answer (``trusted``: accepted, and the filter's when the filter is on; the pose
        is only read then) with the odometry pose at its stamp, if any; True when it is a fix."""
        if not trusted or base_in_map is None:
            self.reset()
            return False
        if self._last is not None and not self._agrees(stamp_ns, base_in_map, base_in_odom):
            self.streak = 0
        self.streak += 1
        self._last = (stamp_ns, base_in_map, base_in_odom)
        return self.streak >= self.settings.consistent_frames

    def _agrees(self, stamp_ns: int, base_in_map: Pose, base_in_odom: Pose | None) -> bool:
        last_stamp, last_map, last_odom = self._last
        if base_in_odom is not None and last_odom is not None:
            moved = compose(*inverse(*last_odom), *base_in_odom)
            predicted = compose(*last_map, *moved)[0]
            allowed = self.settings.max_disagreement_m
        else:
            predicted = last_map[0]
            elapsed = max(0.0, (stamp_ns - last_stamp) * 1e-9)
            allowed = self.settings.max_disagreement_m + self.settings.max_speed_mps * elapsed
        gap = np.linalg.norm(np.asarray(base_in_map[0])[:2] - np.asarray(predicted)[:2])
        return bool(gap <= allowed)


class RateLimit:
    """At most one event per ``min_interval_s`` (monotonic seconds); 0 = no limit."""

    def __init__(self, min_interval_s: float) -> None:
        self.min_interval_s = float(min_interval_s)
        self._last: float | None = None

    def ready(self, now: float) -> bool:
        return self._last is None or now - self._last >= self.min_interval_s

    def mark(self, now: float) -> None:
        self._last = now
