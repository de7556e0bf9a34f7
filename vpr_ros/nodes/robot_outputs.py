"""What the localizer tells the rest of a robot when it has a fix: map -> odom, /initialpose, and the
answer to a waiting ``~/relocalize``.

Each answer goes through the fix gate (:mod:`vpr_ros.localization.relocalization`); only fixes
reach the outputs, never a refused or inconsistent answer:

- ``map -> odom`` (``tf.publish_map_to_odom``): computed from the fix's base pose and the odometry's
  ``odom -> base`` at the image's stamp, updated at most every ``tf.min_update_interval_s``, and
  re-published every ``tf.publish_period_s`` stamped ``tf.transform_tolerance_s`` ahead (as AMCL
  does), so TF lookups keep working between fixes with the last correction. Nothing is published
  before the first fix.
- ``/initialpose`` (``relocalization.publish_initialpose``): the fix's pose and covariance in the
  global frame, once after start and after each ``~/relocalize``, or, with
  ``relocalization.min_interval_s`` > 0, after any fix at most that often.
- ``~/relocalize`` (std_srvs/Trigger): forgets the sequence history and the gate's streak, then
  waits (in its own callback group) for the next fix, up to ``relocalization.timeout_s``; that fix
  is also sent on both outputs at once.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from vpr_ros.geometry import yaw_of
from vpr_ros.localization.frame_answer import CameraAnswer
from vpr_ros.localization.relocalization import FixGate, GateSettings, RateLimit
from vpr_ros.localization.robot_pose import Pose, map_to_odom
from vpr_ros.nodes import messages
from vpr_ros.nodes.common import RESULT_QOS
from vpr_ros.nodes.tf_io import TfBroadcaster, transform_msg


class _Request:
    """A ~/relocalize call waiting for the next fix."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.message = ""


class RobotOutputs:
    """The fix gate and the outputs it drives, for one localizer node (see the module doc). ``update``
    runs on the node's worker thread; the service and the TF timer on executor threads."""

    def __init__(self, node: Any, cfg: dict[str, Any], map_frame: str) -> None:
        self.node = node
        self.map_frame = map_frame
        self.odom_frame = str(cfg["frames.odom"])
        self.gate = FixGate(_gate_settings(cfg))
        self.fixes = 0
        self._lock = threading.Lock()
        self._requests: list[_Request] = []
        self._reset = False
        self._initialpose_sent = False
        self._initialpose_limit = RateLimit(float(cfg["relocalization.min_interval_s"]))
        self._tf_limit = RateLimit(float(cfg["tf.min_update_interval_s"]))
        self._map_to_odom: Pose | None = None
        self.initialpose_pub = None
        if cfg["relocalization.publish_initialpose"]:
            self.initialpose_pub = node.create_publisher(
                PoseWithCovarianceStamped, str(cfg["relocalization.initialpose_topic"]), RESULT_QOS
            )
        self.tf = self._tf_timer = None
        if cfg["tf.publish_map_to_odom"]:
            self.tf = TfBroadcaster(node, "tf.publish_map_to_odom")
            self._tolerance_ns = round(float(cfg["tf.transform_tolerance_s"]) * 1e9)
            self._tf_timer = node.create_timer(float(cfg["tf.publish_period_s"]), self._publish_tf)
        group = MutuallyExclusiveCallbackGroup()  # waits for a fix while frames keep flowing
        self._service = node.create_service(Trigger, "~/relocalize", self._relocalize, callback_group=group)

    def close(self) -> None:
        """Release the publishers, timer and service (cleanup), failing waiting requests."""
        if self.initialpose_pub is not None:
            self.node.destroy_publisher(self.initialpose_pub)
        if self.tf is not None:
            self.tf.close()
            self.node.destroy_timer(self._tf_timer)
        self.node.destroy_service(self._service)
        with self._lock:
            for request in self._requests:
                request.message = "the localizer was shut down"
                request.done.set()
            self._requests = []

    def apply_settings(self, cfg: dict[str, Any]) -> None:
        """The dynamic relocalization.* / tf.* values (a parameter change)."""
        self.gate.settings = _gate_settings(cfg)
        self._initialpose_limit.min_interval_s = float(cfg["relocalization.min_interval_s"])
        self._tf_limit.min_interval_s = float(cfg["tf.min_update_interval_s"])

    @property
    def map_to_odom(self) -> Pose | None:
        return self._map_to_odom

    # ---------------------------------------------------------------- the worker's side

    def take_reset(self) -> bool:
        """True once after ~/relocalize asked to forget the history (the worker resets the filter)."""
        with self._lock:
            reset, self._reset = self._reset, False
        if reset:
            self.gate.reset()
        return reset

    def update(self, answer: CameraAnswer, trusted: bool, header: Header, odometry: Pose | None) -> bool:
        """Feed one time step's answer (``trusted``: accepted, and the filter's when it is on) with
        the robot's odometry pose at its stamp; drives the outputs on a fix. True on a fix."""
        estimate = answer.estimate
        base = (estimate.position, estimate.orientation) if trusted else None
        if not self.gate.update(answer.stamp_ns, trusted, base, odometry):
            return False
        self.fixes += 1
        now = time.monotonic()
        with self._lock:
            requests, self._requests = self._requests, []
        forced = bool(requests)
        if self.tf is not None and odometry is not None and (forced or self._tf_limit.ready(now)):
            self._map_to_odom = map_to_odom(base, odometry)
            self._tf_limit.mark(now)
            self._publish_tf()
        if self.initialpose_pub is not None and (forced or self._initialpose_due(now)):
            self.initialpose_pub.publish(messages.pose_with_covariance(header, estimate))
            self._initialpose_sent = True
            self._initialpose_limit.mark(now)
        if requests:
            x, y, _ = estimate.position
            yaw = float(yaw_of(estimate.orientation))
            message = (
                f"relocalized: x {x:.2f} m, y {y:.2f} m, yaw {math.degrees(yaw):.1f} deg in "
                f"'{self.map_frame}' (image stamp {answer.stamp_ns} ns)"
            )
            for request in requests:
                request.message = message
                request.done.set()
        return True

    def _initialpose_due(self, now: float) -> bool:
        if self._initialpose_limit.min_interval_s == 0.0:
            return not self._initialpose_sent
        return self._initialpose_limit.ready(now)

    # ---------------------------------------------------------------- executor side

    def _publish_tf(self) -> None:
        pose = self._map_to_odom
        if pose is None:
            return
        stamp = self.node.get_clock().now() + Duration(nanoseconds=self._tolerance_ns)
        self.tf.send(transform_msg(self.map_frame, self.odom_frame, stamp.to_msg(), pose))

    def _relocalize(self, request, response):
        timeout = float(self.node.config["relocalization.timeout_s"])
        waiting = _Request()
        with self._lock:
            self._requests.append(waiting)
            self._reset = True
            self._initialpose_sent = False
        if waiting.done.wait(timeout):
            response.success = waiting.message.startswith("relocalized")
            response.message = waiting.message
        else:
            with self._lock:
                if waiting in self._requests:
                    self._requests.remove(waiting)
            response.success = False
            response.message = (
                f"no fix within {timeout:g} s (is the robot on a mapped route? see /diagnostics)"
            )
        self.node.get_logger().info(f"~/relocalize: {response.message}")
        return response


def _gate_settings(cfg: dict[str, Any]) -> GateSettings:
    return GateSettings(
        consistent_frames=int(cfg["relocalization.consistent_frames"]),
        max_disagreement_m=float(cfg["relocalization.max_disagreement_m"]),
        max_speed_mps=float(cfg["sequence.max_speed_mps"]),
    )
