"""A user's own robot recordings as places: rosbags with a camera and a pose topic, or image folders.

This is how vpr_ros users fine-tune and evaluate on their site: record a mapping run and a later
run, read each with :func:`read_bag_trajectory` (or :func:`read_image_folder` for images that
already sit in a folder with a CSV of poses) and pair them with :func:`trajectory_dataset`.

Bags are read with ``rosbags`` (rosbag2 directories or single .mcap/.db3 files, and ROS 1 .bag
files), so no ROS installation is needed. Pairing uses header stamps, the time the sensor saw the
scene, not the bag's receive time. The pose's heading is taken as the camera's: the body's +x axis
(REP 103) is assumed to be the viewing direction of a forward-looking camera.

Decoded images are cached as JPEG under ``cache_dir/<bag name>/`` with a ``manifest.json`` that
records the bag (path, size, message count), the options and the resulting poses; a second call
with the same bag and options reads only the bag's metadata and the manifest. Anything different
rebuilds the cache; the manifest is written last, so an interrupted build is never reused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.typesys import Stores, get_typestore

from training.datasets.base import PlaceDataset, PlaceSet
from training.datasets.common import (
    check_quaternions,
    quaternion_yaw,
    read_csv_table,
    require_dir,
    wrap_angle,
)
from training.errors import UserError
from vpr_ros.io.image_codec import ImageConversionError, message_to_rgb
from vpr_ros.io.pose_sync import stamp_ns

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
POSE_TYPES = ("nav_msgs/msg/Odometry", "geometry_msgs/msg/PoseStamped")
MANIFEST = "manifest.json"
CACHE_VERSION = 1
JPEG_QUALITY = 95
QUATERNION_COLUMNS = ("qx", "qy", "qz", "qw")


@dataclass(frozen=True)
class _Poses:
    """Pose samples sorted by stamp, one per stamp."""

    stamps_ns: np.ndarray  # int64 [P]
    xy: np.ndarray  # float64 [P, 2]
    yaw: np.ndarray  # float64 [P]


@dataclass(frozen=True)
class _Selection:
    """The image messages to keep, by position in the topic's message order, with their poses."""

    messages: np.ndarray  # int64 [K], increasing stamp order
    stamps_ns: np.ndarray
    xy: np.ndarray
    yaw: np.ndarray
    counts: dict[str, int]


def read_bag_trajectory(
    bag: Path,
    cache_dir: Path,
    image_topic: str = "/camera/image_raw",
    pose_topic: str = "/odom",
    max_stamp_gap_s: float = 0.05,
    min_spacing_m: float = 0.0,
    typestore: Stores = Stores.ROS2_KILTED,
) -> PlaceSet:
    """Images of ``image_topic`` with the nearest pose of ``pose_topic``, cached as JPEG.

    An image is kept when a pose lies within ``max_stamp_gap_s`` of its stamp and, with
    ``min_spacing_m`` > 0, when it is at least that far from the previously kept image (mapping
    runs idle at junctions; thinning keeps a place from dominating the database). Images with a
    duplicate stamp are dropped with a warning; unsorted stamps are sorted. ``typestore`` serves
    bags without embedded message definitions. Tags are the bag name.
    """
    bag = Path(bag)
    if not bag.exists():
        raise UserError(f"bag {bag} not found")
    if max_stamp_gap_s < 0 or min_spacing_m < 0:
        raise UserError("max_stamp_gap_s and min_spacing_m must not be negative")
    name = bag.stem if bag.is_file() else bag.name
    folder = Path(cache_dir) / name
    options = {
        "image_topic": image_topic,
        "pose_topic": pose_topic,
        "max_stamp_gap_s": float(max_stamp_gap_s),
        "min_spacing_m": float(min_spacing_m),
        "typestore": typestore.name,
        "jpeg_quality": JPEG_QUALITY,
        "version": CACHE_VERSION,
    }
    with _open_bag(bag, typestore) as reader:
        source = {"bag": str(bag.resolve()), "size": _bag_size(bag), "messages": reader.message_count}
        key = {"source": source, "options": options}
        cached = _load_cache(folder, key, name)
        if cached is not None:
            log.info("bag %s: reusing %d cached images in %s", bag, len(cached), folder)
            return cached
        image_conns, pose_conns = _connections(reader, bag, image_topic, pose_topic)
        selection = _select(bag, _read_poses(reader, pose_conns), _image_stamps(reader, image_conns), options)
        return _build_cache(reader, image_conns, selection, folder, key, name)


