"""``vpr_bag_player``: replay a rosbag2 recording to a localization node, at the recorded rate or
flow-controlled, for replay evaluations.

``ros2 bag play`` publishes at the recorded rate whatever the subscriber does: on a machine slower
than the camera the localizer drops frames (it works on the newest one, by design), so the same
evaluation gives other results on another machine or under load. In ``flow`` mode this player
publishes the next image only once the answer to the previous one arrived: the localizer's match
table (``sensor_msgs/PointCloud2``, ``vpr_ros.io.match_table``) stamped with the image's header stamp.
Every image is then processed exactly once, as fast as the localizer can, and the results do not
depend on the machine. DDS may still lose an image (best-effort subscribers, or frames sent before
the subscriber's side of discovery completed): an image not answered within ``answer_timeout_s``
is sent again, up to ``max_resends`` times, then counted as lost. ``rate`` mode plays like
``ros2 bag play`` (bag timestamps, times ``rate``), for measuring what a robot would see live; an
evaluation pairs answers with images by stamp either way, so it works with ``ros2 bag play`` too.

The player publishes the recorded CDR bytes as they are (rclpy publishes ``bytes`` as a serialized
message), never deserializing them: fast, and exact (subscribers receive the recorded bytes, which
DDS pads with zeros to a multiple of 4). This needs the bag's message definitions to equal this
Python's (true for the sensor, navigation and geometry messages across Humble, Jazzy and Kilted).
Bags are read with ``rosbags``, without a ROS install (``vpr_ros.io.rosbag_source``). Answers are
paired by stamp, so image header stamps must strictly increase; this is checked before anything is
published. Before exiting, the player waits (up to 5 s) until the reliable subscribers acknowledged
the last messages, which would otherwise be lost with the process.

Parameters (read-only; ``-p name:=value``):

- ``bag``: rosbag2 directory (required).
- ``mode``: ``rate`` (default) or ``flow``; ``rate``: multiple of the recorded rate (rate mode).
- ``image_topic``: the image topic ('' = the bag's only Image or CompressedImage topic).
- ``topics``: other topics to play ([] = every topic whose message type this Python can import).
- ``answer_topic`` (default ``answers``, remap it to the localizer's ``~/matches``),
  ``answer_timeout_s`` and ``max_resends``: flow control.
- ``wait_for_subscribers``, ``start_timeout_s``, ``start_delay_s``: start once the image topic has
  this many subscribers (and, in flow mode, the answer topic a publisher), then after the delay.

Exit status: 0 when the bag was played, 1 when the subscribers never came, 2 for a bad parameter
or bag, 130 when interrupted (SIGINT or SIGTERM).
"""

from __future__ import annotations

import contextlib
import importlib
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2

from vpr_ros.errors import InputError
from vpr_ros.io.pose_sync import stamp_ns
from vpr_ros.io.rosbag_source import (
    IMAGE_TYPES,
    bag_topics,
    check_increasing,
    choose_topic,
    iter_raw,
    topic_listing,
)
from vpr_ros.nodes import params as P

TOPICS_DESCRIPTION = "topics to play besides the image topic ([] = every topic this Python has the type of)"

# Reliable keep-last 10, like a camera driver on default QoS: serves reliable and best-effort
# subscribers alike (a best-effort publisher would serve only the latter).
PLAY_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
ANSWER_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
POLL_S = 0.05  # how often waits check for a shutdown (rclpy's signal handler only ends the context)
DRAIN_TIMEOUT_S = 5.0  # at the end, how long to wait for the subscribers to acknowledge the last messages


class StartTimeout(RuntimeError):
    """The subscribers (or the answering publisher) did not appear within ``start_timeout_s``."""


class Interrupted(Exception):
    """The context was shut down (SIGINT, SIGTERM) while playing."""


@dataclass(frozen=True)
class Plan:
    """What the pre-pass found: the topics to play (image topic included) with their message
    classes, the image count, and the bag topics skipped because this Python lacks their type."""

    bag: Path
    image_topic: str
    classes: dict[str, type]
    image_count: int
    skipped: dict[str, str]


def header_stamp_ns(data: bytes) -> int:
    """The header stamp of a serialized message that starts with a std_msgs/Header (images do):
    after the 4-byte CDR encapsulation header, int32 sec and uint32 nanosec. ValueError if ``data``
    is not plain CDR."""
    if len(data) < 12 or data[0] != 0 or data[1] not in (0, 1):
        raise ValueError(f"not a CDR message (encapsulation {data[:2].hex() or 'missing'})")
    sec, nanosec = struct.unpack_from("<iI" if data[1] else ">iI", data, 4)
    return sec * 1_000_000_000 + nanosec


def message_class(msgtype: str) -> type | None:
    """The rclpy class of ``package/msg/Name``, or None when this Python cannot import it."""
    module, _, name = msgtype.rpartition("/")
    try:
        return getattr(importlib.import_module(module.replace("/", ".")), name)
    except (ImportError, AttributeError, ValueError):
        return None


