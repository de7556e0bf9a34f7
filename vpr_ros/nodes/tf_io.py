"""TF for the nodes: listening to ``/tf`` + ``/tf_static`` and publishing ``map -> odom``.

On a robot with a ROS install, ``tf2_ros`` is used for listening (its Buffer and TransformListener:
the same cache every other node uses). Without it (the PyPI ROS
wheels have no tf2_ros), the same is done with :class:`~vpr_ros.io.tf_buffer.TransformBuffer` and
plain subscriptions/publisher with tf2's QoS (``tf2_ros/qos.py``: /tf reliable, volatile, depth
100; /tf_static reliable, transient local, depth 100 for listeners and 1 for broadcasters). Both
need the ``tf2_msgs/TFMessage`` type; PyPI has no wheel of it either, and
``scripts/build_tf2_msgs.sh`` builds it from its message definition (scripts/setup.sh runs it).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from geometry_msgs.msg import TransformStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from vpr_ros.errors import InputError
from vpr_ros.io.tf_buffer import TransformBuffer, TransformUnavailable
from vpr_ros.localization.robot_pose import Pose

TF_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
TF_STATIC_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
_NO_TF2_MSGS = (
    "needs the tf2_msgs message package, which PyPI does not have: run scripts/build_tf2_msgs.sh "
    "(part of scripts/setup.sh) or use a ROS 2 install"
)


def tf_message_type(what: str) -> type:
    """``tf2_msgs.msg.TFMessage``, or an InputError saying that ``what`` needs it."""
    try:
        from tf2_msgs.msg import TFMessage
    except ImportError:
        raise InputError(f"{what} {_NO_TF2_MSGS}") from None
    return TFMessage


class TfListener:
    """Transforms from /tf and /tf_static: :meth:`pose` of a frame in another at a stamp."""

    def __init__(self, node: Any, what: str, cache_s: float = 10.0) -> None:
        self._lock = threading.Lock()
        try:
            import tf2_ros
        except ImportError:
            tf2_ros = None
        self._node = node
        self._subscriptions: list[Any] = []
        if tf2_ros is not None:  # a ROS install: the robot's own TF stack
            self._tf2 = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(self._tf2, node)
            return
        self._tf2 = None
        message = tf_message_type(what)
        self.buffer = TransformBuffer(cache_s)
        self._subscriptions = [
            node.create_subscription(message, "/tf", lambda msg: self._add(msg, False), TF_QOS),
            node.create_subscription(message, "/tf_static", lambda msg: self._add(msg, True), TF_STATIC_QOS),
        ]

    def close(self) -> None:
        if self._tf2 is not None:
            self._listener.unregister()
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)

    def _add(self, msg: Any, static: bool) -> None:
        with self._lock:
            self.buffer.add_message(msg, static)

    def pose(self, target: str, source: str, stamp_ns: int) -> Pose | None:
        """``source``'s pose in ``target`` at ``stamp_ns`` (interpolated), None when TF cannot say
        yet (no data, or the stamp is past the newest transform)."""
        if self._tf2 is not None:
            return self._tf2_pose(target, source, stamp_ns)
        with self._lock:
            try:
                return self.buffer.lookup(target, source, stamp_ns)
            except (TransformUnavailable, InputError):  # InputError: a frame name that cannot exist
                return None

    def _tf2_pose(self, target: str, source: str, stamp_ns: int) -> Pose | None:
        import tf2_ros
        from rclpy.time import Time

        try:
            t = self._tf2.lookup_transform(target, source, Time(nanoseconds=stamp_ns)).transform
        except (tf2_ros.LookupException, tf2_ros.ExtrapolationException, tf2_ros.ConnectivityException):
            return None
        p, q = t.translation, t.rotation
        return np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w])


class TfBroadcaster:
    """Publishes transforms on /tf with the QoS of tf2_ros's TransformBroadcaster."""

    def __init__(self, node: Any, what: str) -> None:
        self._node = node
        self._message = tf_message_type(what)
        self._publisher = node.create_publisher(self._message, "/tf", TF_QOS)

    def send(self, transform: TransformStamped) -> None:
        self._publisher.publish(self._message(transforms=[transform]))

    def close(self) -> None:
        self._node.destroy_publisher(self._publisher)


def transform_msg(parent: str, child: str, stamp: Any, pose: Pose) -> TransformStamped:
    """A TransformStamped giving ``child``'s pose in ``parent``."""
    msg = TransformStamped()
    msg.header.frame_id, msg.child_frame_id, msg.header.stamp = parent, child, stamp
    t = msg.transform
    t.translation.x, t.translation.y, t.translation.z = (float(v) for v in pose[0])
    t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w = (float(v) for v in pose[1])
    return msg
