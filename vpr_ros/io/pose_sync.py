"""Pair camera images with the pose nearest in stamp: one buffer for the mapping node and for bags.

Over DDS an image and the odometry of the same instant arrive in any order (separate topics,
separate QoS, a slow camera driver), and a bag replays them in receive order. ``message_filters``
is not on PyPI (ROS_NOTES.md §3.6), so this small buffer does the stamp matching for both paths;
feeding it the same messages in any interleaving gives the same pairs as long as the poses
themselves arrive in stamp order.

Rule: an image at stamp ``t`` is paired with the pose nearest ``t`` within ``tolerance_s`` (a tie
goes to the earlier pose). The choice is certain once a pose at or after ``t`` has arrived: later
poses can only be farther away. Until then the image waits (at most ``max_pending`` images; the
oldest is dropped first, so a robot whose odometry stalls keeps its newest frames). An image with
no pose within tolerance is dropped. Every outcome is counted, so a node's diagnostics and the
offline tool can say why frames went missing.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.geometry import quat_normalize

__all__ = ["ImagePosePairer", "Pair"]


@dataclass(frozen=True)
class Pair:
    """An image payload with the pose chosen for it (position [3] and quaternion x, y, z, w [4])."""

    stamp_ns: int
    payload: Any
    position: np.ndarray
    orientation: np.ndarray
    pose_stamp_ns: int


def stamp_ns(header: Any) -> int:
    """A std_msgs/Header's stamp in integer nanoseconds: the key images and poses are paired by
    (rclpy and rosbags messages alike)."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _vector(values: Any, size: int, name: str) -> np.ndarray:
    """A finite float64 vector of ``size`` values; bad odometry must not reach the map as NaN."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (size,) or not np.isfinite(arr).all():
        raise InputError(f"pose {name} must be {size} finite numbers, got {values!r:.80}")
    return arr


# 50 ms: a 20 Hz odometry is always within half a period of an image; a mapper and an evaluation
# that pair the same recording with this default pair it alike.
DEFAULT_TOLERANCE_S = 0.05


class WaitingImages:
    """Images waiting for their pose: at most ``max_pending`` (the oldest is dropped first, counted
    in ``dropped_overflow``), settled by the subclass's ``_settle`` (``final``: no more poses will
    come) into :class:`Pair` s; ``paired`` and ``dropped_no_pose`` count the outcomes."""

    def __init__(self, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = max_pending
        self._pending: deque[tuple[int, Any]] = deque()
        self.paired = 0
        self.dropped_no_pose = 0
        self.dropped_overflow = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add_image(self, stamp_ns: int, payload: Any) -> list[Pair]:
        """Queue an image; returns its pair at once when the poses known already settle it."""
        self._pending.append((int(stamp_ns), payload))
        if len(self._pending) > self.max_pending:
            self._pending.popleft()
            self.dropped_overflow += 1
        return self._settle(final=False)

    def flush(self) -> list[Pair]:
        """Settle every waiting image with the poses known now (no more poses will come)."""
        return self._settle(final=True)

    def _settle(self, final: bool) -> list[Pair]:
        raise NotImplementedError


class ImagePosePairer(WaitingImages):
    """Stamp matching of images to poses; see the module docstring for the rule.

    ``add_pose`` and ``add_image`` return the pairs they complete (possibly several: one pose can
    settle every waiting image), ``flush`` settles the waiting images with the poses known so far
    (end of a bag, or a node shutting down). Counters: ``paired``, ``dropped_no_pose``,
    ``dropped_overflow``; ``pending`` is the number of images waiting.
    """

    def __init__(self, tolerance_s: float, max_pending: int = 30, pose_history: int = 2000) -> None:
        if not tolerance_s >= 0:
            raise ValueError(f"tolerance_s must be >= 0, got {tolerance_s}")
        if pose_history < 1:
            raise ValueError(f"pose_history must be >= 1, got {pose_history}")
        super().__init__(max_pending)
        self.tolerance_ns = round(tolerance_s * 1e9)
        self.pose_history = pose_history
        self._stamps: list[int] = []
        self._poses: list[tuple[np.ndarray, np.ndarray]] = []

    def add_pose(self, stamp_ns: int, position: Any, orientation: Any) -> list[Pair]:
        """Record a pose (kept sorted by stamp; a repeated stamp replaces the earlier pose; the
        quaternion is normalised) and return the waiting images it settles. A non-finite pose or
        a zero quaternion raises InputError."""
        pose = (_vector(position, 3, "position"), quat_normalize(_vector(orientation, 4, "orientation")))
        stamp_ns = int(stamp_ns)
        i = bisect.bisect_left(self._stamps, stamp_ns)
        if i < len(self._stamps) and self._stamps[i] == stamp_ns:
            self._poses[i] = pose
        else:
            self._stamps.insert(i, stamp_ns)
            self._poses.insert(i, pose)
        if len(self._stamps) > self.pose_history:
            del self._stamps[0], self._poses[0]
        return self._settle(final=False)

    def _settle(self, final: bool) -> list[Pair]:
        """Pairs of the waiting images whose choice is certain (all of them when ``final``)."""
        newest = self._stamps[-1] if self._stamps else None
        pairs, waiting = [], deque()
        for stamp_ns, payload in self._pending:
            if not final and (newest is None or newest < stamp_ns):
                waiting.append((stamp_ns, payload))
                continue
            i = self._nearest(stamp_ns)
            if i is None:
                self.dropped_no_pose += 1
                continue
            position, orientation = self._poses[i]
            pairs.append(Pair(stamp_ns, payload, position, orientation, self._stamps[i]))
        self._pending = waiting
        self.paired += len(pairs)
        return pairs

    def _nearest(self, stamp_ns: int) -> int | None:
        """Index of the pose nearest ``stamp_ns`` within tolerance (earlier one on a tie), or None."""
        i = bisect.bisect_left(self._stamps, stamp_ns)
        candidates = [j for j in (i - 1, i) if 0 <= j < len(self._stamps)]
        best = min(candidates, key=lambda j: abs(self._stamps[j] - stamp_ns), default=None)
        if best is None or abs(self._stamps[best] - stamp_ns) > self.tolerance_ns:
            return None
        return best
