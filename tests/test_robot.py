"""The localizer on a robot, over real DDS: REP 105 base poses from mounted cameras, map -> odom on
TF, /initialpose and ~/relocalize for Nav2, several cameras; and maps of several sessions.

The synthetic town's bags give the pose the images were rendered from: a camera looking along the
pose's x axis. Here that camera is mounted on a robot whose base is elsewhere: the base pose is
``camera o extrinsic^-1``, with the extrinsic in ROS's optical convention (z forward), offset by
metres and turned, so that publishing the camera's pose, the mapping robot's base or a map-frame
pose without the odometry correction would all be caught (they are metres and tens of degrees
off).
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import TOWN_THRESHOLD, requires_rclpy
from ros_harness import (
    RosHarness,
    frames,
    header,
    image_msg,
    localizer_args,
    node_args,
    odometry_msg,
    output_of,
    send_until_answered,
    stamp_of,
)

from vpr_ros.geometry import compose, inverse, quat_multiply, rotation_angle_deg

pytestmark = requires_rclpy

OPTICAL = np.array([-0.5, 0.5, -0.5, 0.5])  # base-aligned axes -> optical axes (z forward, x right)


def yaw_quaternion(deg: float) -> np.ndarray:
    return np.array([0.0, 0.0, math.sin(math.radians(deg) / 2), math.cos(math.radians(deg) / 2)])


def mount(x: float, y: float, z: float, yaw_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """A camera ``x y z`` from the base, looking ``yaw_deg`` left of the base's x axis."""
    return np.array([x, y, z]), quat_multiply(yaw_quaternion(yaw_deg), OPTICAL)


MAP_CAMERA = mount(2.5, -1.0, 1.1, 90.0)  # the mapping robot looks left, 2.5 m ahead of its base
QUERY_CAMERA = mount(-3.0, 1.5, 0.4, -30.0)  # the query robot: another mount, another base
ODOM_IN_MAP = (np.array([10.0, -5.0, 0.0]), yaw_quaternion(30.0))  # where the odometry frame started


def as_text(extrinsic: tuple[np.ndarray, np.ndarray]) -> str:
    return " ".join(repr(float(v)) for v in np.concatenate(extrinsic))


def base_of(frame, extrinsic) -> tuple[np.ndarray, np.ndarray]:
    """The robot base whose camera (``extrinsic``) took ``frame``."""
    camera = compose(frame.position, frame.orientation, np.zeros(3), OPTICAL)
    return compose(*camera, *inverse(*extrinsic))


