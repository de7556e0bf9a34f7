"""TransformBuffer and ImageTransformPairer: tf2's lookup rules on hand-computed trees.

The tree of most tests is a robot's: ``map -> odom`` (static, the localizer's offset),
``odom -> base_link`` (dynamic, odometry), ``base_link -> camera`` (static, the mount). Messages
are built with the rosbags typestore, whose TFMessage has the fields an rclpy message has.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from vpr_ros.errors import InputError
from vpr_ros.geometry import compose
from vpr_ros.io.tf_buffer import ImageTransformPairer, TransformBuffer, TransformUnavailable

T = get_typestore(Stores.ROS2_KILTED).types
MS = 1_000_000  # ns
T0 = 1_700_000_000_000_000_000
R2 = math.sqrt(0.5)


def yaw(deg: float) -> np.ndarray:
    half = math.radians(deg) / 2
    return np.array([0.0, 0.0, math.sin(half), math.cos(half)])


def transform(parent: str, child: str, stamp_ns: int, xyz: tuple, q: tuple) -> object:
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    return T["geometry_msgs/msg/TransformStamped"](
        header=T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=parent
        ),
        child_frame_id=child,
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])),
            rotation=T["geometry_msgs/msg/Quaternion"](
                x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])
            ),
        ),
    )


def tf_message(*transforms: object) -> object:
    return T["tf2_msgs/msg/TFMessage"](transforms=list(transforms))


def robot(**kwargs: float) -> TransformBuffer:
    """map -> odom static at (1, 2, 0) turned 90 deg; odom -> base_link at T0 (3, 0, 0) turned 45 deg
    and at T0 + 100 ms (3, 1, 0) turned 45 deg; base_link -> camera static 0.5 m ahead, 1 m up,
    turned -90 deg. Base in map at T0: (1, 2, 0) + R90 (3, 0, 0) = (1, 5, 0), yaw 135."""
    buffer = TransformBuffer(**kwargs)
    buffer.add("map", "odom", 0, (1, 2, 0), yaw(90), static=True)
    buffer.add("odom", "base_link", T0, (3, 0, 0), yaw(45))
    buffer.add("odom", "base_link", T0 + 100 * MS, (3, 1, 0), yaw(45))
    buffer.add("base_link", "camera", 0, (0.5, 0, 1), yaw(-90), static=True)
    return buffer


def assert_pose(pose: tuple[np.ndarray, np.ndarray], position: tuple, orientation: np.ndarray) -> None:
    np.testing.assert_allclose(pose[0], position, atol=1e-12)
    q = pose[1] if np.dot(pose[1], orientation) >= 0 else -pose[1]  # q and -q: one rotation
    np.testing.assert_allclose(q, orientation, atol=1e-12)


def test_chain_composes_up_to_the_common_ancestor():
    buffer = robot()
    assert buffer.frames() == ["base_link", "camera", "map", "odom"]
    assert "odom" in buffer and "/odom" in buffer and "world" not in buffer
    assert_pose(buffer.lookup("map", "base_link", T0), (1, 5, 0), yaw(135))
    # camera: (1, 5, 0) + R135 (0.5, 0, 1) = (1 - 0.5 R2, 5 + 0.5 R2, 1), yaw 135 - 90
    assert_pose(buffer.lookup("map", "camera", T0), (1 - 0.5 * R2, 5 + 0.5 * R2, 1), yaw(45))
    assert_pose(buffer.lookup("odom", "camera", T0), (3 + 0.5 * R2, 0.5 * R2, 1), yaw(-45))
    # a landmark 2 m ahead of the robot's pose at T0, static in map: seen from base_link it is
    # (2, 0, 0) unturned, which needs the target side (map -> odom -> base_link) inverted
    buffer.add("map", "landmark", 0, (1 - 2 * R2, 5 + 2 * R2, 0), yaw(135), static=True)
    assert_pose(buffer.lookup("base_link", "landmark", T0), (2, 0, 0), yaw(0))
    assert_pose(buffer.lookup("camera", "camera", T0), (0, 0, 0), yaw(0))
    assert_pose(buffer.lookup("ghost", "ghost", T0), (0, 0, 0), yaw(0))  # tf2 short-circuits too


def test_opposite_lookups_are_inverse():
    buffer = robot()
    forward = buffer.lookup("map", "camera", T0 + 30 * MS)
    backward = buffer.lookup("camera", "map", T0 + 30 * MS)
    assert_pose(compose(*forward, *backward), (0, 0, 0), yaw(0))
    # map seen from base_link at T0: rotate -135 deg, then -(1, 5, 0) expressed there
    c, s = math.cos(math.radians(-135)), math.sin(math.radians(-135))
    assert_pose(buffer.lookup("base_link", "map", T0), (-(c * 1 - s * 5), -(s * 1 + c * 5), 0), yaw(-135))


def test_interpolation_is_linear_in_translation_and_slerp_in_rotation():
    buffer = TransformBuffer()
    buffer.add("odom", "base_link", T0, (0, 0, 0), yaw(0))
    buffer.add("odom", "base_link", T0 + 100 * MS, (1, 2, 0), yaw(90))
    assert_pose(buffer.lookup("odom", "base_link", T0 + 50 * MS), (0.5, 1, 0), yaw(45))
    # a quarter of the way: slerp turns by a quarter of the angle (normalised lerp would give 20.7 deg)
    assert_pose(buffer.lookup("odom", "base_link", T0 + 25 * MS), (0.25, 0.5, 0), yaw(22.5))
    # the shorter arc: -q is the same rotation as q
    buffer.add("odom", "base_link", T0 + 200 * MS, (1, 2, 0), -yaw(130))
    assert_pose(buffer.lookup("odom", "base_link", T0 + 150 * MS), (1, 2, 0), yaw(110))


def test_an_exact_sample_is_returned_as_is():
    buffer = TransformBuffer()
    buffer.add("odom", "base_link", T0, (0, 0, 0), yaw(0))
    buffer.add("odom", "base_link", T0 + 100 * MS, (1.1, 2.2, 3.3), yaw(33))
    buffer.add("odom", "base_link", T0 + 200 * MS, (9, 9, 9), yaw(99))
    position, orientation = buffer.lookup("odom", "base_link", T0 + 100 * MS)
    np.testing.assert_array_equal(position, [1.1, 2.2, 3.3])
    np.testing.assert_allclose(orientation, yaw(33), rtol=0, atol=1e-16)


def test_extrapolation_is_refused_with_the_edge_and_its_span():
    buffer = robot()
    span = f"it is buffered from {T0} to {T0 + 100 * MS} ns (looking up 'camera' in 'map')"
    with pytest.raises(TransformUnavailable) as past:
        buffer.lookup("map", "camera", T0 - 1)
    assert str(past.value) == (
        f"transform 'odom' -> 'base_link' at {T0 - 1} ns would require extrapolation into the past: {span}"
    )
    with pytest.raises(
        TransformUnavailable, match=r"^transform 'odom' -> 'base_link' at \d+ ns would require "
    ):
        buffer.lookup("map", "camera", T0 + 100 * MS + 1)
    with pytest.raises(TransformUnavailable, match="extrapolation into the future: it is buffered from"):
        buffer.lookup("map", "camera", T0 + 100 * MS + 1)
    assert issubclass(TransformUnavailable, LookupError) and not issubclass(TransformUnavailable, InputError)


def test_static_edges_hold_at_every_stamp():
    buffer = robot()
    for stamp in (0, T0 - 10**18, T0, T0 + 10**18):
        assert_pose(buffer.lookup("base_link", "camera", stamp), (0.5, 0, 1), yaw(-90))
        assert_pose(buffer.lookup("odom", "map", stamp), (-2, 1, 0), yaw(-90))
        assert buffer.settled("map", "odom", stamp)


def test_unknown_and_disconnected_frames_are_named():
    buffer = robot()
    buffer.add("world", "satellite", T0, (0, 0, 0), yaw(0))
    with pytest.raises(TransformUnavailable, match=r"^frame 'ghost' does not exist in the tf tree$"):
        buffer.lookup("map", "ghost", T0)
    with pytest.raises(TransformUnavailable, match=r"^frame 'ghost' does not exist"):
        buffer.lookup("ghost", "map", T0)
    with pytest.raises(TransformUnavailable) as exc:
        buffer.lookup("camera", "satellite", T0)
    assert str(exc.value) == (
        "frames 'camera' and 'satellite' are not connected: "
        "'camera' is under 'map', 'satellite' under 'world'"
    )
    assert not buffer.settled("camera", "satellite", T0) and not buffer.settled("map", "ghost", T0)


def test_a_new_parent_replaces_the_old_one():
    buffer = robot()
    buffer.add("map", "base_link", T0 + 200 * MS, (7, 8, 0), yaw(10))  # a localizer takes over base_link
    assert_pose(buffer.lookup("map", "base_link", T0 + 200 * MS), (7, 8, 0), yaw(10))
    assert_pose(buffer.lookup("odom", "base_link", T0 + 200 * MS), (6, -6, 0), yaw(-80))  # via map now
    with pytest.raises(TransformUnavailable, match="'map' -> 'base_link' .* into the past"):
        buffer.lookup("map", "base_link", T0)  # the samples under odom are gone
    buffer.add("odom", "base_link", 0, (1, 0, 0), yaw(0), static=True)  # dynamic -> static: starts over
    assert_pose(buffer.lookup("odom", "base_link", T0 - 10**18), (1, 0, 0), yaw(0))


def test_samples_older_than_the_cache_are_dropped():
    buffer = TransformBuffer(cache_s=1.0)
    for ms in (0, 500, 600, 1000, 1600):
        buffer.add("odom", "base_link", T0 + ms * MS, (ms / 1000, 0, 0), yaw(0))
    # newest 1600 ms: 600 ms is exactly cache_s older and stays (tf2 drops strictly older ones)
    assert_pose(buffer.lookup("odom", "base_link", T0 + 800 * MS), (0.8, 0, 0), yaw(0))
    with pytest.raises(TransformUnavailable, match=f"into the past: it is buffered from {T0 + 600 * MS} "):
        buffer.lookup("odom", "base_link", T0 + 550 * MS)
    buffer.add("odom", "base_link", T0 + 100 * MS, (0.1, 0, 0), yaw(0))  # too old on arrival
    with pytest.raises(TransformUnavailable, match="into the past"):
        buffer.lookup("odom", "base_link", T0 + 100 * MS)
    with pytest.raises(ValueError, match="cache_s must be > 0"):
        TransformBuffer(cache_s=0)


def test_invalid_transforms_are_counted_not_raised():
    buffer = TransformBuffer()
    msg = tf_message(
        transform("/map", "/odom", T0, (1, 0, 0), tuple(yaw(0))),
        transform("odom", "base_link", T0, (math.nan, 0, 0), tuple(yaw(0))),
        transform("odom", "wheel", T0, (0, 0, 0), (0, 0, 0, 0)),
        transform("odom", "/odom", T0, (0, 0, 0), tuple(yaw(0))),
        transform("odom", "", T0, (0, 0, 0), tuple(yaw(0))),
        transform("odom", "laser", T0, (0, 0, 0), (0, 0, 0, 2)),  # off unit norm: normalised
    )
    assert buffer.add_message(msg, static=False) == 2
    assert buffer.rejected == 4 and buffer.frames() == ["laser", "map", "odom"]
    assert (
        buffer.first_rejection
        == "transform 'odom' -> 'base_link': translation must be 3 finite numbers, got (nan, 0.0, 0.0)"
    )
    assert_pose(buffer.lookup("map", "laser", T0), (1, 0, 0), yaw(0))
    for bad, message in [
        (
            ("odom", "wheel", T0, (0, 0, 0), (0, 0, 0, 0)),
            "transform 'odom' -> 'wheel': rotation .* is a zero quaternion",
        ),
        (("odom", "odom", T0, (0, 0, 0), yaw(0)), "transform from frame 'odom' to itself"),
        (("/", "odom", T0, (0, 0, 0), yaw(0)), r"parent frame id is empty \('/'\)"),
        (("a", "b", T0, (0, 0), yaw(0)), "translation must be 3 finite numbers"),
        (("a", "b", T0, (0, 0, 0), (0, 0, math.inf, 1)), "rotation must be 4 finite numbers"),
    ]:
        with pytest.raises(InputError, match=message):
            buffer.add(*bad)


def test_settled_once_every_dynamic_edge_has_reached_the_stamp():
    buffer = robot()
    assert buffer.settled("map", "camera", T0 + 50 * MS) and buffer.settled("map", "camera", T0 + 100 * MS)
    assert not buffer.settled("map", "camera", T0 + 150 * MS)
    assert buffer.settled("base_link", "camera", T0 + 150 * MS)  # static only
    buffer.add("odom", "base_link", T0 + 200 * MS, (3, 3, 0), yaw(45))
    assert buffer.settled("map", "camera", T0 + 150 * MS)
    assert_pose(buffer.lookup("odom", "base_link", T0 + 150 * MS), (3, 2, 0), yaw(45))


def pairs_of(messages: list[tuple[str, object]]) -> tuple[list[tuple[int, str, tuple]], ImageTransformPairer]:
    """Feed ("image", (stamp, name)) / ("tf", msg) / ("static", msg) to a pairer: (stamp, name,
    rounded position) per pair, and the pairer."""
    pairer = ImageTransformPairer(TransformBuffer(), "/map", "base_link", max_pending=3)
    out = []
    for kind, item in messages:
        if kind == "image":
            pairs = pairer.add_image(*item)
        else:
            pairs = pairer.add_transforms(item, static=kind == "static")
        out += pairs
    out += pairer.flush()
    for pair in out:
        assert pair.pose_stamp_ns == pair.stamp_ns
    return [(p.stamp_ns, p.payload, tuple(np.round(p.position, 9))) for p in out], pairer


def test_pairer_waits_until_settled_in_any_interleaving():
    static = ("static", tf_message(transform("map", "odom", 0, (10, 0, 0), tuple(yaw(0)))))
    odometry = [
        ("tf", tf_message(transform("odom", "base_link", T0 + ms * MS, (ms / 100, 0, 0), tuple(yaw(0)))))
        for ms in (0, 100, 200)
    ]
    images = [("image", (T0 + ms * MS, f"img{ms}")) for ms in (50, 150, 250)]
    expected = [(T0 + 50 * MS, "img50", (10.5, 0, 0)), (T0 + 150 * MS, "img150", (11.5, 0, 0))]
    for order in itertools.permutations([static, *odometry, *images]):
        if [m for m in order if m[0] == "tf"] != odometry or [m for m in order if m[0] == "image"] != images:
            continue  # each topic in stamp order, as a recorder writes it
        pairs, pairer = pairs_of(list(order))
        assert pairs == expected, order
        assert (pairer.paired, pairer.dropped_no_pose, pairer.dropped_overflow, pairer.pending) == (
            2,
            1,
            0,
            0,
        )
        assert "'odom' -> 'base_link' at" in pairer.last_failure and "into the future" in pairer.last_failure


def test_pairer_drops_the_oldest_image_beyond_max_pending():
    images = [("image", (T0 + ms * MS, f"img{ms}")) for ms in (10, 20, 30, 40)]
    tf = [
        ("tf", tf_message(transform("map", "base_link", T0 + ms * MS, (ms, 0, 0), tuple(yaw(0)))))
        for ms in (0, 50)
    ]
    pairs, pairer = pairs_of([*images, *tf])
    assert [p[1] for p in pairs] == ["img20", "img30", "img40"]
    assert (pairer.paired, pairer.dropped_no_pose, pairer.dropped_overflow) == (3, 0, 1)
