"""Camera frames with their poses from a rosbag2 recording (mcap or sqlite3), without a ROS install.

``vpr-build-map`` reads a recording here and hands each frame to the same
:class:`~vpr_ros.mapping.map_builder.MapBuilder` the mapping node uses; the stamp matching is the node's
:class:`~vpr_ros.io.pose_sync.ImagePosePairer`, fed in bag order with HEADER stamps (the bag
timestamp is the receive time, which lags by the transport delay). Images are deserialized but
not decoded: :meth:`Frame.rgb` decodes on demand, so frames that keyframe selection skips cost no
JPEG decode.

A robot whose pose is only on TF (``map -> odom -> base_link`` on /tf, mounts on /tf_static) is
read with ``pose_topic="/tf"``: the transforms go into a :class:`~vpr_ros.io.tf_buffer.TransformBuffer`
and each image gets the pose of the base frame in the map frame interpolated at its header stamp
(:class:`~vpr_ros.io.tf_buffer.ImageTransformPairer`). /tf_static is read first, in a pass of its
own: a recorder gets the latched static transforms whenever it subscribes, often after the first
images, and they hold at every stamp.

Messages are read with ``rosbags``; bags that embed their message definitions are read with
those, others with the ROS 2 Kilted typestore (Image, Odometry and the pose types are identical
across Humble, Jazzy and Kilted; Kilted has tf2_msgs). Every problem with the recording
is an :class:`~vpr_ros.errors.InputError` naming the bag and what to do.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import ReaderError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore

from vpr_ros.errors import InputError
from vpr_ros.io.image_codec import message_to_rgb
from vpr_ros.io.pose_sync import ImagePosePairer, Pair, stamp_ns
from vpr_ros.io.tf_buffer import ImageTransformPairer, TransformBuffer, clean_frame_id

__all__ = [
    "IMAGE_TYPES",
    "POSE_TYPES",
    "TF_TOPIC",
    "BagInfo",
    "Frame",
    "FrameStream",
    "bag_info",
    "bag_topics",
    "check_increasing",
    "choose_topic",
    "choose_topics",
    "frame_source",
    "iter_frames",
    "iter_raw",
    "parse_frame_source",
    "topic_listing",
]

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
POSE_TYPES = (
    "nav_msgs/msg/Odometry",
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
)
TF_TOPIC = "/tf"  # as a pose topic: poses from TF (asked for, never chosen)
TF_STATIC_TOPIC = "/tf_static"
TF_TYPE = "tf2_msgs/msg/TFMessage"
_READ_ERRORS = (AnyReaderError, ReaderError, SerdeError)


@dataclass(frozen=True)
class BagInfo:
    """What a build needs to know before reading the frames: topics, image count, pose frame."""

    path: Path
    image_topic: str
    image_type: str
    pose_topic: str
    pose_type: str
    image_count: int
    pose_frame_id: str


@dataclass(frozen=True)
class Frame:
    """One image paired with the robot's pose at its stamp. ``index`` counts the image topic's
    messages from 0; ``message`` is the deserialized image message, decoded by :meth:`rgb` only
    when needed."""

    index: int
    stamp_ns: int
    position: np.ndarray
    orientation: np.ndarray
    pose_stamp_ns: int
    message: Any
    source: str

    def rgb(self) -> np.ndarray:
        """RGB uint8 [H, W, 3]; raises ImageConversionError for an undecodable image."""
        return message_to_rgb(self.message)


def _check_bag_path(path: Path) -> None:
    if not path.exists():
        raise InputError(f"bag {path}: does not exist")
    if not path.is_dir():
        raise InputError(f"bag {path}: not a rosbag2 directory (pass the directory that holds metadata.yaml)")
    if not (path / "metadata.yaml").is_file():
        raise InputError(
            f"bag {path}: not a rosbag2 directory (no metadata.yaml; if it holds .mcap or .db3 files, "
            "'ros2 bag reindex' recreates it)"
        )


@contextlib.contextmanager
def open_bag(path: Path) -> Iterator[AnyReader]:
    """An open reader; every rosbags failure, here or while reading, becomes a one-line InputError."""
    _check_bag_path(path)
    try:
        with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
            yield reader
    except (*_READ_ERRORS, OSError) as exc:
        raise InputError(f"bag {path}: cannot read it ({' '.join(str(exc).split())})") from None


def bag_topics(path: Path | str) -> dict[str, str]:
    """``{topic: message type}`` of a rosbag2 directory."""
    with open_bag(Path(path)) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def topic_listing(topics: dict[str, str]) -> str:
    """``/a (pkg/msg/A), /b (pkg/msg/B)``: what an error about a missing topic shows."""
    return ", ".join(f"{name} ({msgtype})" for name, msgtype in sorted(topics.items())) or "no topics"


def choose_topic(
    topics: dict[str, str], given: str | None, types: tuple[str, ...], kind: str, option: str | None = None
) -> tuple[str, str]:
    """``(topic, type)``: the ``given`` topic (checked) or the only topic of one of ``types``; an
    InputError listing the bag's topics otherwise, telling to choose with ``option`` (default
    ``--<kind>-topic``)."""
    if given is not None:
        if topics.get(given) not in types:
            found = f"is {topics[given]}" if given in topics else "is not in the bag"
            raise InputError(
                f"{kind} topic {given} {found}; expected one of {', '.join(types)}. The bag has: "
                f"{topic_listing(topics)}"
            )
        return given, topics[given]
    matching = sorted(name for name, msgtype in topics.items() if msgtype in types)
    if not matching:
        raise InputError(f"no {kind} topic ({' or '.join(types)}); the bag has: {topic_listing(topics)}")
    if len(matching) > 1:
        raise InputError(
            f"{len(matching)} {kind} topics ({', '.join(matching)}); choose one with "
            f"{option or f'--{kind}-topic'}. The bag has: {topic_listing(topics)}"
        )
    return matching[0], topics[matching[0]]


def choose_topics(
    topics: dict[str, str], image_topic: str | None = None, pose_topic: str | None = None
) -> tuple[str, str, str, str]:
    """``(image_topic, image_type, pose_topic, pose_type)``: the given topics (checked) or the only
    topic of each kind; ``pose_topic`` /tf (never chosen unasked) is TF's tf2_msgs/msg/TFMessage.
    Absence or ambiguity is an InputError listing the bag's topics."""
    image = choose_topic(topics, image_topic, IMAGE_TYPES, "image")
    try:
        pose = choose_topic(topics, pose_topic, (TF_TYPE,) if pose_topic == TF_TOPIC else POSE_TYPES, "pose")
    except InputError as exc:
        if pose_topic is None and topics.get(TF_TOPIC) == TF_TYPE:
            raise InputError(f"{exc}; for poses on TF pass --pose-topic {TF_TOPIC}") from None
        raise
    return (*image, *pose)