def choose_image_topic(bag: Path, topics: dict[str, str], given: str) -> str:
    """``given`` (checked) or the bag's only image topic; otherwise an InputError listing the topics."""
    try:
        return choose_topic(topics, given or None, IMAGE_TYPES, "image", "-p image_topic:=<topic>")[0]
    except InputError as exc:
        raise InputError(f"bag {bag}: {exc}") from None


def plan(config: dict[str, P.Value], requested: list[str]) -> Plan:
    """Topics and message classes to play, checked against the bag, and the image stamps checked
    to strictly increase (answers are paired by stamp), before anything is published."""
    bag = Path(str(config["bag"]))
    topics = bag_topics(bag)
    image_topic = choose_image_topic(bag, topics, str(config["image_topic"]))
    missing = sorted(set(requested) - set(topics))
    if missing:
        raise InputError(
            f"bag {bag}: topics {', '.join(missing)} not in the bag; it has: {topic_listing(topics)}"
        )
    wanted = {name: topics[name] for name in (requested or topics)} | {image_topic: topics[image_topic]}
    classes = {name: message_class(msgtype) for name, msgtype in wanted.items()}
    skipped = {name: wanted[name] for name, cls in classes.items() if cls is None}
    if skipped and (requested or image_topic in skipped):
        raise InputError(f"bag {bag}: no message type in this Python for {topic_listing(skipped)}")
    count = check_stamps(bag, image_topic)
    return Plan(bag, image_topic, {n: c for n, c in classes.items() if c is not None}, count, skipped)


def check_stamps(bag: Path, image_topic: str) -> int:
    """The number of images; InputError when a header stamp repeats or goes back (answers are paired
    by stamp), or none is there."""
    previous, count = None, 0
    for index, (_, _, _, data) in enumerate(iter_raw(bag, [image_topic])):
        try:
            stamp = header_stamp_ns(data)
        except ValueError as exc:
            raise InputError(f"bag {bag}: {image_topic} message {index}: {exc}") from None
        check_increasing(bag, image_topic, index, previous, stamp)
        previous, count = stamp, count + 1
    if count == 0:
        raise InputError(f"bag {bag}: topic {image_topic} has no messages")
    return count


