"""A TF buffer with tf2's lookup semantics, without ROS: robots whose pose is only on /tf.

A robot often publishes its pose only as TF (``map -> odom`` from the localizer, ``odom ->
base_link`` from odometry, sensor mounts on /tf_static), and ``tf2_ros`` is not on PyPI, so this
module keeps the transforms itself. It is fed the same way by the nodes (rclpy messages) and by
bags (rosbags messages): both give a tf2_msgs/TFMessage whose transforms have ``header.frame_id``,
``header.stamp``, ``child_frame_id`` and ``transform.translation`` / ``transform.rotation``.

The rules are tf2's (ros2/geometry2, ``tf2/src/buffer_core.cpp`` and ``tf2/src/cache.cpp``):

* a transform gives the child frame's pose in the parent frame; every frame has one parent, so the
  frames form a tree. ``lookup(target, source, t)`` is ``BufferCore::lookupTransform``: walk from
  both frames up to their common ancestor, compose the edges on the way, invert the target side;
* a dynamic edge is interpolated between the two samples that bracket ``t``: linearly for the
  translation, by slerp for the rotation (``TimeCache::interpolate``); a sample at ``t`` is used
  as is; a stamp outside the buffered span is refused rather than extrapolated ("Lookup would
  require extrapolation into the past / future"), and samples more than ``cache_s`` older than
  an edge's newest are dropped (``TimeCache::pruneList``, default 10 s);
* a static edge (/tf_static) has no time: it holds at every stamp (``StaticCache``);
* frame ids lose a leading '/'; a transform from a frame to itself, or with an empty frame id, a
  non-finite number or a zero quaternion, is refused (tf2 logs and ignores those); an edge that
  switches between static and dynamic starts over, as tf2 reallocates its cache.

Two simplifications, both fine for a recording of one robot: an edge has one parent at a time,
so a frame given a new parent is re-parented for all stamps (the latest message wins; tf2 keeps
the parent per sample), and quaternions are normalised instead of refused when they drift off
unit norm (odometry drifts, the direction is still the rotation).

:class:`ImageTransformPairer` pairs camera images with a frame's pose at their stamps, waiting
until :meth:`TransformBuffer.settled` says no later message can change the answer, which is what
a tf2 user does with ``canTransform`` or a ``tf2_ros::MessageFilter``.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.geometry import compose, inverse, quat_normalize
from vpr_ros.io.pose_sync import Pair, WaitingImages, stamp_ns

__all__ = ["ImageTransformPairer", "TransformBuffer", "TransformUnavailable", "clean_frame_id"]

_IDENTITY = (np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))
_MIN_NORM = 1e-12  # as vpr_ros.geometry: below it a quaternion is an unset one, not a rotation


class TransformUnavailable(LookupError):
    """The buffer cannot answer a lookup (yet): unknown or unconnected frames, or a stamp outside
    the buffered span. Not an InputError: more messages may make the lookup possible."""


def clean_frame_id(name: str, what: str = "frame id") -> str:
    """A frame id as tf2 keys it: without a leading '/'; an empty one is an InputError."""
    stripped = name[1:] if name.startswith("/") else name
    if not stripped:
        raise InputError(f"{what} is empty ({name!r})")
    return stripped


@dataclass
class _Edge:
    """The transforms of one child frame in its parent, sorted by stamp (one sample when static)."""

    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    poses: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def _slerp(q0: np.ndarray, q1: np.ndarray, ratio: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions along the shorter arc (q and -q are one rotation,
    as in tf2's ``slerp``). The angle comes from atan2, exact for nearly equal rotations too."""
    if np.dot(q0, q1) < 0:
        q1 = -q1
    angle = 2.0 * np.arctan2(np.linalg.norm(q1 - q0), np.linalg.norm(q1 + q0))
    if angle == 0.0:
        return q0
    return quat_normalize((np.sin((1.0 - ratio) * angle) * q0 + np.sin(ratio * angle) * q1) / np.sin(angle))


def _numbers(values: Sequence[float], size: int, what: str) -> tuple[float, ...]:
    """``size`` finite floats. Plain Python on purpose: a /tf message carries a robot's every joint
    at tens of Hz, and numpy's per-call overhead on 3 or 4 numbers would dominate reading a bag."""
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != size or not all(map(math.isfinite, numbers)):
        raise InputError(f"{what} must be {size} finite numbers, got {values!r:.80}")
    return numbers