def rewrite_odometry(src: Path, dst: Path, extrinsic) -> Path:
    """``src`` with each odometry pose (the camera's) replaced by the base pose of a robot that
    carries that camera at ``extrinsic``: the bag such a robot would have recorded."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    with (
        AnyReader([src], default_typestore=store) as reader,
        Writer(dst, version=Writer.VERSION_LATEST) as writer,
    ):
        out = {
            c.topic: writer.add_connection(c.topic, c.msgtype, typestore=store) for c in reader.connections
        }
        for connection, timestamp, raw in reader.messages():
            if connection.msgtype == "nav_msgs/msg/Odometry":
                msg = reader.deserialize(raw, connection.msgtype)
                pose = msg.pose.pose
                camera = compose(
                    np.array([pose.position.x, pose.position.y, pose.position.z]),
                    np.array(
                        [pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w]
                    ),
                    np.zeros(3),
                    OPTICAL,
                )
                position, orientation = compose(*camera, *inverse(*extrinsic))
                pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
                o = pose.orientation
                o.x, o.y, o.z, o.w = (float(v) for v in orientation)
                raw = store.serialize_cdr(msg, connection.msgtype)
            writer.write(out[connection.topic], timestamp, raw)
    return dst


@pytest.fixture(scope="module")
def mounted_map(tmp_path_factory, town, bundle) -> Path:
    """The day route mapped by the robot with MAP_CAMERA."""
    from vpr_ros.mapping.build_map import main as build_map

    root = tmp_path_factory.mktemp("mounted")
    bag = rewrite_odometry(town / "t00_day", root / "day_mounted", MAP_CAMERA)
    out = root / "map"
    argv = ["--bag", str(bag), "--model", str(bundle), "--out", str(out), "--min-distance", "2.0"]
    assert build_map([*argv, "--extrinsic", as_text(MAP_CAMERA), "--backend", "onnxruntime", "--quiet"]) == 0
    return out


def drive(ros, proc, sequence, odometry_of, matches, pub_image, pub_odom) -> list[float]:
    """Each frame's odometry, then its image, the next one once it was answered; the times
    (time.monotonic) the frames were sent."""
    sent = []
    for frame in sequence:
        pub_odom.publish(odometry_of(frame))
        ros.spin_until(lambda: False, 0.03)  # odometry first, as a 50 Hz odometry would be
        sent.append(time.monotonic())
        send_until_answered(ros, pub_image, image_msg(frame.rgb(), frame.stamp_ns), matches, proc)
    return sent


def angle_between(a: np.ndarray, b: np.ndarray) -> float:
    return float(rotation_angle_deg(a, b))


def test_a_mounted_camera_gives_the_base_pose_map_to_odom_and_one_confident_initial_pose(
    ros_process, town, bundle, mounted_map
) -> None:
    """Queried by another robot (QUERY_CAMERA) at dusk, with the sequence filter and odometry in its
    own odom frame: ~/pose is the query robot's base, map -> odom composed with the odometry is
    too, and /initialpose is sent once, only after the filter's answers were confident and
    consistent for relocalization.consistent_frames frames."""
    pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs is not built (scripts/build_tf2_msgs.sh)")
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image, PointCloud2
    from tf2_msgs.msg import TFMessage

    from vpr_ros.io.match_table import read_table

    proc = ros_process(
        localizer_args(
            bundle,
            mounted_map,
            f"frames.camera_extrinsics:=['{as_text(QUERY_CAMERA)}']",
            "sequence.enabled:=true",
            "odometry.source:=topic",
            "odometry.topic:=/odom",
            "tf.publish_map_to_odom:=true",
            "tf.min_update_interval_s:=0.0",
            "relocalization.publish_initialpose:=true",
        )
    )
    dusk = frames(town / "t01_dusk")
    truth = {f.stamp_ns: base_of(f, QUERY_CAMERA) for f in dusk}
    odom_to_map = inverse(*ODOM_IN_MAP)

    def odometry_of(frame):
        position, orientation = compose(*odom_to_map, *truth[frame.stamp_ns])
        return odometry_msg(position, orientation, frame.stamp_ns, frame_id="odom")

    with RosHarness() as ros:
        matches = ros.record(PointCloud2, "/vpr/vpr_localizer/matches")
        poses = ros.record(PoseWithCovarianceStamped, "/vpr/vpr_localizer/pose")
        initial = ros.record(PoseWithCovarianceStamped, "/initialpose")
        tf = ros.record(TFMessage, "/tf", qos=100)
        pub_image, pub_odom = ros.publisher(Image, "/cam/image"), ros.publisher(Odometry, "/odom")
        assert ros.wait_for_subscribers("/cam/image") and ros.wait_for_subscribers("/odom"), output_of(proc)
        sent = drive(ros, proc, dusk, odometry_of, matches, pub_image, pub_odom)
        ros.spin_until(lambda: False, 1.0)

    order = {f.stamp_ns: i for i, f in enumerate(dusk)}
    tables = {stamp_of(m): read_table(m) for _, m in matches}
    pose_errors, yaw_errors = [], []
    for _, msg in poses:
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        position, orientation = truth[stamp_of(msg)]
        pose_errors.append(math.hypot(p.x - position[0], p.y - position[1]))
        yaw_errors.append(angle_between([q.x, q.y, q.z, q.w], orientation))
    assert len(poses) >= 0.6 * len(dusk), f"{len(poses)} of {len(dusk)} frames accepted"
    # The keyframes' own poses are 2-4 m apart; wrong frames or a forgotten extrinsic are metres
    # and 30-120 deg off.
    assert np.median(pose_errors) < 3.0 and np.mean(np.asarray(yaw_errors) < 15.0) >= 0.9, (
        np.round(pose_errors, 1),
        np.round(yaw_errors),
    )

    [(_, first)] = initial  # once (relocalization.min_interval_s 0)
    assert first.header.frame_id == "map"
    # frames 0-1 are single frames (sequence.min_frames 3), 2-3 the two consistent filter answers
    # (relocalization.consistent_frames) at the earliest
    assert order[stamp_of(first)] >= 3
    trusted = [s for s, t in tables.items() if len(t) and t["accepted"][0] and t["filtered"].any()]
    assert stamp_of(first) in trusted
    p = first.pose.pose.position
    assert math.hypot(p.x - truth[stamp_of(first)][0][0], p.y - truth[stamp_of(first)][0][1]) < 5.0

    # map -> odom as a robot uses it: the transform last received before a frame, composed with
    # that frame's odometry, is where the robot is (the fix's error grows only with the distance
    # driven since that fix, as a yaw error turns the whole odometry frame).
    received = [
        (t, f)
        for t, m in tf
        for f in m.transforms
        if (f.header.frame_id, f.child_frame_id) == ("map", "odom")
    ]
    assert received, "map -> odom was published"
    composed_errors, yaw_errors = [], []
    for frame, when in zip(dusk, sent):
        before = [f.transform for t, f in received if t < when]
        if not before:
            continue
        r, q = before[-1].translation, before[-1].rotation
        map_odom = (np.array([r.x, r.y, r.z]), np.array([q.x, q.y, q.z, q.w]))
        base_in_map = compose(*map_odom, *compose(*odom_to_map, *truth[frame.stamp_ns]))
        composed_errors.append(np.linalg.norm(base_in_map[0][:2] - truth[frame.stamp_ns][0][:2]))
        yaw_errors.append(angle_between(map_odom[1], ODOM_IN_MAP[1]))
    assert len(composed_errors) >= len(dusk) - order[stamp_of(first)] - 2
    assert np.median(yaw_errors) < 10.0, np.round(yaw_errors)
    assert np.median(composed_errors) < 3.0, np.round(composed_errors, 1)


def test_relocalize_answers_within_a_few_frames_of_rejoining_the_route(
    ros_process, town, bundle, day_map
) -> None:
    """A kidnap: the robot is driven off the map; ~/relocalize is called on the first off-route
    frame and answers once the robot is back on the route and the filter is sure again."""
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image, PointCloud2
    from std_srvs.srv import Trigger

    from vpr_ros.mapping.place_map import PlaceMap

    place_map = PlaceMap.load(day_map)
    proc = ros_process(
        localizer_args(
            bundle,
            day_map,
            f"search.similarity_threshold:={TOWN_THRESHOLD}",
            "sequence.enabled:=true",
            "odometry.source:=topic",
            "odometry.topic:=/odom",
        )
    )
    rejoin = frames(town / "t04_day_rejoin")
    nearest = [np.min(np.linalg.norm(place_map.positions[:, :2] - f.position[:2], axis=1)) for f in rejoin]
    off = [i for i, d in enumerate(nearest) if d > 15.0]
    back = next(i for i in range(off[-1], len(rejoin)) if nearest[i] < 5.0)
    answered_at = None
    with RosHarness() as ros:
        matches = ros.record(PointCloud2, "/vpr/vpr_localizer/matches")
        pub_image, pub_odom = ros.publisher(Image, "/cam/image"), ros.publisher(Odometry, "/odom")
        assert ros.wait_for_subscribers("/cam/image"), output_of(proc)
        client = ros.node.create_client(Trigger, "/vpr/vpr_localizer/relocalize")
        assert client.wait_for_service(timeout_sec=30.0)
        future = None
        for i, frame in enumerate(rejoin):
            if i == off[0]:
                future = client.call_async(Trigger.Request())
            pub_odom.publish(odometry_msg(frame.position, frame.orientation, frame.stamp_ns))
            ros.spin_until(lambda: False, 0.03)
            send_until_answered(ros, pub_image, image_msg(frame.rgb(), frame.stamp_ns), matches, proc)
            if future is not None and answered_at is None and ros.spin_until(future.done, 0.2):
                answered_at = i
        ros.spin_until(lambda: future.done(), 5.0)
    assert future.done(), output_of(proc)
    response = future.result()
    assert response.success and response.message.startswith("relocalized: x "), response.message
    assert answered_at is not None and back <= answered_at <= back + 8, (off[0], off[-1], back, answered_at)


def all_answered(tables: dict[str, list], counts: dict[str, int]) -> bool:
    return all(len(t) > counts[name] for name, t in tables.items())


def test_two_cameras_are_at_least_as_accurate_as_the_better_one_alone(
    ros_process, town, bundle, day_map
) -> None:
    """Two cameras on one robot, each covered (a uniform grey image) for half of the dusk drive: one
    localizer fusing both, and one on each camera alone, fed the same frames. The fused answers are
    right (accepted, within 10 m) at least as often as the better camera's."""
    from sensor_msgs.msg import Image, PointCloud2

    from vpr_ros.io.match_table import read_table

    threshold = f"search.similarity_threshold:={TOWN_THRESHOLD}"
    runs = {
        "fused": "['/cam_a/image', '/cam_b/image']",
        "a": "['/cam_a/image']",
        "b": "['/cam_b/image']",
    }
    procs = {
        name: ros_process(
            node_args(
                "vpr_ros.nodes.localizer",
                f"model.bundle_dir:={bundle}",
                f"map.dir:={day_map}",
                threshold,
                f"input.image_topics:={topics}",
                remaps=(),
                namespace=f"/{name}",
            )
        )
        for name, topics in runs.items()
    }
    dusk = frames(town / "t01_dusk")
    half = len(dusk) // 2
    covered = np.full_like(dusk[0].rgb(), 128)
    with RosHarness() as ros:
        tables = {name: ros.record(PointCloud2, f"/{name}/vpr_localizer/matches") for name in runs}
        pub_a, pub_b = ros.publisher(Image, "/cam_a/image"), ros.publisher(Image, "/cam_b/image")
        for pub, count in ((pub_a, 2), (pub_b, 2)):
            assert ros.wait_for_subscribers(pub.topic_name, count), [output_of(p) for p in procs.values()]
        for i, frame in enumerate(dusk):
            a = covered if i < half else frame.rgb()
            b = frame.rgb() if i < half else covered
            counts = {name: len(t) for name, t in tables.items()}
            answered = partial(all_answered, tables, counts)
            for _ in range(5):  # best effort: send again until every localizer answered
                pub_a.publish(image_msg(a, frame.stamp_ns))
                pub_b.publish(image_msg(b, frame.stamp_ns + 1_000_000))
                if ros.spin_until(answered, 5.0):
                    break
            assert answered(), f"frame {i} unanswered: {[output_of(p) for p in procs.values()]}"

    truth = {f.stamp_ns: f.position for f in dusk}

    def right(name: str) -> int:
        answers = {}
        for _, msg in tables[name]:
            stamp = stamp_of(msg)
            answers[stamp if stamp in truth else stamp - 1_000_000] = read_table(msg)  # b is 1 ms later
        hits = 0
        for stamp, table in answers.items():
            if len(table) and table["accepted"][0]:
                hits += np.hypot(*(np.array([table["x"][0], table["y"][0]]) - truth[stamp][:2])) <= 10.0
        return hits

    scores = {name: right(name) for name in runs}
    # measured: fused 12, camera a alone 7, b alone 5 (of 39 frames; 12 is what one clean camera
    # gets at this threshold): the fused answer is each half's uncovered camera
    assert scores["fused"] >= max(scores["a"], scores["b"]), scores
    assert scores["fused"] >= scores["a"] + scores["b"] - 1 > 0, scores