def _map_frame(map_frame: str | None) -> str:
    """The frame poses on /tf are looked up in: TF has no single pose frame, so it must be named."""
    if map_frame is None:
        raise InputError(
            f"poses on {TF_TOPIC} need a map frame: the frame to look the robot's base frame up in (e.g. map)"
        )
    return clean_frame_id(map_frame, "map frame id")


def _pose_of(msg: Any, msgtype: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Position and quaternion (x, y, z, w) of an Odometry, PoseStamped or PoseWithCovarianceStamped."""
    pose = msg.pose if msgtype == "geometry_msgs/msg/PoseStamped" else msg.pose.pose
    p, q = pose.position, pose.orientation
    return (p.x, p.y, p.z), (q.x, q.y, q.z, q.w)


def bag_info(
    path: Path | str,
    image_topic: str | None = None,
    pose_topic: str | None = None,
    *,
    map_frame: str | None = None,
) -> BagInfo:
    """Topics (see :func:`choose_topics`), the image count and the first pose's frame_id (with
    ``pose_topic`` /tf: ``map_frame``, which it requires): what a build checks and sets up before
    reading frames. Reads one pose message, not the images."""
    path = Path(path)
    tf_frame = _map_frame(map_frame) if pose_topic == TF_TOPIC else None
    with open_bag(path) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        try:
            image_topic, image_type, pose_topic, pose_type = choose_topics(topics, image_topic, pose_topic)
        except InputError as exc:
            raise InputError(f"bag {path}: {exc}") from None
        image_count = sum(c.msgcount for c in reader.connections if c.topic == image_topic)
        poses = [c for c in reader.connections if c.topic == pose_topic]
        first = next(iter(reader.messages(connections=poses)), None)
        if first is None or image_count == 0:
            empty = pose_topic if first is None else image_topic
            raise InputError(f"bag {path}: topic {empty} has no messages")
        frame_id = tf_frame or reader.deserialize(first[2], first[0].msgtype).header.frame_id
    return BagInfo(path, image_topic, image_type, pose_topic, pose_type, image_count, frame_id)


def iter_raw(path: Path | str, topics: Sequence[str]) -> Iterator[tuple[str, str, int, bytes]]:
    """``(topic, message type, bag timestamp ns, data)`` of the messages on ``topics``, in bag order
    and not deserialized: ``data`` is the CDR bytes as recorded (with the 4-byte encapsulation
    header), which a player republishes as is. A topic the bag lacks is an InputError listing the
    bag's topics."""
    path = Path(path)
    with open_bag(path) as reader:
        present = {c.topic: c.msgtype for c in reader.connections}
        missing = sorted(set(topics) - set(present))
        if missing:
            raise InputError(
                f"bag {path}: no topic {', '.join(missing)}; the bag has: {topic_listing(present)}"
            )
        wanted = [c for c in reader.connections if c.topic in topics]
        for connection, timestamp, data in reader.messages(connections=wanted):
            yield connection.topic, connection.msgtype, timestamp, bytes(data)


