"""What the mapping and localization nodes share: QoS, image input, diagnostics, life cycle, main().

Both nodes are ``rclpy.lifecycle`` nodes: ``configure`` loads the model (and the map), ``activate``
subscribes, ``deactivate`` unsubscribes, ``cleanup`` releases. With ``autostart`` (default) a node
walks to active by itself, so it works without a lifecycle manager; a configure failure then ends
the process with one line naming the reason (a robot's launch file shows it, nothing hangs).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from vpr_ros.backends import create_backend
from vpr_ros.bundle import load_bundle
from vpr_ros.errors import InputError
from vpr_ros.mapping.place_map import PlaceMap
from vpr_ros.nodes import messages
from vpr_ros.nodes import params as P
from vpr_ros.nodes.intake import ImageIntake
from vpr_ros.nodes.transport import AdaptiveImageSubscriptions
from vpr_ros.nodes.transport import describe as describe_qos

# REP-2003: consumers subscribe to cameras with sensor-data QoS. Depth 1, not rclpy's 5: a slow
# backend must process the newest frame, never a backlog (ROS_NOTES §0.4).
CAMERA_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)
# Map-like data (keyframe path, map markers): reliable + transient-local, so late RViz gets it.
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
RESULT_QOS = 10  # reliable, keep last 10
# Image intake, a blocking service (~/relocalize waits for a fix) and the timers each get a thread.
EXECUTOR_THREADS = 4
# How long a thread waiting for the interpreter lock waits before the holder must drop it (Python's
# default 5 ms). The worker takes the lock many times per frame between native calls; behind a
# CPU-bound Python thread (a map reload parsing 60,000 keyframes) each take cost up to 5 ms.
SWITCH_INTERVAL_S = 0.0005


def inference_threads() -> int:
    """ONNX Runtime's CPU threads in a node: every core this process may use but one, at least one.

    Inference on every core left nothing for the DDS receive threads and the executor: on 2 vCPUs
    a 640x480 stream at 15 Hz lost bursts of 5-17 frames in 4 of 12 runs of tests/test_transport.py,
    none in 20 runs with one inference thread, 10 of them beside a busy loop on both cores
    (README, "Raw images over DDS").
    """
    return max(1, len(os.sched_getaffinity(0)) - 1)


class LatencyWindow:
    """The last ``size`` samples, for percentiles in diagnostics."""

    def __init__(self, size: int = 300) -> None:
        self.samples: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    def percentile_ms(self, q: float) -> float:
        samples = list(self.samples)  # one copy: another thread may be adding meanwhile
        return float(np.percentile(samples, q) * 1e3) if samples else float("nan")


class VprNode(LifecycleNode):
    """Parameters, image subscription, stale-input warning and diagnostics for both nodes.

    Subclasses implement ``load`` (configure), ``on_image`` (activated input, with the index of
    the camera in :meth:`image_topic_names`), ``status`` (the diagnostics level, message and values)
    and may override ``release``. Image intake has its own callback group, so a slow service or
    timer never holds a frame back (and the node's executor has threads for both).
    """

    PARAMS: tuple[P.Param, ...] = ()
    REQUIRED = ("model.bundle_dir", "map.dir")  # string parameters without a usable default
    IMAGE_QOS = CAMERA_QOS
    # Image callbacks on a thread of their own (vpr_ros.nodes.intake) instead of the executor's
    # intake group: for the localizer, whose answers wait for them. The mapper pairs images with
    # poses in one callback group, so it keeps both on the executor.
    OWN_IMAGE_THREAD = False

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        P.declare(self, self.PARAMS)
        self.config: dict[str, P.Value] = {}
        self.bundle = None  # load_model
        self.backend = None
        self._image_inputs: AdaptiveImageSubscriptions | None = None
        self._intake: ImageIntake | None = None
        self.image_topics: list[str] = []
        self.intake_group = MutuallyExclusiveCallbackGroup()
        self._last_image = time.monotonic()
        self._stale_timer = None
        self._diag_timer = None
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.received = 0
        # DDS reception (the rmw's timestamp) to this node's image callback: the executor's share.
        self.intake_delay = LatencyWindow()
        self.configure_error = ""

    # ---------------------------------------------------------------- lifecycle

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        self.config = P.snapshot(self, self.PARAMS)
        problems = P.problems(self.config, self.PARAMS)
        problems += [f"parameter {name} is required" for name in self.REQUIRED if not self.config[name]]
        try:
            if problems:
                raise InputError("; ".join(problems))
            self.load()
        except (InputError, RuntimeError) as exc:  # BundleError, MapError, BackendError included
            self.configure_error = str(exc)
            self.get_logger().error(f"cannot configure: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._diag_timer = self.create_timer(
            float(self.config["diagnostics.period_s"]), self._publish_diagnostics
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self._subscribe_images()
        self._last_image = time.monotonic()
        self._stale_timer = self.create_timer(float(self.config["input.stale_warn_s"]), self._check_stale)
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._close_image_inputs()
        if self._stale_timer is not None:
            self.destroy_timer(self._stale_timer)
            self._stale_timer = None
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def load(self) -> None:
        raise NotImplementedError

    def stop_worker(self) -> None:
        """Stop the node's own processing thread, if it has one (deactivation and process exit)."""

    def stop_threads(self) -> None:
        """Image intake and worker stopped (process exit: a thread still running at exit kept rclpy
        from destroying the DDS participant, which left its shared-memory segment in /dev/shm)."""
        self._close_image_inputs()
        self.stop_worker()

    def load_model(self) -> None:
        """``bundle`` and ``backend`` from the model.* parameters (part of ``load``)."""
        cfg = self.config
        self.bundle = load_bundle(str(cfg["model.bundle_dir"]))
        self.backend = create_backend(
            self.bundle,
            str(cfg["model.backend"]),
            str(cfg["model.precision"]),
            int(cfg["model.device_id"]),
            engine_cache_dir=str(cfg["model.engine_cache_dir"]) or None,
            build_engine_if_missing=bool(cfg["model.build_engine_if_missing"]),
            cpu_threads=int(cfg["model.cpu_threads"]) or inference_threads(),
        )

    def publish_map(self, place_map: PlaceMap, path_pub: Any, marker_pub: Any) -> None:
        """The map's keyframes as a nav_msgs/Path and, with output.publish_markers, RViz spheres."""
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=place_map.frame_id)
        path_pub.publish(messages.keyframe_path(header, place_map.positions, place_map.orientations))
        if self.config["output.publish_markers"]:
            marker_pub.publish(messages.map_markers(header, place_map.positions))

    def release(self) -> None:
        """Drop the model and map (cleanup)."""

    def on_image(self, msg: Image | CompressedImage, camera: int) -> None:
        raise NotImplementedError

    def image_topic_names(self) -> list[str]:
        """The image topics to subscribe to (before remapping and the compressed suffix)."""
        return ["image"]

    def status(self) -> tuple[bytes, str, dict[str, Any]]:
        raise NotImplementedError

    # ---------------------------------------------------------------- input

    def _subscribe_images(self) -> None:
        compressed = self.config["input.transport"] == "compressed"
        # A remap of 'image' does not rename 'image/compressed' (remaps match whole names), so the
        # compressed topic is derived from the resolved image topic, as image_transport does.
        self.image_topics = [
            self.resolve_topic_name(name) + ("/compressed" if compressed else "")
            for name in self.image_topic_names()
        ]
        # Callbacks with rclpy's MessageInfo (two arguments), for the intake delay.
        callbacks = [
            lambda msg, info, cam=cam: self._receive(msg, info, cam) for cam in range(len(self.image_topics))
        ]
        if self.OWN_IMAGE_THREAD:
            self._intake = ImageIntake(self)
        # IMAGE_QOS (best effort) unless every publisher of a topic offers reliable; checked again
        # every second, so a camera started later or restarted with other QoS is followed.
        self._image_inputs = AdaptiveImageSubscriptions(
            self._intake.node if self._intake is not None else self,
            CompressedImage if compressed else Image,
            self.image_topics,
            callbacks,
            self.IMAGE_QOS,
            None if self._intake is not None else self.intake_group,
            logger=self.get_logger(),
        )
        listening = ", ".join(
            f"{topic} ({describe_qos(qos)})" for topic, qos in zip(self.image_topics, self._image_inputs.qos)
        )
        self.get_logger().info(f"listening to {listening}")

    def _close_image_inputs(self) -> None:
        if self._image_inputs is not None:
            self._image_inputs.close()
            self._image_inputs = None
        if self._intake is not None:
            self._intake.close()
            self._intake = None

    @property
    def image_topic(self) -> str:
        """The first (for the mapper: the only) image topic, resolved."""
        return self.image_topics[0]

    def _receive(self, msg: Image | CompressedImage, info: dict[str, Any], camera: int) -> None:
        """An image callback (with rclpy's MessageInfo, for the intake delay)."""
        self.received += 1
        if info.get("received_timestamp"):
            self.intake_delay.add((time.time_ns() - info["received_timestamp"]) * 1e-9)
        self._last_image = time.monotonic()
        self.on_image(msg, camera)

    def _check_stale(self) -> None:
        idle = time.monotonic() - self._last_image
        if idle >= float(self.config["input.stale_warn_s"]):
            self.get_logger().warning(
                f"no image on {', '.join(self.image_topics)} for {idle:.0f} s (subscribed best effort, "
                f"depth {self.IMAGE_QOS.depth}; "
                "check the topic name, remaps and the publisher's QoS)"
            )

    # ---------------------------------------------------------------- diagnostics

    def _publish_diagnostics(self) -> None:
        level, message, values = self.status()
        status = DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: {self.DIAGNOSTIC_TASK}",  # two nodes never collide
            message=message,
            hardware_id=values.pop("backend", ""),
            values=[KeyValue(key=k, value=_fmt(v)) for k, v in values.items()],
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)

    DIAGNOSTIC_TASK = "status"


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def run(make_node: Callable[[], VprNode], args: list[str] | None, on_exit: Callable[[VprNode], None]) -> int:
    """Start a node, autostart it if asked, spin until SIGINT/SIGTERM, then ``on_exit`` (e.g. save)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    sys.setswitchinterval(SWITCH_INTERVAL_S)
    rclpy.init(args=args if args is not None else sys.argv)
    try:
        node = make_node()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        rclpy.shutdown()
        return 1
    try:
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                print(f"{node.get_name()}: {node.configure_error}", file=sys.stderr)
                return 1
            node.trigger_activate()
        executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        on_exit(node)
        node.stop_threads()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