def test_the_mapper_appends_a_session_with_base_poses_from_tf(
    ros_process, town, bundle, day_map, tmp_path
) -> None:
    """The day map gets a night session from a robot whose pose is on TF only (map -> odom static,
    odom -> base_link per frame) and whose camera is mounted at MAP_CAMERA: the keyframes keep the
    base poses looked up at their image stamps, the session keeps the camera."""
    pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs is not built (scripts/build_tf2_msgs.sh)")
    import os
    import shutil
    import signal

    from nav_msgs.msg import Path as PathMsg
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage

    from vpr_ros.mapping.keyframes import KeyframeSelector
    from vpr_ros.mapping.place_map import PlaceMap
    from vpr_ros.nodes.common import LATCHED_QOS
    from vpr_ros.nodes.tf_io import TF_QOS, TF_STATIC_QOS, transform_msg

    out = tmp_path / "map"
    shutil.copytree(day_map, out)
    proc = ros_process(
        node_args(
            "vpr_ros.nodes.mapper",
            f"model.bundle_dir:={bundle}",
            f"map.dir:={out}",
            "map.append:=true",
            "input.pose_type:=tf",
            "frames.map:=map",
            f"frames.camera_extrinsic:=[{', '.join(as_text(MAP_CAMERA).split())}]",
            "mapper.keyframe_min_distance_m:=5.0",
        )
    )
    night = frames(town / "t03_night")[::2]
    truth = {f.stamp_ns: base_of(f, MAP_CAMERA) for f in night}
    odom_to_map = inverse(*ODOM_IN_MAP)
    selector = KeyframeSelector(5.0, 15.0)
    expected = [f.stamp_ns for f in night if selector.accept(*truth[f.stamp_ns])]
    with RosHarness() as ros:
        image_pub = ros.publisher(Image, "/cam/image")
        tf_pub = ros.publisher(TFMessage, "/tf", TF_QOS)
        static_pub = ros.publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
        path = ros.record(PathMsg, "/vpr/vpr_mapper/keyframes", qos=LATCHED_QOS)
        assert ros.wait_for_subscribers("/cam/image") and ros.wait_for_subscribers("/tf"), output_of(proc)
        static_pub.publish(
            TFMessage(transforms=[transform_msg("map", "odom", header(0, "").stamp, ODOM_IN_MAP)])
        )
        mapped_before = len(PlaceMap.load(day_map))
        for frame in night:
            odom = compose(*odom_to_map, *truth[frame.stamp_ns])
            stamp = header(frame.stamp_ns, "").stamp
            wanted = mapped_before + expected.index(frame.stamp_ns) + 1 if frame.stamp_ns in expected else 0
            while True:  # best effort may lose an image: each keyframe is sent until it is mapped
                tf_pub.publish(TFMessage(transforms=[transform_msg("odom", "base_link", stamp, odom)]))
                image_pub.publish(image_msg(frame.rgb(), frame.stamp_ns))
                if ros.spin_until(lambda n=wanted: bool(path) and len(path[-1][1].poses) >= n, 1.0, proc):
                    break
                assert proc.poll() is None, output_of(proc)
            ros.spin_until(lambda: False, 0.05)
    os.kill(proc.pid, signal.SIGTERM)  # saves on shutdown
    proc.wait(timeout=60)
    log = output_of(proc)
    assert proc.returncode == 0, log
    saved = PlaceMap.load(out)
    assert [s.name for s in saved.sessions] == ["t00_day", "/cam/image"], log
    np.testing.assert_allclose(saved.sessions[1].camera_extrinsic, np.concatenate(MAP_CAMERA), atol=1e-12)
    added = saved.session_ids == 1
    assert saved.stamps_ns[added].tolist() == expected, log
    for stamp, position, orientation in zip(
        saved.stamps_ns[added], saved.positions[added], saved.orientations[added]
    ):
        np.testing.assert_allclose(position, truth[int(stamp)][0], atol=1e-6)
        assert angle_between(orientation, truth[int(stamp)][1]) < 1e-4
