"""Ground truth of a query run: each camera frame's recorded pose, keyed by the image's header stamp.

The pairing is :func:`vpr_ros.io.rosbag_source.iter_frames` (the mapping code path), so a frame has
ground truth exactly when the map builder would have given it a pose. The localizer stamps its
answer with the image's header stamp, which is how an answer finds its ground truth; the reader
therefore refuses image stamps that repeat or go back (an answer could not be told apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.io.pose_sync import DEFAULT_TOLERANCE_S
from vpr_ros.io.rosbag_source import BagInfo, FrameStream, bag_info, iter_frames
from vpr_ros.mapping.place_map import PlaceMap


@dataclass(frozen=True)
class GroundTruth:
    """Poses of the frames that had one, in bag order (stamps strictly increase)."""

    info: BagInfo
    image_count: int
    stamps_ns: np.ndarray  # [Q] int64
    positions: np.ndarray  # [Q, 3]
    orientations: np.ndarray  # [Q, 4] x, y, z, w

    def __len__(self) -> int:
        return len(self.stamps_ns)

    @property
    def without_pose(self) -> int:
        """Images that had no pose within the sync tolerance (not evaluated)."""
        return self.image_count - len(self)


class TruthRecorder:
    """Collects frames of a :class:`~vpr_ros.io.rosbag_source.FrameStream` into a :class:`GroundTruth`
    while someone else (the offline evaluator) uses the same frames."""

    def __init__(self, info: BagInfo) -> None:
        self.info = info
        self._stamps: list[int] = []
        self._positions: list[np.ndarray] = []
        self._orientations: list[np.ndarray] = []

    def add(self, stamp_ns: int, position: np.ndarray, orientation: np.ndarray) -> None:
        self._stamps.append(stamp_ns)
        self._positions.append(position)
        self._orientations.append(orientation)

    def result(self, stream: FrameStream) -> GroundTruth:
        info = self.info
        if not self._stamps:
            raise InputError(
                f"bag {info.path}: none of the {stream.images_read} images on {info.image_topic} has a pose "
                f"on {info.pose_topic} within the sync tolerance; nothing to evaluate"
            )
        return GroundTruth(
            info,
            stream.images_read,
            np.asarray(self._stamps, dtype=np.int64),
            np.asarray(self._positions, dtype=np.float64).reshape(-1, 3),
            np.asarray(self._orientations, dtype=np.float64).reshape(-1, 4),
        )


def open_query_bag(
    bag: Path | str,
    image_topic: str | None = None,
    pose_topic: str | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> tuple[BagInfo, FrameStream]:
    """The bag's topics (checked; the error lists what the bag has) and its frames with poses."""
    info = bag_info(bag, image_topic, pose_topic)
    return info, iter_frames(info.path, info.image_topic, info.pose_topic, tolerance_s)


def read_ground_truth(info: BagInfo, stream: FrameStream) -> GroundTruth:
    """Every frame's pose from an :func:`open_query_bag` stream, without decoding a single image."""
    recorder = TruthRecorder(info)
    for frame in stream:
        recorder.add(frame.stamp_ns, frame.position, frame.orientation)
    return recorder.result(stream)


def check_same_frame(info: BagInfo, place_map: PlaceMap, map_dir: Path | str) -> None:
    """Positions of map and bag are only comparable in one frame: refuse e.g. 'map' vs 'odom'."""
    if info.pose_frame_id != place_map.frame_id:
        raise InputError(
            f"map {map_dir} is in frame '{place_map.frame_id}' but the poses on {info.pose_topic} in bag "
            f"{info.path} are in frame '{info.pose_frame_id}'; evaluate against a map built in the bag's "
            "frame (or re-record the bag with poses in the map's frame)"
        )
