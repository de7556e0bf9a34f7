"""Offline mapping from rosbag2: rosbag_source (topics, pairing, order checks, extrinsic),
MapBuilder (keyframes only, undecodable frames) and the ``vpr-build-map`` CLI end to end.

Most bags are written here with rosbags (mcap and sqlite3) so that every keyframe is hand-computed:
a route of 10 frames 100 ms apart whose keyframes at 1 m / 15 deg are frames 0, 2, 5, 7 and 9,
plus an eleventh image that has no pose within tolerance.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from vpr_ros.backends import create_backend
from vpr_ros.bundle import load_bundle
from vpr_ros.errors import InputError
from vpr_ros.io.image_codec import (
    rgb_to_compressed_fields,
    rgb_to_image_fields,
    to_compressed_msg,
    to_image_msg,
)
from vpr_ros.io.rosbag_source import bag_info, bag_topics, choose_topics, iter_frames
from vpr_ros.mapping.build_map import main
from vpr_ros.mapping.keyframes import KeyframeSelector
from vpr_ros.mapping.map_builder import MapBuilder
from vpr_ros.mapping.map_files import MapError
from vpr_ros.mapping.place_map import PlaceMap

TS = get_typestore(Stores.ROS2_KILTED)
T = TS.types
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
ODOM = "nav_msgs/msg/Odometry"
T0 = 1_700_000_000_000_000_000
MS = 1_000_000
POSE_LAG_NS = 5 * MS  # odometry stamped 5 ms after each image: well inside the 50 ms tolerance
# (x, y, yaw in degrees) per frame, and the keyframes at 1 m / 15 deg worked out by hand:
# 0 first; 1 is 0.5 m; 2 is 1.0 m; 3, 4 are 0.6, 0.9 m from 2; 5 is 1.1 m; 6 turns 10 deg;
# 7 turns 20 deg; 8 is 0.5 m from 7; 9 is 1.2 m.
ROUTE = [(0.0, 0, 0), (0.5, 0, 0), (1.0, 0, 0), (1.6, 0, 0), (1.9, 0, 0), (2.1, 0, 0), (2.1, 0, 10)]
ROUTE += [(2.1, 0, 20), (2.1, 0.5, 20), (2.1, 1.2, 20)]
KEYFRAMES = [0, 2, 5, 7, 9]


def image_stamp(i: int) -> int:
    return T0 + i * 100 * MS


def header(stamp_ns: int, frame_id: str) -> object:
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    return T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id
    )


def quaternion(yaw_deg: float) -> tuple[float, float, float, float]:
    half = math.radians(yaw_deg) / 2
    return (0.0, 0.0, math.sin(half), math.cos(half))


def odometry(stamp_ns: int, x: float, y: float, yaw_deg: float, frame_id: str = "odom") -> object:
    qx, qy, qz, qw = quaternion(yaw_deg)
    pose = T["geometry_msgs/msg/Pose"](
        position=T["geometry_msgs/msg/Point"](x=float(x), y=float(y), z=0.0),
        orientation=T["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
    )
    zero = T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
    return T[ODOM](
        header=header(stamp_ns, frame_id),
        child_frame_id="base_link",
        pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
        twist=T["geometry_msgs/msg/TwistWithCovariance"](
            twist=T["geometry_msgs/msg/Twist"](linear=zero, angular=zero), covariance=np.zeros(36)
        ),
    )


def picture(i: int) -> np.ndarray:
    """A distinct 48x64 frame per index (noise: every frame its own place)."""
    return np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def image(stamp_ns: int, rgb: np.ndarray, msgtype: str = IMAGE) -> object:
    if msgtype == COMPRESSED:
        return to_compressed_msg(
            rgb_to_compressed_fields(rgb, "png"), T[COMPRESSED], header(stamp_ns, "camera")
        )
    return to_image_msg(rgb_to_image_fields(rgb), T[IMAGE], header(stamp_ns, "camera"))


def write_bag(path: Path, messages: list[tuple[str, str, int, object]], storage: str = "mcap") -> Path:
    """Messages (topic, type, bag timestamp, message) written in the given order."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer:
        connections = {}
        for topic, msgtype, stamp_ns, msg in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=TS)
            writer.write(connections[topic], stamp_ns, TS.serialize_cdr(msg, msgtype))
    return path