_SOURCE = re.compile(r"^(?P<bag>.*):(?P<topic>/.*)#(?P<index>\d+)$")


def frame_source(path: Path, topic: str, index: int) -> str:
    """``<bag name>:<topic>#<index>``: where a frame came from, as a map's keyframes.csv records it."""
    return f"{path.name}:{topic}#{index}"


def parse_frame_source(source: str) -> tuple[str, str, int] | None:
    """``(bag name, topic, index)`` of a :func:`frame_source` string; None for any other text."""
    match = _SOURCE.match(source)
    return None if match is None else (match["bag"], match["topic"], int(match["index"]))


def check_increasing(path: Path, topic: str, index: int, previous_stamp: int | None, stamp_ns: int) -> None:
    """Image header stamps must increase: a repeated or earlier stamp means the recording's clock or
    order is broken, and pairing by stamp (poses, or a localizer's answers) would be silently wrong.
    ``index`` counts the topic's messages from 0."""
    if previous_stamp is not None and stamp_ns <= previous_stamp:
        how = "repeats" if stamp_ns == previous_stamp else "goes back from"
        raise InputError(
            f"bag {path}: header stamps on {topic} are not increasing: message {index} has stamp "
            f"{stamp_ns} ns, which {how} {previous_stamp} ns of message {index - 1}; re-record the bag, "
            "or reindex it in stamp order"
        )