def read_image_folder(folder: Path, poses_csv: Path) -> PlaceSet:
    """Images listed in a CSV with their poses; tags are the folder name.

    The header picks the format: ``image,x,y,yaw`` (yaw in radians CCW from +x) or
    ``image,x,y,z,qx,qy,qz,qw`` (z ignored; yaw of the quaternion's +x axis, as for bag poses).
    When a file has both, ``yaw`` wins. Image paths are relative to ``folder``.
    """
    folder = require_dir(folder, "image folder")
    table = read_csv_table(poses_csv, ("image", "x", "y"), "poses CSV")
    if "yaw" in table.header:
        yaw = wrap_angle(table.floats("yaw"))
    elif all(c in table.header for c in QUATERNION_COLUMNS):
        q = np.stack([table.floats(c) for c in QUATERNION_COLUMNS], axis=1).reshape(-1, 4)
        yaw = quaternion_yaw(check_quaternions(q, table.where), "x")
    else:
        raise UserError(f"{table.path}: needs a yaw column or the columns {','.join(QUATERNION_COLUMNS)}")
    paths = tuple(folder / name for name in table.column("image"))
    for row, path in enumerate(paths):
        if not path.is_file():
            raise UserError(f"{table.where(row)}: image {path} not found")
    xy = np.stack([table.floats("x"), table.floats("y")], axis=1).reshape(-1, 2)
    return PlaceSet(paths, xy, yaw, (folder.name,) * len(paths))


def trajectory_dataset(
    database: PlaceSet,
    queries: PlaceSet,
    name: str,
    positive_m: float = 25.0,
    positive_deg: float = 40.0,
    radius_m: float = 50.0,
    fov_deg: float = 90.0,
    train_positive_m: float = 10.0,
) -> PlaceDataset:
    """A mapping run and a query run as one dataset; the defaults are the MSLS protocol's.

    They are parameters because a robot on a campus path or in a warehouse aisle sees a place change
    over far less than the 25 m of a street-level protocol.
    """
    return PlaceDataset(
        name=name,
        database=database,
        queries=queries,
        positive_m=positive_m,
        positive_deg=positive_deg,
        train_positive_m=train_positive_m,
        radius_m=radius_m,
        fov_deg=fov_deg,
        meta={"source": "trajectory"},
    )


@contextmanager
def _open_bag(bag: Path, typestore: Stores) -> Iterator[AnyReader]:
    """An open AnyReader; a path rosbags cannot read is a UserError naming it."""
    try:
        reader = AnyReader([bag], default_typestore=get_typestore(typestore))
        reader.open()
    except (AnyReaderError, OSError) as exc:
        raise UserError(f"bag {bag}: cannot be read ({' '.join(str(exc).split())})") from None
    try:
        yield reader
    finally:
        reader.close()


def _bag_size(bag: Path) -> int:
    """Bytes of the bag file, or of all files of a rosbag2 directory."""
    files = [bag] if bag.is_file() else [p for p in sorted(bag.rglob("*")) if p.is_file()]
    return sum(p.stat().st_size for p in files)