def route_messages(msgtype: str = IMAGE, broken: int | None = None) -> list[tuple[str, str, int, object]]:
    """The ROUTE with poses stamped 5 ms after their images, received (bag timestamps, 10 and 11 ms
    after the image stamp) pose-first on even frames and image-first on odd ones, plus image 10
    whose nearest pose (frame 9) is 100 ms away. ``broken``: that frame's image data is garbage
    (an undecodable CompressedImage)."""
    messages = []
    for i, (x, y, yaw) in enumerate(ROUTE):
        stamp = image_stamp(i)
        img = image(stamp, picture(i), msgtype)
        if i == broken:
            img.data = np.frombuffer(b"not an image", np.uint8)
        pose = odometry(stamp + POSE_LAG_NS, x, y, yaw)
        first, second = (("/odom", ODOM, pose), ("/camera/image_raw", msgtype, img))[
            :: 1 if i % 2 == 0 else -1
        ]
        received = stamp + 10 * MS
        messages += [(*first[:2], received, first[2]), (*second[:2], received + MS, second[2])]
    last = image_stamp(len(ROUTE))
    messages.append(("/camera/image_raw", msgtype, last + 10 * MS, image(last, picture(len(ROUTE)), msgtype)))
    return messages


@pytest.fixture(scope="module")
def route_bag(tmp_path_factory) -> Path:
    return write_bag(tmp_path_factory.mktemp("bags") / "route", route_messages())


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([*map(str, args), "--backend", "onnxruntime", "--quiet"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_refused(capsys, out: Path, *args: str) -> str:
    """Exit 2, one 'error: ...' line on stderr, nothing at ``out``; returns the line."""
    rc, stdout, stderr = run_cli(capsys, *args, "--out", out)
    lines = stderr.strip().splitlines()
    assert rc == 2 and stdout == "" and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert not out.exists()
    return lines[0]


# ---------------------------------------------------------------------- rosbag_source


def test_frames_are_paired_in_bag_order_with_header_stamps(route_bag):
    info = bag_info(route_bag)
    assert (info.image_topic, info.image_type, info.pose_topic, info.pose_type) == (
        "/camera/image_raw",
        IMAGE,
        "/odom",
        ODOM,
    )
    assert info.image_count == 11 and info.pose_frame_id == "odom"
    stream = iter_frames(route_bag, info.image_topic, info.pose_topic, 0.05)
    frames = list(stream)
    assert [f.index for f in frames] == list(range(10))
    for f, (x, y, yaw) in zip(frames, ROUTE):
        assert f.stamp_ns == image_stamp(f.index) and f.pose_stamp_ns == f.stamp_ns + POSE_LAG_NS
        np.testing.assert_allclose(f.position, [x, y, 0])
        np.testing.assert_allclose(f.orientation, quaternion(yaw), atol=1e-12)
        assert f.source == f"route:/camera/image_raw#{f.index}"
    np.testing.assert_array_equal(frames[3].rgb(), picture(3))
    assert (stream.images_read, stream.pairer.paired, stream.pairer.dropped_no_pose) == (11, 10, 1)


def test_choose_topics_explains_absence_and_ambiguity():
    topics = {
        "/a": IMAGE,
        "/b/compressed": COMPRESSED,
        "/odom": ODOM,
        "/pose": "geometry_msgs/msg/PoseStamped",
    }
    assert choose_topics(topics, "/a", "/pose") == ("/a", IMAGE, "/pose", "geometry_msgs/msg/PoseStamped")
    with pytest.raises(
        InputError, match=r"2 image topics \(/a, /b/compressed\); choose one with --image-topic"
    ):
        choose_topics(topics)
    with pytest.raises(InputError, match=r"2 pose topics .*--pose-topic"):
        choose_topics(topics, image_topic="/a")
    with pytest.raises(InputError, match=r"image topic /odom is nav_msgs/msg/Odometry; expected one of"):
        choose_topics(topics, "/odom", "/pose")
    with pytest.raises(InputError, match=r"no image topic .*; the bag has: /odom \(nav_msgs/msg/Odometry\)$"):
        choose_topics({"/odom": ODOM})


def test_missing_and_non_bag_paths(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        bag_topics(tmp_path / "nope")
    with pytest.raises(InputError, match="no metadata.yaml; .*ros2 bag reindex"):
        bag_topics(tmp_path)
    (tmp_path / "file.mcap").write_bytes(b"")
    with pytest.raises(InputError, match="not a rosbag2 directory"):
        bag_topics(tmp_path / "file.mcap")


# ---------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def backend(tiny_bundle):
    return create_backend(load_bundle(tiny_bundle), "onnxruntime")


def test_map_builder_decodes_and_embeds_keyframes_only(backend):
    bundle = backend.bundle
    place_map = PlaceMap(bundle.descriptor_dim, bundle.content_hash)
    builder = MapBuilder(backend, place_map, KeyframeSelector(1.0, 15.0), batch_size=2)
    decoded = []

    def lazy(i: int):
        return lambda: decoded.append(i) or picture(i)

    became = [
        builder.offer(image_stamp(i), lazy(i), (x, y, 0), quaternion(yaw), f"f{i}")
        for i, (x, y, yaw) in enumerate(ROUTE)
    ]
    assert [i for i, kf in enumerate(became) if kf] == KEYFRAMES == decoded
    assert len(place_map) == 4  # two batches of 2; the fifth keyframe waits for flush
    assert builder.flush().tolist() == [4] and builder.flush().tolist() == []
    summary = builder.summary()
    assert (summary["frames_seen"], summary["keyframes"], summary["pending"], summary["undecodable"]) == (
        10,
        5,
        0,
        0,
    )
    assert summary["travelled_m"] == pytest.approx(3.3) and summary["frames_per_s"] > 0
    assert place_map.sources == [f"f{i}" for i in KEYFRAMES]


def test_map_builder_refuses_a_map_of_another_model(backend):
    other = PlaceMap(backend.bundle.descriptor_dim, "sha256:another-model")
    with pytest.raises(MapError, match="the place map is for model sha256:another-model"):
        MapBuilder(backend, other, KeyframeSelector(1.0, 15.0))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_build_map_keeps_the_hand_computed_keyframes(tmp_path, capsys, tiny_bundle, backend, storage):
    bag = write_bag(tmp_path / "bag", route_messages(), storage)
    out = tmp_path / "maps" / "route"
    rc, stdout, stderr = run_cli(capsys, "--bag", bag, "--model", tiny_bundle, "--out", out)
    assert rc == 0, stderr
    assert stdout.startswith("map: 5 keyframes over ") and "from 10 of 11 frames, 1 without a pose" in stdout
    assert stdout.rstrip().endswith(f"-> {out}")
    place_map = PlaceMap.load(out, expected_model_hash=backend.bundle.content_hash)
    assert place_map.frame_id == "odom" and len(place_map) == len(KEYFRAMES)
    np.testing.assert_array_equal(place_map.stamps_ns, [image_stamp(i) for i in KEYFRAMES])
    np.testing.assert_allclose(place_map.positions, [(ROUTE[i][0], ROUTE[i][1], 0) for i in KEYFRAMES])
    np.testing.assert_allclose(
        place_map.orientations, [quaternion(ROUTE[i][2]) for i in KEYFRAMES], atol=1e-12
    )
    assert place_map.sources == [f"bag:/camera/image_raw#{i}" for i in KEYFRAMES]
    assert place_map.travelled_m == pytest.approx(1.0 + 1.1 + 0.0 + 1.2)
    sims, ids = place_map.search(backend.embed([picture(5)]), 1)
    assert ids[0, 0] == KEYFRAMES.index(5) and sims[0, 0] == pytest.approx(1.0, abs=1e-4)


def test_undecodable_keyframe_is_replaced_by_the_next_frame(tmp_path, capsys, tiny_bundle, caplog):
    bag = write_bag(tmp_path / "bag", route_messages(COMPRESSED, broken=2))
    out = tmp_path / "map"
    rc, stdout, stderr = run_cli(
        capsys, "--bag", bag, "--model", tiny_bundle, "--out", out, "--frame-id", "world"
    )
    assert rc == 0, stderr
    assert "1 undecodable" in stdout
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "bag:/camera/image_raw#2: keyframe image skipped: "
        "sensor_msgs/CompressedImage: could not decode 12 bytes as png"
    ]
    place_map = PlaceMap.load(out)
    assert place_map.frame_id == "world"
    assert place_map.sources == [f"bag:/camera/image_raw#{i}" for i in (0, 3, 7, 9)]  # 3 stands in for 2


def test_build_map_on_a_synthetic_world_bag(tmp_path, capsys, small_world, tiny_bundle):
    """Keyframes of a generated traverse equal a greedy selection over its odometry done here."""
    bag = sorted((small_world / "bags").iterdir())[0]
    with AnyReader([bag], default_typestore=TS) as reader:
        odom = [c for c in reader.connections if c.topic == "/odom"]
        poses = [reader.deserialize(raw, ODOM).pose.pose for _, _, raw in reader.messages(connections=odom)]
    xy = np.array([(p.position.x, p.position.y) for p in poses])
    yaw = np.degrees([2 * math.atan2(p.orientation.z, p.orientation.w) for p in poses])
    expected, last = [], None
    for i in range(len(poses)):
        turn = None if last is None else abs((yaw[i] - yaw[last] + 180) % 360 - 180)
        if last is None or np.linalg.norm(xy[i] - xy[last]) >= 1.0 or turn >= 15:
            expected.append(i)
            last = i
    assert 1 < len(expected) < len(poses)  # the selection is not trivial on this route
    out = tmp_path / "map"
    rc, stdout, stderr = run_cli(capsys, "--bag", bag, "--model", tiny_bundle, "--out", out)
    assert rc == 0, stderr
    place_map = PlaceMap.load(out)
    assert place_map.frame_id == "map"
    assert place_map.sources == [f"{bag.name}:/camera/image_raw#{i}" for i in expected]
    np.testing.assert_allclose(place_map.positions[:, :2], xy[expected])


def test_overwrite_replaces_an_existing_map(tmp_path, capsys, tiny_bundle, route_bag):
    out = tmp_path / "map"
    again = ["--overwrite", "--min-distance", "0", "--min-rotation", "0", "--extrinsic", "0 0 0.5 0 0 0 1"]
    for extra in ([], again):
        rc, _, stderr = run_cli(capsys, "--bag", route_bag, "--model", tiny_bundle, "--out", out, *extra)
        assert rc == 0, stderr
    place_map = PlaceMap.load(out)
    assert len(place_map) == 10  # every paired frame with both thresholds at 0
    np.testing.assert_array_equal(place_map.positions[:, 2], 0.0)  # keyframe poses are base_link's ...
    assert place_map.sessions[0].camera_extrinsic == (0, 0, 0.5, 0, 0, 0, 1)  # ... the camera is stored
    np.testing.assert_array_equal(place_map.camera_poses()[0][:, 2], 0.5)  # 0.5 m above base_link


def test_append_adds_a_session_of_the_same_model_and_frame(tmp_path, capsys, tiny_bundle, route_bag):
    out = tmp_path / "map"
    rc, _, stderr = run_cli(capsys, "--bag", route_bag, "--model", tiny_bundle, "--out", out)
    assert rc == 0, stderr
    camera = ["--extrinsic", "0.2 0 1.1 -0.5 0.5 -0.5 0.5", "--session-name", "rear"]
    rc, stdout, stderr = run_cli(
        capsys, "--bag", route_bag, "--model", tiny_bundle, "--out", out, "--append", *camera
    )
    assert rc == 0, stderr
    assert (
        stdout.startswith("session 'rear': 5 keyframes; map: 10 keyframes over ")
        and "in 2 sessions" in stdout
    )
    place_map = PlaceMap.load(out)
    assert [s.name for s in place_map.sessions] == ["route", "rear"]
    assert place_map.sessions[1].camera_extrinsic == (0.2, 0, 1.1, -0.5, 0.5, -0.5, 0.5)
    np.testing.assert_array_equal(place_map.session_ids, [0] * 5 + [1] * 5)
    np.testing.assert_array_equal(place_map.positions[:5], place_map.positions[5:])


def test_append_refuses_another_frame_and_needs_a_map(tmp_path, capsys, tiny_bundle, route_bag):
    out = tmp_path / "map"
    line = assert_refused(capsys, out, "--bag", route_bag, "--model", tiny_bundle, "--append")
    assert line.startswith(f"error: place map {out}: not a directory")
    rc, _, stderr = run_cli(
        capsys, "--bag", route_bag, "--model", tiny_bundle, "--out", out, "--frame-id", "map"
    )
    assert rc == 0, stderr
    before = (out / "map.json").read_bytes()
    rc, stdout, stderr = run_cli(capsys, "--bag", route_bag, "--model", tiny_bundle, "--out", out, "--append")
    expected = (
        f"error: --append: the map at {out} is in frame 'map' but the poses of {route_bag} are in 'odom'; "
        "sessions of one map share its frame (record in 'map', or pass --frame-id if the frames are the "
        "same)\n"
    )
    assert rc == 2 and stdout == "" and stderr == expected
    assert (out / "map.json").read_bytes() == before


# ---------------------------------------------------------------------- CLI errors


def test_existing_out_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "map"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, _, stderr = run_cli(
        capsys, "--bag", tmp_path / "no-bag", "--model", tmp_path / "no-model", "--out", out
    )
    assert (
        rc == 2
        and stderr
        == f"error: --out {out}: exists and is not empty; pass --overwrite to replace the place map there\n"
    )
    rc, _, stderr = run_cli(capsys, "--bag", "x", "--model", "y", "--out", out, "--overwrite")
    assert rc == 2 and "is not a place map; refusing to replace it" in stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_missing_bundle(tmp_path, capsys, route_bag):
    line = assert_refused(capsys, tmp_path / "map", "--bag", route_bag, "--model", tmp_path / "nope")
    assert "model bundle" in line and "not a directory" in line


def test_missing_bag(tmp_path, capsys, tiny_bundle):
    line = assert_refused(capsys, tmp_path / "map", "--bag", tmp_path / "nope", "--model", tiny_bundle)
    assert line == f"error: bag {tmp_path / 'nope'}: does not exist"


def test_bag_without_image_topic_lists_its_topics(tmp_path, capsys, tiny_bundle):
    bag = write_bag(tmp_path / "bag", [("/odom", ODOM, T0, odometry(T0, 0, 0, 0))])
    line = assert_refused(capsys, tmp_path / "map", "--bag", bag, "--model", tiny_bundle)
    assert line.endswith(
        "no image topic (sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage); "
        "the bag has: /odom (nav_msgs/msg/Odometry)"
    )


def test_two_image_topics_need_image_topic(tmp_path, capsys, tiny_bundle):
    messages = [
        (topic, IMAGE, image_stamp(i), image(image_stamp(i), picture(i)))
        for i, topic in enumerate(["/left", "/right"])
    ]
    bag = write_bag(tmp_path / "bag", [*messages, ("/odom", ODOM, T0, odometry(T0, 0, 0, 0))])
    line = assert_refused(capsys, tmp_path / "map", "--bag", bag, "--model", tiny_bundle)
    assert "2 image topics (/left, /right); choose one with --image-topic" in line
    rc, stdout, stderr = run_cli(
        capsys, "--bag", bag, "--model", tiny_bundle, "--out", tmp_path / "map", "--image-topic", "/left"
    )
    assert rc == 0 and stdout.startswith("map: 1 keyframes"), stderr


@pytest.mark.parametrize(("second", "how"), [(T0 + 100 * MS, "repeats"), (T0 + 50 * MS, "goes back from")])
def test_image_stamps_must_increase(tmp_path, capsys, tiny_bundle, second, how):
    messages = [("/odom", ODOM, T0, odometry(T0, 0, 0, 0))]
    for i, stamp in enumerate([T0, T0 + 100 * MS, second]):
        messages.append(("/camera/image_raw", IMAGE, T0 + i * 100 * MS, image(stamp, picture(i))))
    bag = write_bag(tmp_path / "bag", messages)
    line = assert_refused(capsys, tmp_path / "map", "--bag", bag, "--model", tiny_bundle)
    assert (
        "header stamps on /camera/image_raw are not increasing: "
        f"message 2 has stamp {second} ns, which {how} {T0 + 100 * MS} ns of message 1" in line
    )
    assert "re-record the bag, or reindex it" in line


def test_bad_extrinsic(tmp_path, capsys, tiny_bundle, route_bag):
    line = assert_refused(
        capsys, tmp_path / "map", "--bag", route_bag, "--model", tiny_bundle, "--extrinsic", "0 0 1 0 0 0"
    )
    assert line == (
        "error: --extrinsic: camera extrinsic must be 7 finite numbers 'x y z qx qy qz qw', got '0 0 1 0 0 0'"
    )


def test_no_pose_in_tolerance_writes_nothing(tmp_path, capsys, tiny_bundle):
    bag = write_bag(
        tmp_path / "bag",
        [("/odom", ODOM, T0, odometry(T0, 0, 0, 0)), ("/img", IMAGE, T0, image(T0 + 500 * MS, picture(0)))],
    )
    line = assert_refused(capsys, tmp_path / "map", "--bag", bag, "--model", tiny_bundle)
    assert "no keyframes: none of the 1 images on /img had a pose on /odom within 0.05 s" in line


def _nan_poses(messages: list, frames: int | None = None) -> list:
    """``messages`` with the position of the first ``frames`` odometry messages (all: None) NaN,
    as a localization filter publishes before it initialises."""
    broken = 0
    for topic, _, _, msg in messages:
        if topic == "/odom" and (frames is None or broken < frames):
            msg.pose.pose.position.x = float("nan")
            broken += 1
    return messages


def test_bad_poses_are_counted_and_said_once(tmp_path, capsys, caplog, tiny_bundle) -> None:
    bag = write_bag(tmp_path / "bag", _nan_poses(route_messages(), frames=3))
    with caplog.at_level("WARNING"):
        rc, out, err = run_cli(capsys, "--bag", bag, "--model", tiny_bundle, "--out", tmp_path / "map")
    assert rc == 0, err
    assert "3 bad poses" in out
    assert sum("skipped" in r.getMessage() for r in caplog.records) == 1, [
        r.getMessage() for r in caplog.records
    ]


def test_a_bag_whose_every_pose_is_invalid_is_not_blamed_on_the_sync_tolerance(tmp_path, capsys, tiny_bundle):
    bag = write_bag(tmp_path / "bag", _nan_poses(route_messages()))
    rc, _, err = run_cli(capsys, "--bag", bag, "--model", tiny_bundle, "--out", tmp_path / "map")
    assert rc == 2
    assert f"every one of the {len(ROUTE)} poses on /odom is invalid" in err and "within" not in err, err
    assert not (tmp_path / "map").exists()


# ---------------------------------------------------------------------- poses from TF

TF_MSG = "tf2_msgs/msg/TFMessage"
TF_PERIOD_NS = 40 * MS  # odometry on /tf at 25 Hz, the camera at 10 Hz
TF_STAMPS = [T0 + k * TF_PERIOD_NS for k in range(-1, 15)]  # -40 ms .. 560 ms
TF_IMAGES = [T0 + i * 100 * MS for i in range(-1, 7)]  # -100 ms .. 600 ms: the first and last have no TF


def tf_message(stamp_ns: int, *edges: tuple[str, str, float, float, float]) -> object:
    """A TFMessage of ``(parent, child, x, y, yaw in degrees)`` transforms stamped ``stamp_ns``."""
    transforms = []
    for parent, child, x, y, yaw in edges:
        qx, qy, qz, qw = quaternion(yaw)
        transforms.append(
            T["geometry_msgs/msg/TransformStamped"](
                header=header(stamp_ns, parent),
                child_frame_id=child,
                transform=T["geometry_msgs/msg/Transform"](
                    translation=T["geometry_msgs/msg/Vector3"](x=float(x), y=float(y), z=0.0),
                    rotation=T["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
                ),
            )
        )
    return T[TF_MSG](transforms=transforms)


def odom_base(stamp_ns: int) -> tuple[str, str, float, float, float]:
    """odom -> base_link driving (1, 0.5) m/s and turning 30 deg/s from T0: linear in time, so the
    interpolation between two samples is exact."""
    s = (stamp_ns - T0) / 1e9
    return ("odom", "base_link", s, 0.5 * s, 30 * s)


def base_in_map(stamp_ns: int) -> tuple[tuple[float, float, float], tuple[float, ...]]:
    """By hand: map -> odom is (2, -1) turned 90 deg, so odom's (x, y) is map's (2 - y, -1 + x)."""
    _, _, x, y, yaw = odom_base(stamp_ns)
    return (2 - y, -1 + x, 0.0), quaternion(90 + yaw)


def tf_route_messages(tf_lag_ns: int, image_lag_ns: int, static_at_ns: int) -> list:
    """Images at TF_IMAGES and /tf at TF_STAMPS (with a wheel frame beside base_link, and one
    NaN transform), received ``*_lag_ns`` after their stamps; /tf_static (map -> odom, base_link
    -> camera) received at ``static_at_ns``. Sorted by receive time, as a recorder writes them."""
    messages = [
        ("/camera/image_raw", IMAGE, stamp + image_lag_ns, image(stamp, picture(i)))
        for i, stamp in enumerate(TF_IMAGES)
    ]
    for k, stamp in enumerate(TF_STAMPS):
        edges = [odom_base(stamp), ("odom", "wheel", 0.1, 0.2, 0)]
        if k == 3:
            edges.append(("base_link", "bumper", math.nan, 0, 0))
        messages.append(("/tf", TF_MSG, stamp + tf_lag_ns, tf_message(stamp, *edges)))
    static = tf_message(T0, ("map", "odom", 2, -1, 90), ("base_link", "camera", 0.5, 0, -90))
    messages.append(("/tf_static", TF_MSG, static_at_ns, static))
    return sorted(messages, key=lambda m: m[2])


def test_poses_from_tf_are_interpolated_at_the_image_stamps(tmp_path):
    live = tf_route_messages(2 * MS, 20 * MS, T0 + 150 * MS)  # /tf_static after the first 3 images
    late = tf_route_messages(250 * MS, 1 * MS, T0 + 10_000 * MS)  # /tf lags, /tf_static at the end
    assert [m[0] for m in live].index("/tf_static") > 3 and late[-1][0] == "/tf_static"
    results = []
    for name, messages, storage in [("live", live, "mcap"), ("late", late, "sqlite3")]:
        bag = write_bag(tmp_path / name, messages, storage)
        info = bag_info(bag, pose_topic="/tf", map_frame="map")
        assert (info.pose_type, info.pose_frame_id, info.image_count) == (TF_MSG, "map", 8)
        stream = iter_frames(bag, info.image_topic, info.pose_topic, 0.05, map_frame="map")
        frames = list(stream)
        assert [f.index for f in frames] == [1, 2, 3, 4, 5, 6]  # -100 ms and 600 ms are outside /tf
        for f in frames:
            position, orientation = base_in_map(f.stamp_ns)
            assert f.stamp_ns == TF_IMAGES[f.index] and f.pose_stamp_ns == f.stamp_ns
            np.testing.assert_allclose(f.position, position, atol=1e-12)
            np.testing.assert_allclose(f.orientation, orientation, atol=1e-12)
        pairer = stream.pairer
        assert (stream.images_read, pairer.paired, pairer.dropped_no_pose, pairer.pending) == (8, 6, 2, 0)
        assert (stream.poses_read, stream.bad_poses, pairer.dropped_overflow) == (len(TF_STAMPS) + 1, 1, 0)
        results.append([(f.index, f.stamp_ns, f.position.tolist(), f.orientation.tolist()) for f in frames])
    assert results[0] == results[1]
    # the camera mount from /tf_static: 0.5 m ahead of base_link, turned -90 deg
    [_, _, camera, *_] = iter_frames(bag, info.image_topic, "/tf", 0.05, map_frame="map", base_frame="camera")
    (x, y, _), yaw = base_in_map(camera.stamp_ns)[0], 90 + odom_base(camera.stamp_ns)[4]
    ahead = (0.5 * math.cos(math.radians(yaw)), 0.5 * math.sin(math.radians(yaw)))
    np.testing.assert_allclose(camera.position, [x + ahead[0], y + ahead[1], 0], atol=1e-12)
    np.testing.assert_allclose(camera.orientation, quaternion(yaw - 90), atol=1e-12)


def test_poses_from_tf_explain_what_is_missing(tmp_path):
    bag = write_bag(tmp_path / "bag", tf_route_messages(2 * MS, 20 * MS, T0))
    with pytest.raises(InputError) as exc:
        list(iter_frames(bag, "/camera/image_raw", "/tf", 0.05, map_frame="map", base_frame="base_footprint"))
    assert str(exc.value) == (
        f"bag {bag}: no transform from 'map' to 'base_footprint' on /tf: no frame 'base_footprint'; "
        "the tree has frames base_link, camera, map, odom, wheel"
    )
    with pytest.raises(InputError, match=r"^poses on /tf need a map frame: the frame to look the robot"):
        bag_info(bag, pose_topic="/tf")
    with pytest.raises(InputError, match=r"^poses on /tf need a map frame"):
        iter_frames(bag, "/camera/image_raw", "/tf", 0.05)
    topics = {"/camera/image_raw": IMAGE, "/tf": TF_MSG}
    assert choose_topics(topics, pose_topic="/tf") == ("/camera/image_raw", IMAGE, "/tf", TF_MSG)
    with pytest.raises(InputError, match=r"^no pose topic .*; for poses on TF pass --pose-topic /tf$"):
        choose_topics(topics)
    # the frames exist, but every image is older than the first transform
    early = write_bag(
        tmp_path / "early",
        [
            ("/camera/image_raw", IMAGE, T0, image(T0 - 500 * MS, picture(0))),
            ("/tf", TF_MSG, T0, tf_message(T0, ("map", "base_link", 0, 0, 0))),
        ],
    )
    with pytest.raises(InputError) as exc:
        list(iter_frames(early, "/camera/image_raw", "/tf", 0.05, map_frame="/map"))
    assert str(exc.value) == (
        f"bag {early}: no transform from 'map' to 'base_link' on /tf: none at its 1 image stamps "
        f"(transform 'map' -> 'base_link' at {T0 - 500 * MS} ns would require extrapolation into the past: "
        f"it is buffered from {T0} to {T0} ns (looking up 'base_link' in 'map')); "
        "the tree has frames base_link, map"
    )
