"""Image subscriptions that take the reliability the camera's publishers offer.

Best effort matches every publisher, and stays the choice while there is none or any of them is
best effort. When every publisher of the topic offers reliable, the subscription is reliable too
(same depth, keep last, volatile), as ``ros2 topic echo`` and rosbag2 adapt: a reliable writer
then repairs the fragments of a large frame that its transport dropped. Measured with
``benchmarks/dds_delivery.py`` (640x480 rgb8 at 15 Hz, Fast DDS default transports, a reliable
keep-last-10 publisher): a best-effort subscriber got 31 of 60 frames, a reliable depth-1 one 60
of 60 (latency p50 15 ms instead of 5 ms). With ``config/fastdds_large_images.xml`` both get every
frame.

The choice is made when subscribing and checked again every ``period_s``: a camera that starts
after the node, or whose publishers change, gets a new subscription (the old one is destroyed
first; a frame in between may be missed, never duplicated).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rclpy.qos import QoSProfile, ReliabilityPolicy

RECHECK_PERIOD_S = 1.0


def offered_reliability(publishers: list[Any]) -> ReliabilityPolicy | None:
    """RELIABLE when every publisher (``TopicEndpointInfo``) offers it, BEST_EFFORT when any does
    not, None without publishers."""
    if not publishers:
        return None
    reliable = all(info.qos_profile.reliability == ReliabilityPolicy.RELIABLE for info in publishers)
    return ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT


def adapted_qos(base: QoSProfile, offered: ReliabilityPolicy | None) -> QoSProfile:
    """``base`` (the node's camera QoS: best effort, keep last) with the offered reliability."""
    reliability = ReliabilityPolicy.RELIABLE if offered == ReliabilityPolicy.RELIABLE else base.reliability
    return QoSProfile(
        history=base.history, depth=base.depth, reliability=reliability, durability=base.durability
    )


def describe(qos: QoSProfile) -> str:
    reliability = "reliable" if qos.reliability == ReliabilityPolicy.RELIABLE else "best effort"
    return f"{reliability}, depth {qos.depth}"


class AdaptiveImageSubscriptions:
    """One subscription per image topic, each with the QoS its publishers offer; :meth:`close`
    destroys them and the re-check timer (deactivation). The re-check runs in ``callback_group``
    (the image intake group, or the intake thread's node), so it never races an image callback.
    ``logger``: where re-subscriptions are told (default: ``node``'s)."""

    def __init__(
        self,
        node: Any,
        msg_type: type,
        topics: list[str],
        callbacks: list[Callable[[Any], None]],
        base_qos: QoSProfile,
        callback_group: Any,
        period_s: float = RECHECK_PERIOD_S,
        logger: Any = None,
    ) -> None:
        self.node, self.msg_type, self.topics, self.callbacks = node, msg_type, topics, callbacks
        self.logger = logger if logger is not None else node.get_logger()
        self.base_qos, self.group = base_qos, callback_group
        self.qos: list[QoSProfile] = []
        self.subscriptions: list[Any] = []
        for topic, callback in zip(topics, callbacks):
            qos = adapted_qos(base_qos, offered_reliability(node.get_publishers_info_by_topic(topic)))
            self.qos.append(qos)
            self.subscriptions.append(self._subscribe(topic, callback, qos))
        self.timer = node.create_timer(period_s, self.recheck, callback_group=callback_group)

    def _subscribe(self, topic: str, callback: Callable[[Any], None], qos: QoSProfile) -> Any:
        return self.node.create_subscription(self.msg_type, topic, callback, qos, callback_group=self.group)

    def recheck(self) -> None:
        """Re-subscribe the topics whose publishers now offer another reliability."""
        if not self.subscriptions:  # closed while this call waited for the intake group
            return
        for camera, topic in enumerate(self.topics):
            offered = offered_reliability(self.node.get_publishers_info_by_topic(topic))
            if offered is None:
                continue  # keep what we have until a publisher is there
            wanted = adapted_qos(self.base_qos, offered)
            if wanted.reliability == self.qos[camera].reliability:
                continue
            self.node.destroy_subscription(self.subscriptions[camera])
            self.subscriptions[camera] = self._subscribe(topic, self.callbacks[camera], wanted)
            self.qos[camera] = wanted
            self.logger.info(f"{topic}: the publishers offer {describe(wanted)}: re-subscribed")

    def close(self) -> None:
        self.node.destroy_timer(self.timer)
        for subscription in self.subscriptions:
            self.node.destroy_subscription(subscription)
        self.subscriptions = []
