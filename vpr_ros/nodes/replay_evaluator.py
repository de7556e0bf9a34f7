"""``vpr_replay_evaluator``: score the localization node's answers during a bag replay, then report.

It reads the ground truth from the bag being replayed (every image's pose, paired as the mapper
pairs them), listens to the localizer's ``~/matches`` (remap ``matches``) and to the bag's image
topic, and pairs each answer with its frame by the image header stamp, which the localizer copies
into its answer. Latency is the time from the image's publication (its DDS source timestamp) to
the answer's arrival here (its reception timestamp): the middleware's own times, so neither the
order in which this node runs its callbacks nor a late re-delivery of an image enters it (player
and evaluator share a clock on one machine; across machines, synchronise the clocks).

The image subscription is made only once the answer subscription has matched the localizer's
publisher: a player that waits for the evaluator as an image subscriber (``vpr_bag_player``
``wait_for_subscribers``) then cannot send frames whose answers would go out before the evaluator
could hear them (DDS does not keep them for a late reader; on a loaded machine matching can take
over a second). It is also made only once the image topic has a publisher, with "best available"
reliability: reliable for a reliable player (every image timed, even on a loaded machine), best
effort for a bag recorded from a best-effort camera.

When every frame with ground truth has been answered, or no answer came for
``eval.idle_timeout_s`` (a replay at the recorded rate loses frames to a slow model, or
``ros2 bag play`` ended), it writes the report (:mod:`vpr_ros.evaluation.report`) and exits 0;
Ctrl-C writes the report of what arrived so far. Works with ``vpr_bag_player`` (flow control or
a rate) or ``ros2 bag play`` alike. Parameters: ``config/replay_evaluator.yaml``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import CompressedImage, Image, PointCloud2

from vpr_ros.errors import BackendError, InputError
from vpr_ros.evaluation.answers import AnswerLog
from vpr_ros.evaluation.ground_truth import check_same_frame, open_query_bag, read_ground_truth
from vpr_ros.evaluation.metrics import EvalSettings
from vpr_ros.evaluation.session import finish, prepare
from vpr_ros.io import match_table
from vpr_ros.io.pose_sync import stamp_ns
from vpr_ros.nodes import params as P

REQUIRED = ("bag", "map.dir", "model.bundle_dir", "report.dir")
# Images, only timed here: reliable when every publisher is (resolved when the subscription is
# made, hence made after a publisher was seen), best effort otherwise; a backlog, not the newest only.
IMAGE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.BEST_AVAILABLE
)
ANSWER_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)


class ReplayEvaluator(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("vpr_replay_evaluator", **kwargs)
        P.declare(self, P.REPLAY_EVALUATOR)
        cfg = P.snapshot(self, P.REPLAY_EVALUATOR)
        problems = P.problems(cfg, P.REPLAY_EVALUATOR) + [
            f"parameter {name} is required" for name in REQUIRED if not cfg[name]
        ]
        if problems:
            raise InputError("; ".join(problems))
        settings = EvalSettings(distance_m=cfg["eval.distance_m"], angle_deg=cfg["eval.angle_deg"] or None)
        self.inputs = prepare(
            cfg["map.dir"],
            cfg["model.bundle_dir"],
            cfg["report.dir"],
            cfg["report.overwrite"],
            settings,
            cfg["search.similarity_threshold"],
        )
        info, stream = open_query_bag(
            cfg["bag"],
            cfg["input.image_topic"] or None,
            cfg["input.pose_topic"] or None,
            cfg["input.sync_tolerance_s"],
        )
        check_same_frame(info, self.inputs.place_map, self.inputs.map_dir)  # before reading the bag
        self.truth = read_ground_truth(info, stream)
        self.config = cfg
        self.expected = {int(s) for s in self.truth.stamps_ns}
        self.answers: dict[int, tuple[np.ndarray, int]] = {}  # stamp -> match table, received ns
        self.published: dict[int, int] = {}  # image stamp -> source timestamp ns
        self.started = time.monotonic()
        self.last_answer: float | None = None
        self.done = False
        info = self.truth.info
        self.answer_sub = self.create_subscription(PointCloud2, "matches", self._on_answer, ANSWER_QOS)
        self.image_sub = None
        self.create_timer(0.1, self._check_done)
        self.get_logger().info(
            f"evaluating {len(self.expected)} frames of {info.path} ({info.image_topic}) from answers on "
            f"{self.answer_sub.topic_name}; report -> {self.inputs.out}"
        )

    def _subscribe_images_when_ready(self) -> None:
        """Once the answers' publisher is matched and the images have a publisher (module doc)."""
        info = self.truth.info
        matched = getattr(self.answer_sub, "get_publisher_count", None)  # rclpy of Kilted and later
        if self.image_sub is not None or (matched is not None and matched() == 0):
            return
        if self.count_publishers(info.image_topic) == 0:
            return
        image_type = CompressedImage if info.image_type.endswith("CompressedImage") else Image
        self.image_sub = self.create_subscription(image_type, info.image_topic, self._on_image, IMAGE_QOS)
        mine = [
            e
            for e in self.get_subscriptions_info_by_topic(info.image_topic)
            if e.node_name == self.get_name()
        ]
        reliability = mine[0].qos_profile.reliability.name.lower() if mine else "unknown"
        self.get_logger().info(f"timing images on {info.image_topic} ({reliability})")

    def _on_image(self, msg: Image | CompressedImage, info: MessageInfo) -> None:
        self.published[stamp_ns(msg.header)] = info["source_timestamp"]

    def _on_answer(self, msg: PointCloud2, info: MessageInfo) -> None:
        stamp = stamp_ns(msg.header)
        try:
            rows = match_table.read_table(msg)
        except InputError as exc:
            self.get_logger().error(f"answer at {stamp} ignored: {exc}", throttle_duration_sec=5.0)
            return
        self.answers[stamp] = (rows, info["received_timestamp"])  # a re-sent frame: the last answer
        self.last_answer = time.monotonic()
        if len(self.answers) % 50 == 0:
            self.get_logger().info(f"{len(self.answers)} answers for {len(self.expected)} frames")

    def _check_done(self) -> None:
        self._subscribe_images_when_ready()
        now = time.monotonic()
        if self.last_answer is None:
            limit = self.config["eval.start_timeout_s"]
            if now - self.started > limit:
                raise InputError(
                    f"no answer on {self.answer_sub.topic_name} within {limit} s; "
                    "is the localizer running, and 'matches' remapped to its ~/matches?"
                )
            return
        complete = all(s in self.answers for s in self.expected)
        if complete or now - self.last_answer > self.config["eval.idle_timeout_s"]:
            self.done = True

    def report(self) -> str:
        log, filtered = AnswerLog("cosine"), AnswerLog("cosine")
        filter_answered = False
        for stamp, (rows, received_ns) in self.answers.items():
            published_ns = self.published.get(stamp)
            latency_s = float("nan") if published_ns is None else (received_ns - published_ns) / 1e9
            single = rows[rows["filtered"] == 0]
            log.add_match_table(stamp, single, latency_s)
            # the sequence filter's rows where it answered; before it did, the frame's own
            own = rows["filtered"] == 1
            filtered.add_match_table(stamp, rows[own] if own.any() else single, latency_s)
            filter_answered |= bool(own.any())
        sequence = None
        if filter_answered:
            sequence = (filtered.answers(), {"source": "the localizer's match table (filtered rows)"})
        return finish(self.inputs, self.truth, log.answers(), str(self.config["run.description"]), sequence)


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        node = ReplayEvaluator()
        _spin_until_done(node)
        if not node.done:
            if len(node.answers) == 0:
                print("interrupted before any answer arrived; no report written", file=sys.stderr)
                return 130
            print(f"interrupted: reporting the {len(node.answers)} answers received", file=sys.stderr)
        print(node.report(), flush=True)
        return 0
    except (InputError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def _spin_until_done(node: ReplayEvaluator) -> None:
    """Spin until the run is complete, or until SIGINT / SIGTERM (then ``node.done`` stays False)."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok() and not node.done:
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