class TransformBuffer:
    """Transforms between named frames; see the module docstring for the rules.

    ``add`` and ``add_message`` record transforms, ``lookup`` answers "where is ``source`` in
    ``target`` at this stamp", ``settled`` says whether that answer is final. ``rejected`` counts
    the transforms ``add_message`` skipped as invalid, ``first_rejection`` says why the first was.
    """

    def __init__(self, cache_s: float = 10.0) -> None:
        if not cache_s > 0:
            raise ValueError(f"cache_s must be > 0, got {cache_s}")
        self.cache_ns = round(cache_s * 1e9)
        self._edges: dict[str, _Edge] = {}
        self._frames: set[str] = set()
        self.rejected = 0
        self.first_rejection: str | None = None

    def __contains__(self, frame: object) -> bool:
        return isinstance(frame, str) and frame.removeprefix("/") in self._frames

    def frames(self) -> list[str]:
        """Every frame a transform has named (as parent or child), sorted."""
        return sorted(self._frames)

    def add(
        self,
        parent: str,
        child: str,
        stamp_ns: int,
        translation: Sequence[float],
        rotation: Sequence[float],
        static: bool = False,
    ) -> None:
        """Record ``child``'s pose in ``parent`` (translation [3], quaternion x, y, z, w [4]) at
        ``stamp_ns`` (ignored when ``static``). An invalid transform raises InputError; a new
        parent, or a switch between static and dynamic, replaces the child's earlier samples."""
        parent, child = clean_frame_id(parent, "parent frame id"), clean_frame_id(child, "child frame id")
        if parent == child:
            raise InputError(f"transform from frame {parent!r} to itself")
        what = f"transform {parent!r} -> {child!r}"
        position = np.array(_numbers(translation, 3, f"{what}: translation"))
        quaternion = _numbers(rotation, 4, f"{what}: rotation")
        norm = math.hypot(*quaternion)
        if not _MIN_NORM < norm < math.inf:
            raise InputError(f"{what}: rotation {rotation!r:.80} is a zero quaternion, not a rotation")
        orientation = np.array(quaternion) / norm
        edge = self._edges.get(child)
        if edge is None or edge.parent != parent or edge.static != static:
            edge = self._edges[child] = _Edge(parent, static)
            self._frames.update((parent, child))
        if static:
            edge.stamps, edge.poses = [0], [(position, orientation)]
            return
        stamp_ns = int(stamp_ns)
        i = bisect.bisect_left(edge.stamps, stamp_ns)
        if i < len(edge.stamps) and edge.stamps[i] == stamp_ns:
            edge.poses[i] = (position, orientation)
        else:
            edge.stamps.insert(i, stamp_ns)
            edge.poses.insert(i, (position, orientation))
        expired = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self.cache_ns)
        del edge.stamps[:expired], edge.poses[:expired]

    def add_message(self, msg: Any, static: bool) -> int:
        """Record every transform of a tf2_msgs/TFMessage (from /tf_static when ``static``); returns
        how many were valid. Invalid ones are skipped and counted in ``rejected``."""
        valid = 0
        for transform in msg.transforms:
            t, r = transform.transform.translation, transform.transform.rotation
            try:
                self.add(
                    transform.header.frame_id,
                    transform.child_frame_id,
                    stamp_ns(transform.header),
                    (t.x, t.y, t.z),
                    (r.x, r.y, r.z, r.w),
                    static,
                )
            except InputError as exc:
                self.rejected += 1
                self.first_rejection = self.first_rejection or str(exc)
                continue
            valid += 1
        return valid

    def lookup(self, target: str, source: str, stamp_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """The pose of ``source`` in ``target`` at ``stamp_ns``: position [3] and unit quaternion
        x, y, z, w [4], as tf2's ``lookup_transform(target, source, time)``. Raises
        TransformUnavailable for unknown or unconnected frames and for stamps outside the span (an
        empty frame id is an InputError)."""
        target, source = clean_frame_id(target, "target frame id"), clean_frame_id(source, "source frame id")
        if target == source:
            return _IDENTITY[0].copy(), _IDENTITY[1].copy()
        source_side, target_side = self._path(target, source)
        where = f"looking up {source!r} in {target!r}"
        source_pose = self._accumulate(source_side, int(stamp_ns), where)
        target_pose = self._accumulate(target_side, int(stamp_ns), where)
        return compose(*inverse(*target_pose), *source_pose)

    def settled(self, target: str, source: str, stamp_ns: int) -> bool:
        """True when no later message can change ``lookup(target, source, stamp_ns)``: the frames are
        connected and every dynamic edge between them has a sample at or after the stamp (assuming
        each edge's stamps increase, as a publisher's do)."""
        target, source = clean_frame_id(target, "target frame id"), clean_frame_id(source, "source frame id")
        if target == source:
            return True
        try:
            source_side, target_side = self._path(target, source)
        except TransformUnavailable:
            return False
        edges = (self._edges[child] for child in (*source_side, *target_side))
        return all(edge.static or edge.stamps[-1] >= stamp_ns for edge in edges)

    def _ancestry(self, frame: str) -> list[str]:
        """``frame``, its parent, grandparent, ... up to the root of its tree."""
        chain, seen = [frame], {frame}
        while chain[-1] in self._edges:
            parent = self._edges[chain[-1]].parent
            if parent in seen:
                raise TransformUnavailable(f"the tf tree has a loop through {' -> '.join([*chain, parent])}")
            chain.append(parent)
            seen.add(parent)
        return chain

    def _path(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """The child frames of the edges from ``source`` and from ``target`` up to their common
        ancestor, nearest first."""
        for frame in (target, source):
            if frame not in self._frames:
                raise TransformUnavailable(f"frame {frame!r} does not exist in the tf tree")
        source_chain, target_chain = self._ancestry(source), self._ancestry(target)
        common = next((f for f in source_chain if f in target_chain), None)
        if common is None:
            raise TransformUnavailable(
                f"frames {target!r} and {source!r} are not connected: {target!r} is under "
                f"{target_chain[-1]!r}, {source!r} under {source_chain[-1]!r}"
            )
        return source_chain[: source_chain.index(common)], target_chain[: target_chain.index(common)]

    def _accumulate(self, children: list[str], stamp_ns: int, where: str) -> tuple[np.ndarray, np.ndarray]:
        """The pose of ``children[0]`` in the parent of ``children[-1]`` (identity for no edges)."""
        position, orientation = _IDENTITY
        for child in children:
            position, orientation = compose(*self._sample(child, stamp_ns, where), position, orientation)
        return position, orientation

    def _sample(self, child: str, stamp_ns: int, where: str) -> tuple[np.ndarray, np.ndarray]:
        """The edge of ``child`` at ``stamp_ns``: static, exact, or interpolated between two samples."""
        edge = self._edges[child]
        if edge.static:
            return edge.poses[0]
        stamps = edge.stamps
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return edge.poses[i]
        if i == 0 or i == len(stamps):
            direction = "past" if i == 0 else "future"
            raise TransformUnavailable(
                f"transform {edge.parent!r} -> {child!r} at {stamp_ns} ns would require extrapolation into "
                f"the {direction}: it is buffered from {stamps[0]} to {stamps[-1]} ns ({where})"
            )
        ratio = (stamp_ns - stamps[i - 1]) / (stamps[i] - stamps[i - 1])
        (p0, q0), (p1, q1) = edge.poses[i - 1], edge.poses[i]
        return p0 + ratio * (p1 - p0), _slerp(q0, q1, ratio)


class ImageTransformPairer(WaitingImages):
    """Images paired with the pose of ``source`` in ``target`` at their stamps, from TF.

    The counterpart of :class:`~vpr_ros.io.pose_sync.ImagePosePairer` for poses on TF, with the
    same counters (``paired``, ``dropped_no_pose``, ``dropped_overflow``, ``pending``) and
    :class:`~vpr_ros.io.pose_sync.Pair` results whose ``pose_stamp_ns`` is the image's stamp (the
    pose is interpolated there). An image waits until the buffer has ``settled`` for its stamp,
    so the pairs do not depend on how images and transforms interleave; at most ``max_pending``
    images wait (the oldest is dropped first). ``flush`` pairs the waiting images the buffer can
    answer and drops the others; ``last_failure`` says why the latest one could not be paired.
    """

    def __init__(self, buffer: TransformBuffer, target: str, source: str, max_pending: int = 30) -> None:
        super().__init__(max_pending)
        self.buffer = buffer
        self.target = clean_frame_id(target, "target frame id")
        self.source = clean_frame_id(source, "source frame id")
        self.last_failure: str | None = None

    def add_transforms(self, msg: Any, static: bool = False) -> list[Pair]:
        """Record a tf2_msgs/TFMessage (see :meth:`TransformBuffer.add_message`) and return the
        waiting images it settles."""
        self.buffer.add_message(msg, static)
        return self._settle(final=False)

    def _settle(self, final: bool) -> list[Pair]:
        """Pairs of the waiting images whose pose is certain (all of them when ``final``)."""
        pairs, waiting = [], deque()
        for stamp, payload in self._pending:
            if not final and not self.buffer.settled(self.target, self.source, stamp):
                waiting.append((stamp, payload))
                continue
            try:
                position, orientation = self.buffer.lookup(self.target, self.source, stamp)
            except TransformUnavailable as exc:
                self.dropped_no_pose += 1
                self.last_failure = str(exc)
                continue
            pairs.append(Pair(stamp, payload, position, orientation, stamp))
        self._pending = waiting
        self.paired += len(pairs)
        return pairs
