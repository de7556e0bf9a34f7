"""Thread-safe hand-over of the localizer's inputs from executor callbacks to its worker thread."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np

from vpr_ros.io.pose_sync import stamp_ns
from vpr_ros.localization.robot_pose import Pose


class Mailboxes:
    """The newest frame of each camera; putting over an untaken one counts a drop.

    A backend slower than the cameras therefore always works on the newest frames and the
    overwritten ones are counted as dropped, never queued (depth-1 QoS does the same inside DDS).
    :meth:`take` hands the worker one time step: every camera's waiting frame, after waiting up to
    ``gather_s`` from the first one for the cameras that have none yet (cameras are rarely
    triggered together; without the wait each would be answered alone and nothing fused).
    """

    def __init__(self, cameras: int, gather_s: float = 0.0) -> None:
        self._cond = threading.Condition()
        self._items: list[tuple[Any, float] | None] = [None] * cameras
        self.gather_s = gather_s
        self.dropped = 0
        self.closed = False

    def put(self, camera: int, item: Any) -> None:
        with self._cond:
            if self._items[camera] is not None:
                self.dropped += 1
            self._items[camera] = (item, time.monotonic())
            self._cond.notify()

    def take(self, timeout: float = 0.5) -> list[tuple[int, Any, float]]:
        """``(camera, item, monotonic time received)`` of every waiting frame (empty after a
        timeout or close)."""
        with self._cond:
            if not any(self._items) and not self.closed:
                self._cond.wait(timeout)
            if any(self._items) and len(self._items) > 1:
                deadline = time.monotonic() + self.gather_s
                while not all(self._items) and not self.closed and time.monotonic() < deadline:
                    self._cond.wait(deadline - time.monotonic())
            taken = [(camera, *item) for camera, item in enumerate(self._items) if item is not None]
            self._items = [None] * len(self._items)
            return taken

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class OdometryHistory:
    """The recent odometry poses (nav_msgs/Odometry), for the pose nearest an image's stamp (the
    image is not held back waiting for odometry: without a pose close enough there is none)."""

    def __init__(self, size: int = 500) -> None:
        self._lock = threading.Lock()
        self._poses: deque[tuple[int, np.ndarray, np.ndarray]] = deque(maxlen=size)

    def add(self, msg: Any) -> None:
        pose = msg.pose.pose
        position = np.array([pose.position.x, pose.position.y, pose.position.z])
        q = pose.orientation
        orientation = np.array([q.x, q.y, q.z, q.w])
        if np.all(np.isfinite(position)) and np.all(np.isfinite(orientation)) and np.any(orientation):
            with self._lock:
                self._poses.append((stamp_ns(msg.header), position, orientation))

    def nearest(self, stamp: int, tolerance_ns: int = 500_000_000) -> Pose | None:
        with self._lock:
            poses = list(self._poses)
        if not poses:
            return None
        best = min(poses, key=lambda pose: abs(pose[0] - stamp))
        return (best[1], best[2]) if abs(best[0] - stamp) <= tolerance_ns else None