def _connections(reader: AnyReader, bag: Path, image_topic: str, pose_topic: str) -> tuple[list, list]:
    """The connections of both topics, refusing missing topics and unsupported message types."""
    topics = reader.topics
    missing = [t for t in (image_topic, pose_topic) if t not in topics or not topics[t].msgcount]
    if missing:
        have = ", ".join(f"{t} [{info.msgtype}]" for t, info in topics.items() if info.msgcount) or "none"
        raise UserError(f"bag {bag}: no messages on {' or '.join(missing)} (topics in the bag: {have})")
    for topic, accepted in ((image_topic, IMAGE_TYPES), (pose_topic, POSE_TYPES)):
        if topics[topic].msgtype not in accepted:
            raise UserError(
                f"bag {bag}: topic {topic} carries {topics[topic].msgtype}, expected {' or '.join(accepted)}"
            )
    return tuple([c for c in reader.connections if c.topic == t] for t in (image_topic, pose_topic))


def _read_poses(reader: AnyReader, connections: list) -> _Poses:
    """Every pose sample, sorted by stamp; samples repeating a stamp are dropped with a warning."""
    stamps, xy, quaternions = [], [], []
    for conn, _, raw in reader.messages(connections=connections):
        msg = reader.deserialize(raw, conn.msgtype)
        pose = msg.pose.pose if conn.msgtype == "nav_msgs/msg/Odometry" else msg.pose
        stamps.append(stamp_ns(msg.header))
        xy.append((pose.position.x, pose.position.y))
        o = pose.orientation
        quaternions.append((o.x, o.y, o.z, o.w))
    topic = connections[0].topic
    keep = _first_per_stamp(np.asarray(stamps, dtype=np.int64), f"pose topic {topic}")
    stamps_ns = np.asarray(stamps, dtype=np.int64)[keep]
    q = np.asarray(quaternions).reshape(-1, 4)[keep]
    q = check_quaternions(q, lambda i: f"pose topic {topic} at stamp {stamps_ns[i]} ns")
    return _Poses(stamps_ns, np.asarray(xy, dtype=np.float64).reshape(-1, 2)[keep], quaternion_yaw(q))


def _image_stamps(reader: AnyReader, connections: list) -> np.ndarray:
    """Header stamps of the image messages in message order (deserialising only; no decoding)."""
    stamps = [
        stamp_ns(reader.deserialize(raw, c.msgtype).header) for c, _, raw in reader.messages(connections)
    ]
    return np.asarray(stamps, dtype=np.int64)


def _first_per_stamp(stamps_ns: np.ndarray, what: str) -> np.ndarray:
    """Indices that sort ``stamps_ns``, keeping the first message of each stamp."""
    order = np.argsort(stamps_ns, kind="stable")
    unique = np.ones(len(order), dtype=bool)
    unique[1:] = np.diff(stamps_ns[order]) != 0
    duplicates = int(np.count_nonzero(~unique))
    if duplicates:
        log.warning("%s: dropped %d message(s) repeating the stamp of an earlier one", what, duplicates)
    return order[unique]


def _select(bag: Path, poses: _Poses, image_stamps: np.ndarray, options: dict) -> _Selection:
    """Pair images with their nearest pose in time, then thin them by distance travelled."""
    messages = _first_per_stamp(image_stamps, f"bag {bag} image topic {options['image_topic']}")
    stamps = image_stamps[messages]
    nearest, gap_ns = _nearest(poses.stamps_ns, stamps)
    paired = gap_ns <= round(options["max_stamp_gap_s"] * 1e9)
    if not paired.any():
        raise UserError(
            f"bag {bag}: no image on {options['image_topic']} has a pose on {options['pose_topic']} "
            f"within {options['max_stamp_gap_s']} s (closest: {gap_ns.min() / 1e9:.3f} s)"
        )
    messages, stamps, nearest = messages[paired], stamps[paired], nearest[paired]
    spaced = _spaced(poses.xy[nearest], options["min_spacing_m"])
    counts = {
        "images": len(image_stamps),
        "duplicate_stamps": len(image_stamps) - len(paired),
        "without_pose": int(np.count_nonzero(~paired)),
        "too_close": int(np.count_nonzero(~spaced)),
    }
    keep = nearest[spaced]
    return _Selection(messages[spaced], stamps[spaced], poses.xy[keep], poses.yaw[keep], counts)