class BagPlayer(Node):
    """Declares and checks the parameters and runs the pre-pass at construction (InputError);
    :meth:`play` then publishes the bag from the calling thread."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("vpr_bag_player", **kwargs)
        self.config, requested = self._parameters_checked()
        self.plan = plan(self.config, requested)
        if self.plan.skipped:
            self.get_logger().warning(
                f"not played (no message type in this Python): {topic_listing(self.plan.skipped)}"
            )
        self.flow = self.config["mode"] == "flow"
        self._pubs = {
            name: self.create_publisher(cls, name, PLAY_QOS) for name, cls in self.plan.classes.items()
        }
        self._answers = None
        if self.flow:
            topic = str(self.config["answer_topic"])
            self._answers = self.create_subscription(PointCloud2, topic, self._on_answer, ANSWER_QOS)
        self._cond = threading.Condition()
        self._awaited: int | None = None
        self._answered = False
        self.images = self.others = self.resent = self.lost = 0

    def _parameters_checked(self) -> tuple[dict[str, P.Value], list[str]]:
        P.declare(self, P.BAG_PLAYER)
        try:
            self.declare_parameter(
                "topics",
                Parameter.Type.STRING_ARRAY,
                ParameterDescriptor(description=TOPICS_DESCRIPTION, read_only=True),
            )
        except ParameterException as exc:
            raise InputError(f"parameter topics: {' '.join(str(exc).split())}") from None
        config = P.snapshot(self, P.BAG_PLAYER)
        problems = P.problems(config, P.BAG_PLAYER)
        if not config["bag"]:
            problems.insert(0, "parameter bag is required: -p bag:=<rosbag2 directory>")
        if problems:
            raise InputError("; ".join(problems))
        requested = self.get_parameter_or("topics", Parameter("topics", value=[])).value
        return config, list(requested or [])

    # ---------------------------------------------------------------- playing

    def play(self) -> None:
        """Wait for the subscribers, publish the bag, log the summary. Raises StartTimeout, Interrupted."""
        executor = SingleThreadedExecutor(context=self.context)
        executor.add_node(self)
        spinner = threading.Thread(target=_spin, args=(executor,), daemon=True)
        spinner.start()
        try:
            self._wait_for_peers()
            self._sleep_until(time.monotonic() + float(self.config["start_delay_s"]))
            self.get_logger().info(self._describe())
            started = time.monotonic()
            if self.flow:
                self._play_flow()
            else:
                self._play_rate()
            self._summary(time.monotonic() - started)
            self._drain()
        finally:
            executor.shutdown()
            spinner.join()

    def _play_rate(self) -> None:
        rate = float(self.config["rate"])
        origin: tuple[float, int] | None = None
        for topic, _, log_ns, data in iter_raw(self.plan.bag, list(self.plan.classes)):
            origin = origin or (time.monotonic(), log_ns)
            self._sleep_until(origin[0] + (log_ns - origin[1]) * 1e-9 / rate)
            self._publish(topic, data)

    def _play_flow(self) -> None:
        for topic, _, _, data in iter_raw(self.plan.bag, list(self.plan.classes)):
            if topic != self.plan.image_topic:
                self._publish(topic, data)
                continue
            with self._cond:
                self._awaited, self._answered = header_stamp_ns(data), False
            for attempt in range(int(self.config["max_resends"]) + 1):
                if attempt:
                    self.resent += 1
                self._publish(topic, data, count=attempt == 0)
                if self._answer_arrived():
                    break
            else:
                self.lost += 1
                self.get_logger().warning(
                    f"image {self.images - 1} (stamp {self._awaited} ns) not answered on "
                    f"{self._answers.topic_name} after {attempt + 1} sends; counted as lost"
                )

    def _publish(self, topic: str, data: bytes, count: bool = True) -> None:
        if not self.context.ok():
            raise Interrupted
        self._pubs[topic].publish(data)  # bytes: rclpy publishes them as the serialized message
        if not count:
            return
        if topic != self.plan.image_topic:
            self.others += 1
            return
        self.images += 1
        total = self.plan.image_count
        if self.images * 10 // total > (self.images - 1) * 10 // total and self.images < total:
            self.get_logger().info(f"{self.images}/{total} images ({100 * self.images // total}%)")

    def _on_answer(self, msg: PointCloud2) -> None:
        with self._cond:
            if stamp_ns(msg.header) == self._awaited:
                self._answered = True
                self._cond.notify()

    def _answer_arrived(self) -> bool:
        deadline = time.monotonic() + float(self.config["answer_timeout_s"])
        with self._cond:
            while not self._answered and (remaining := deadline - time.monotonic()) > 0:
                if not self.context.ok():
                    raise Interrupted
                self._cond.wait(min(remaining, POLL_S))
            return self._answered

    # ---------------------------------------------------------------- start and end

    def _wait_for_peers(self) -> None:
        """Until the image topic has ``wait_for_subscribers`` subscribers and, in flow mode, the
        answer topic a publisher; StartTimeout naming the topic after ``start_timeout_s``."""
        deadline = time.monotonic() + float(self.config["start_timeout_s"])
        need = int(self.config["wait_for_subscribers"])
        image_pub = self._pubs[self.plan.image_topic]
        self._wait_for(
            lambda: image_pub.get_subscription_count() >= need,
            deadline,
            f"{image_pub.topic_name} has fewer than the {need} subscriber(s) wanted (wait_for_subscribers); "
            "is the localizer running, and are the topics remapped to match?",
        )
        answers = self._answers
        if answers is not None:
            self._wait_for(
                lambda: answers.get_publisher_count() > 0,
                deadline,
                f"the answer topic {answers.topic_name} has no publisher; flow mode needs the localizer's "
                "matches there (e.g. -r answers:=/vpr/vpr_localizer/matches)",
            )

    def _wait_for(self, ready: Callable[[], bool], deadline: float, problem: str) -> None:
        while not ready():
            if time.monotonic() >= deadline:
                raise StartTimeout(f"after {self.config['start_timeout_s']:g} s (start_timeout_s), {problem}")
            self._sleep_until(min(deadline, time.monotonic() + POLL_S))

    def _drain(self) -> None:
        """Wait until the reliable subscribers acknowledged every message: the process ends next, and
        a publisher destroyed before its last messages went out drops them."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for pub in self._pubs.values():
            while not pub.wait_for_all_acked(Duration(nanoseconds=int(POLL_S * 1e9))):
                if time.monotonic() >= deadline:
                    self.get_logger().warning(
                        f"{pub.topic_name}: the last messages were not all acknowledged"
                    )
                    break
                if not self.context.ok():
                    raise Interrupted

    def _sleep_until(self, deadline: float) -> None:
        while (remaining := deadline - time.monotonic()) > 0:
            if not self.context.ok():
                raise Interrupted
            time.sleep(min(remaining, POLL_S))

    def _summary(self, seconds: float) -> None:
        self.get_logger().info(
            f"published {self.images} images on {self._name(self.plan.image_topic)} (+{self.others} other "
            f"messages), {self.resent} resent, {self.lost} lost, in {seconds:.1f} s "
            f"({self.images / max(seconds, 1e-9):.1f} images/s)"
        )

    def _name(self, topic: str) -> str:
        return self._pubs[topic].topic_name

    def _describe(self) -> str:
        other = len(self.plan.classes) - 1
        how = (
            f"flow-controlled by answers on {self._answers.topic_name}"
            if self._answers is not None
            else f"at {float(self.config['rate']):g} x the recorded rate"
        )
        return (
            f"playing {self.plan.bag}: {self.plan.image_count} images on {self._name(self.plan.image_topic)} "
            f"and {other} other topic{'s' * (other != 1)}, {how}"
        )


def _spin(executor: SingleThreadedExecutor) -> None:
    with contextlib.suppress(ExternalShutdownException):  # SIGINT / SIGTERM: the main thread stops too
        executor.spin()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        node = BagPlayer()
        node.play()
        return 0
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StartTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt):
        return 130
    except Exception:
        if rclpy.ok():
            raise
        return 130  # the shutdown came between a check and an rclpy call, which then failed
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