class FrameStream(Iterator[Frame]):
    """Frames of a bag in bag order (see :func:`iter_frames`), with counters for the summary:
    ``images_read`` / ``poses_read`` (messages on each topic so far), ``bad_poses`` (pose messages
    skipped as non-finite or with a zero quaternion) and the pairer's ``paired`` / ``dropped_*``
    counts. With poses from TF, ``poses_read`` counts /tf and /tf_static messages, ``bad_poses``
    the transforms in them skipped as invalid, and the pairer is an
    :class:`~vpr_ros.io.tf_buffer.ImageTransformPairer` (same counters)."""

    def __init__(
        self,
        path: Path | str,
        image_topic: str,
        pose_topic: str,
        tolerance_s: float,
        *,
        map_frame: str | None = None,
        base_frame: str = "base_link",
    ) -> None:
        self.path = Path(path)
        self.image_topic = image_topic
        self.pose_topic = pose_topic
        self.pairer: ImagePosePairer | ImageTransformPairer = (
            ImageTransformPairer(TransformBuffer(), _map_frame(map_frame), base_frame)
            if pose_topic == TF_TOPIC
            else ImagePosePairer(tolerance_s)
        )
        self.images_read = 0
        self.poses_read = 0
        self.bad_poses = 0
        self._frames = self._read()

    def __next__(self) -> Frame:
        return next(self._frames)

    def _read(self) -> Iterator[Frame]:
        with open_bag(self.path) as reader:
            topics = {c.topic: c.msgtype for c in reader.connections}
            try:
                choose_topics(topics, self.image_topic, self.pose_topic)
            except InputError as exc:
                raise InputError(f"bag {self.path}: {exc}") from None
            tf = self.pairer if isinstance(self.pairer, ImageTransformPairer) else None
            static = [c for c in reader.connections if c.topic == TF_STATIC_TOPIC and c.msgtype == TF_TYPE]
            if tf is not None and static:  # an empty list would read every topic
                for connection, _, raw in reader.messages(connections=static):
                    self._add_transforms(tf, reader.deserialize(raw, connection.msgtype), static=True)
            wanted = [c for c in reader.connections if c.topic in (self.image_topic, self.pose_topic)]
            previous_stamp = None
            for connection, _, raw in reader.messages(connections=wanted):
                msg = reader.deserialize(raw, connection.msgtype)
                if connection.topic == self.image_topic:
                    stamp = stamp_ns(msg.header)
                    check_increasing(self.path, self.image_topic, self.images_read, previous_stamp, stamp)
                    previous_stamp = stamp
                    pairs = self.pairer.add_image(stamp, (self.images_read, msg))
                    self.images_read += 1
                elif tf is not None:
                    pairs = self._add_transforms(tf, msg, static=False)
                else:
                    pairs = self._add_pose(stamp_ns(msg.header), msg, connection.msgtype)
                yield from map(self._frame, pairs)
            yield from map(self._frame, self.pairer.flush())
            if tf is not None:
                self._check_transforms(tf)

    def _add_pose(self, stamp_ns: int, msg: Any, msgtype: str) -> list[Pair]:
        """Pairs the pose settles; a broken pose (NaN before a filter initialises) is skipped, the
        first one said in a warning, the others only counted (``bad_poses``, in the summaries)."""
        self.poses_read += 1
        try:
            return self.pairer.add_pose(stamp_ns, *_pose_of(msg, msgtype))
        except InputError as exc:
            self.bad_poses += 1
            if self.bad_poses == 1:
                log.warning(
                    "bag %s: %s message %d skipped: %s (further bad poses are only counted)",
                    self.path, self.pose_topic, self.poses_read - 1, exc,
                )  # fmt: skip
            return []

    def _add_transforms(self, tf: ImageTransformPairer, msg: Any, static: bool) -> list[Pair]:
        """Pairs a TF message settles; its invalid transforms are skipped, the first one said in a
        warning, the others only counted (``bad_poses``)."""
        self.poses_read += 1
        pairs = tf.add_transforms(msg, static)
        if tf.buffer.rejected and not self.bad_poses:
            log.warning(
                "bag %s: transform on %s skipped: %s (further bad transforms are only counted)",
                self.path, TF_STATIC_TOPIC if static else TF_TOPIC, tf.buffer.first_rejection,
            )  # fmt: skip
        self.bad_poses = tf.buffer.rejected
        return pairs

    def _check_transforms(self, tf: ImageTransformPairer) -> None:
        """After the bag: no image with a pose is an InputError that names the frames TF has."""
        if tf.paired or not self.images_read:
            return
        frames = tf.buffer.frames()
        tree = f"the tree has frames {', '.join(frames)}" if frames else "the bag has no valid transforms"
        missing = " and ".join(repr(f) for f in (tf.target, tf.source) if f not in tf.buffer)
        why = (
            f"no frame {missing}"
            if missing
            else f"none at its {self.images_read} image stamps ({tf.last_failure})"
        )
        raise InputError(
            f"bag {self.path}: no transform from {tf.target!r} to {tf.source!r} on {TF_TOPIC}: {why}; {tree}"
        )

    def _frame(self, pair: Pair) -> Frame:
        index, msg = pair.payload
        source = frame_source(self.path, self.image_topic, index)
        return Frame(index, pair.stamp_ns, pair.position, pair.orientation, pair.pose_stamp_ns, msg, source)


def iter_frames(
    path: Path | str,
    image_topic: str,
    pose_topic: str,
    tolerance_s: float,
    *,
    map_frame: str | None = None,
    base_frame: str = "base_link",
) -> FrameStream:
    """Frames of ``image_topic`` paired with ``pose_topic`` (HEADER stamps, within ``tolerance_s``),
    in bag order; a frame's pose is the robot's (the pose topic's), the camera extrinsic is the
    map session's business. Image stamps that repeat or go back raise InputError when reached;
    images without a pose are counted by ``stream.pairer`` and skipped.

    ``pose_topic`` /tf reads poses from TF: a frame's pose is ``base_frame``'s in ``map_frame``
    (required) at the image stamp, interpolated as tf2 does (``tolerance_s`` does not apply), with
    /tf_static's transforms at every stamp. A bag in which no image gets a pose raises InputError
    at the end, naming the frames its TF has."""
    return FrameStream(path, image_topic, pose_topic, tolerance_s, map_frame=map_frame, base_frame=base_frame)
