"""Calibration images for INT8 engines, from a folder of images or a rosbag2 recording.

INT8 scales are fitted to the activations of real inputs, so they should come from the robot's
own camera in the area it will localize in: a mapping bag is the natural source. The chosen
frames are spread evenly over the source (sorted file names, or message order on one topic) and
identified by a hash of their names or stamps and the requested count; the TensorRT 10
calibration cache and the engine sidecar record that hash, so a different set calibrates anew.

Frames are decoded with :func:`vpr_ros.io.image_codec.message_to_rgb` and preprocessed with
:func:`vpr_ros.preprocess.to_input_batch`, exactly as the localization node does.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vpr_ros.bundle import InputSpec
from vpr_ros.errors import InputError
from vpr_ros.io.image_codec import ImageConversionError, message_to_rgb
from vpr_ros.io.rosbag_source import IMAGE_TYPES, open_bag, topic_listing
from vpr_ros.preprocess import to_input_batch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_COUNT = 500  # TensorRT's advice for CNNs and ViTs
DEFAULT_BATCH = 8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationSet:
    """The chosen calibration frames of one source, read again each time they are iterated.

    ``items`` are file paths relative to ``source`` for a folder, ``"<index>@<stamp_ns>"`` (the
    message's position on ``topic`` and its bag timestamp) for a bag.
    """

    source: Path
    spec: InputSpec
    count: int
    batch: int
    items: tuple[str, ...]
    topic: str | None = None

    @property
    def sha256(self) -> str:
        return calibration_hash(self.items, self.count, self.topic)

    def __len__(self) -> int:
        return len(self.items)

    def describe(self) -> str:
        where = f"{self.source} topic {self.topic}" if self.topic else str(self.source)
        return f"{len(self.items)} frames of {where} (set {self.sha256[:12]})"

    def batches(self) -> Iterator[np.ndarray]:
        """float32 batches [batch, 3, H, W] (the last may be smaller), preprocessed for the bundle."""
        images = self._bag_images() if self.topic is not None else self._folder_images()
        return _batched(images, self.spec, self.batch)

    def array(self) -> np.ndarray:
        """All frames as one float32 array [N, 3, H, W] (N x 3 x H x W x 4 bytes of memory)."""
        return np.concatenate(list(self.batches()))

    def _folder_images(self) -> Iterator[np.ndarray]:
        for name in self.items:
            bgr = cv2.imread(str(self.source / name), cv2.IMREAD_COLOR)
            if bgr is None:
                raise InputError(f"calibration source {self.source}: {name} cannot be read as an image")
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _bag_images(self) -> Iterator[np.ndarray]:
        wanted = {int(item.split("@", 1)[0]) for item in self.items}
        with open_bag(self.source) as reader:
            connections = [c for c in reader.connections if c.topic == self.topic]
            for index, (connection, stamp, raw) in enumerate(reader.messages(connections=connections)):
                if index not in wanted:
                    continue
                try:
                    yield message_to_rgb(reader.deserialize(raw, connection.msgtype))
                except ImageConversionError as exc:
                    raise InputError(
                        f"calibration source {self.source}: {self.topic} at {stamp} ns: {exc}"
                    ) from None


def calibration_set(
    source: Path | str,
    spec: InputSpec,
    count: int = DEFAULT_COUNT,
    batch: int = DEFAULT_BATCH,
    topic: str | None = None,
) -> CalibrationSet:
    """Choose up to ``count`` frames of ``source`` (a folder of images, searched recursively, or a
    rosbag2 directory: ``topic`` or its first image topic); InputError names a bad source."""
    source = Path(source).expanduser()
    if count < 1 or batch < 1:
        raise InputError(f"calibration count and batch must be >= 1, got {count} and {batch}")
    if not source.exists():
        raise InputError(f"calibration source {source}: does not exist")
    if (source / "metadata.yaml").is_file():
        return _bag_set(source, spec, count, batch, topic)
    if not source.is_dir():
        raise InputError(f"calibration source {source}: not a folder of images or a rosbag2 directory")
    if topic is not None:
        raise InputError(
            f"calibration source {source}: a topic ({topic}) applies to a rosbag2 directory only"
        )
    return _folder_set(source, spec, count, batch)


def calibration_batches(
    source: Path | str, spec: InputSpec, count: int, batch: int, topic: str | None = None
) -> Iterator[np.ndarray]:
    """Preprocessed float32 batches of the calibration frames of ``source`` (see :func:`calibration_set`).
    The source is checked now; frames are read as the batches are consumed."""
    return calibration_set(source, spec, count, batch, topic).batches()


def calibration_hash(items: Sequence[str], count: int, topic: str | None = None) -> str:
    """sha256 over the chosen frames' names (or bag positions and stamps), the topic and the count."""
    canonical = json.dumps({"items": list(items), "count": count, "topic": topic}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _evenly(items: Sequence[str], count: int) -> tuple[str, ...]:
    """``count`` items spread evenly from first to last (all of them when there are fewer)."""
    if count >= len(items):
        return tuple(items)
    positions = np.linspace(0, len(items) - 1, count).round().astype(int)
    return tuple(items[i] for i in positions)


def _folder_set(source: Path, spec: InputSpec, count: int, batch: int) -> CalibrationSet:
    names = sorted(
        p.relative_to(source).as_posix()
        for p in source.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not names:
        raise InputError(f"calibration source {source}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return CalibrationSet(source, spec, count, batch, _evenly(names, count))


def _bag_set(source: Path, spec: InputSpec, count: int, batch: int, topic: str | None) -> CalibrationSet:
    with open_bag(source) as reader:
        topic = _image_topic(source, {c.topic: c.msgtype for c in reader.connections}, topic)
        connections = [c for c in reader.connections if c.topic == topic]
        stamps = [stamp for _, stamp, _ in reader.messages(connections=connections)]
    if not stamps:
        raise InputError(f"calibration source {source}: topic {topic} has no messages")
    chosen = _evenly([f"{i}@{stamp}" for i, stamp in enumerate(stamps)], count)
    return CalibrationSet(source, spec, count, batch, chosen, topic)


def _image_topic(source: Path, topics: dict[str, str], topic: str | None) -> str:
    images = sorted(name for name, msgtype in topics.items() if msgtype in IMAGE_TYPES)
    if topic is not None:
        if topic not in images:
            raise InputError(
                f"calibration source {source}: {topic} is not an image topic of the bag "
                f"(image topics: {', '.join(images) or 'none'})"
            )
        return topic
    if not images:
        raise InputError(
            f"calibration source {source}: bag has no image topic; it has: {topic_listing(topics)}"
        )
    if len(images) > 1:
        log.info(
            "calibration: using %s; the bag also has %s (choose with a topic)",
            images[0],
            ", ".join(images[1:]),
        )
    return images[0]


def _batched(images: Iterable[np.ndarray], spec: InputSpec, batch: int) -> Iterator[np.ndarray]:
    pending: list[np.ndarray] = []
    for image in images:
        pending.append(image)
        if len(pending) == batch:
            yield to_input_batch(pending, spec)
            pending = []
    if pending:
        yield to_input_batch(pending, spec)
