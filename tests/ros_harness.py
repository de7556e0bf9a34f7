"""A test-side ROS 2 participant: publishes camera frames and poses, collects the nodes' outputs.

Runs in the test process with its own rclpy context, so the nodes under test are separate
processes talking real DDS (tests/conftest.py isolates the domain).
"""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class RosHarness:
    """``with RosHarness() as ros:`` -- publishers and recording subscriptions on demand."""

    def __init__(self, name: str = "vpr_test_harness") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(args=None, context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self.publishers: dict[str, Any] = {}

    def __enter__(self) -> RosHarness:
        return self

    def __exit__(self, *exc) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def record(self, msg_type: type, topic: str, qos: Any = 50) -> list[tuple[float, Any]]:
        """Keep every message of ``topic`` with its arrival time (time.monotonic)."""
        self.node.create_subscription(
            msg_type, topic, lambda m, t=topic: self.received[t].append((time.monotonic(), m)), qos
        )
        return self.received[topic]

    def publisher(self, msg_type: type, topic: str, qos: Any = 10) -> Any:
        if topic not in self.publishers:
            self.publishers[topic] = self.node.create_publisher(msg_type, topic, qos)
        return self.publishers[topic]

    def spin_until(self, done: Callable[[], bool], timeout_s: float, process: Any = None) -> bool:
        """Spin until ``done()``; False on timeout or when ``process`` exited."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done():
                return True
            if process is not None and process.poll() is not None:
                return done()
            self.executor.spin_once(timeout_sec=0.02)
        return done()

    def wait_for_subscribers(self, topic: str, count: int = 1, timeout_s: float = 30.0) -> bool:
        pub = self.publishers[topic]
        return self.spin_until(lambda: pub.get_subscription_count() >= count, timeout_s)

    def call(self, srv_type: type, name: str, request: Any, timeout_s: float = 30.0) -> Any:
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout_s), f"service {name} did not appear"
        future = client.call_async(request)
        self.spin_until(future.done, timeout_s)
        assert future.done(), f"service {name} did not answer within {timeout_s} s"
        return future.result()


def header(stamp_ns: int, frame_id: str) -> Any:
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    return Header(
        stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id=frame_id
    )


def image_msg(rgb: np.ndarray, stamp_ns: int, encoding: str = "rgb8") -> Any:
    from sensor_msgs.msg import Image

    from vpr_ros.io.image_codec import rgb_to_image_fields, to_image_msg

    return to_image_msg(rgb_to_image_fields(rgb, encoding), Image, header(stamp_ns, "camera"))


def odometry_msg(position: np.ndarray, orientation: np.ndarray, stamp_ns: int, frame_id: str = "map") -> Any:
    from nav_msgs.msg import Odometry

    msg = Odometry(header=header(stamp_ns, frame_id), child_frame_id="base_link")
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, p.z = (float(v) for v in position)
    q.x, q.y, q.z, q.w = (float(v) for v in orientation)
    return msg


def stamp_of(msg: Any) -> int:
    from vpr_ros.io.pose_sync import stamp_ns

    return stamp_ns(msg.header)


def frames(bag: Path) -> list:
    from vpr_ros.io.rosbag_source import bag_topics, choose_topics, iter_frames

    image_topic, _, pose_topic, _ = choose_topics(bag_topics(bag))
    return list(iter_frames(bag, image_topic, pose_topic, 0.05))


def node_args(
    module: str, *params: str, remaps: tuple[str, ...] = ("image:=/cam/image",), namespace: str = "/vpr"
) -> list[str]:
    args = ["-m", module, "--ros-args", "-r", f"__ns:={namespace}"]
    for remap in remaps:
        args += ["-r", remap]
    for param in ("model.backend:=onnxruntime", *params):
        args += ["-p", param]
    return args


def output_of(process) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=20)[0]
    except Exception:
        process.kill()
        return process.communicate()[0]


def localizer_args(bundle: Path, day_map: Path, *params: str) -> list[str]:
    """The localizer on the test town's day map, images on /cam/image."""
    return node_args("vpr_ros.nodes.localizer", f"model.bundle_dir:={bundle}", f"map.dir:={day_map}", *params)


def send_until_answered(ros: RosHarness, pub, msg, matches: list, proc, timeout_s: float = 20.0) -> None:
    """Publish ``msg`` and again every second until a new match table arrives: best effort may lose
    it, and the first frames can go out before the node's side of discovery is done."""
    before, deadline = len(matches), time.monotonic() + timeout_s
    pub.publish(msg)
    while not ros.spin_until(lambda: len(matches) > before, 1.0, proc):
        assert time.monotonic() < deadline and proc.poll() is None, output_of(proc)
        pub.publish(msg)