def _nearest(sorted_ns: np.ndarray, query_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest value of ``sorted_ns`` (not empty) for each query, and the absolute gap (ns)."""
    right = np.clip(np.searchsorted(sorted_ns, query_ns), 0, len(sorted_ns) - 1)
    left = np.clip(right - 1, 0, len(sorted_ns) - 1)
    gap_left, gap_right = np.abs(query_ns - sorted_ns[left]), np.abs(sorted_ns[right] - query_ns)
    nearest = np.where(gap_left <= gap_right, left, right)
    return nearest, np.minimum(gap_left, gap_right)


def _spaced(xy: np.ndarray, min_spacing_m: float) -> np.ndarray:
    """Keep the first point and every point at least ``min_spacing_m`` from the last one kept."""
    keep = np.zeros(len(xy), dtype=bool)
    last = None
    for i, point in enumerate(xy):
        if last is None or np.hypot(*(point - last)) >= min_spacing_m:
            keep[i], last = True, point
    return keep


def _build_cache(
    reader: AnyReader,
    connections: list,
    selection: _Selection,
    folder: Path,
    key: dict,
    name: str,
) -> PlaceSet:
    """Decode and write the selected images, then the manifest; returns the places written.

    Images are written in message order (one pass, nothing held in memory) under their index in
    stamp order; images that fail to decode are skipped, and the files after them are renamed down
    so the names stay contiguous.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    slot = {int(m): k for k, m in enumerate(selection.messages)}
    written = np.zeros(len(slot), dtype=bool)
    for m, (conn, _, raw) in enumerate(reader.messages(connections=connections)):
        if m not in slot:
            continue
        try:
            rgb = message_to_rgb(reader.deserialize(raw, conn.msgtype))
        except ImageConversionError as exc:
            log.warning("bag %s: image %d of %s skipped: %s", key["source"]["bag"], m, conn.topic, exc)
            continue
        _write_jpeg(folder / _image_name(slot[m]), rgb)
        written[slot[m]] = True
    keep = np.flatnonzero(written)
    for new, old in enumerate(keep):
        if new != old:
            (folder / _image_name(old)).rename(folder / _image_name(new))
    counts = {**selection.counts, "undecodable": len(slot) - len(keep), "kept": len(keep)}
    manifest = {
        "key": key,
        "counts": counts,
        "stamps_ns": selection.stamps_ns[keep].tolist(),
        "xy": selection.xy[keep].tolist(),
        "yaw": selection.yaw[keep].tolist(),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest) + "\n")
    log.info("bag %s: %s", key["source"]["bag"], ", ".join(f"{k} {v}" for k, v in counts.items()))
    return _place_set(folder, manifest, name)


def _load_cache(folder: Path, key: dict, name: str) -> PlaceSet | None:
    """The cached places when the manifest describes this bag and these options and every image exists."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return None
    try:
        places = _place_set(folder, manifest, name)
    except (KeyError, TypeError, ValueError):
        return None
    return places if all(p.is_file() for p in places.paths) else None


def _place_set(folder: Path, manifest: dict, name: str) -> PlaceSet:
    n = len(manifest["stamps_ns"])
    return PlaceSet(
        tuple(folder / _image_name(i) for i in range(n)),
        np.asarray(manifest["xy"], dtype=np.float64).reshape(n, 2),
        np.asarray(manifest["yaw"], dtype=np.float64).reshape(n),
        (name,) * n,
    )


def _image_name(index: int) -> str:
    return f"{index:06d}.jpg"


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode {path}")
    path.write_bytes(jpeg.tobytes())
