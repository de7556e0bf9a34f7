"""REP 105 poses from place-recognition answers, without ROS: the query camera's extrinsic, map ->
odom, the fix gate and the fusion of several cameras."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vpr_ros.errors import InputError
from vpr_ros.geometry import compose, inverse, quat_multiply, rotation_angle_deg, yaw_of
from vpr_ros.localization.frame_answer import CameraAnswer, fuse
from vpr_ros.localization.pose_estimate import PoseEstimate
from vpr_ros.localization.relocalization import FixGate, GateSettings, RateLimit
from vpr_ros.localization.robot_pose import map_to_odom, planar, query_base_pose
from vpr_ros.mapping.place_map import PlaceMap, Session

DIM = 8
OPTICAL = np.array([-0.5, 0.5, -0.5, 0.5])


def yaw_q(deg: float) -> np.ndarray:
    return np.array([0.0, 0.0, math.sin(math.radians(deg) / 2), math.cos(math.radians(deg) / 2)])


def estimate(
    keyframe: int, position, orientation, accepted: bool = True, similarity: float = 0.9
) -> PoseEstimate:
    return PoseEstimate(
        accepted, keyframe, similarity, np.asarray(position, float), np.asarray(orientation, float),
        np.eye(6), "top1", 1,
    )  # fmt: skip


def one_keyframe_map(extrinsic: tuple[float, ...]) -> PlaceMap:
    place_map = PlaceMap(DIM, "sha256:" + "ab" * 32)
    place_map.add_session(Session("mapping", extrinsic))
    descriptor = np.eye(DIM, dtype=np.float32)[0]
    place_map.add(descriptor, 0, [10.0, 5.0, 0.0], yaw_q(90.0))
    return place_map


def test_inverse_undoes_a_pose():
    pose = (np.array([1.0, -2.0, 0.5]), quat_multiply(yaw_q(40.0), OPTICAL))
    position, orientation = compose(*pose, *inverse(*pose))
    np.testing.assert_allclose(position, 0.0, atol=1e-12)
    assert rotation_angle_deg(orientation, [0, 0, 0, 1]) < 1e-6


def test_a_query_camera_mounted_like_the_mapping_one_gives_the_keyframe_base():
    """Same camera: the robot stands where the mapping robot stood (no extrinsic needed)."""
    mount = (0.3, 0.0, 1.2, *quat_multiply(yaw_q(0.0), OPTICAL))
    place_map = one_keyframe_map(mount)
    mapped = estimate(0, [10.0, 5.0, 0.0], yaw_q(90.0))
    same = query_base_pose(mapped, place_map, (np.array(mount[:3]), np.array(mount[3:])))
    np.testing.assert_allclose(same.position, [10.0, 5.0, 0.0], atol=1e-12)
    assert rotation_angle_deg(same.orientation, yaw_q(90.0)) < 1e-6
    assert query_base_pose(mapped, place_map, None) is mapped


def test_another_camera_mount_moves_the_base_by_hand_computed_amounts():
    """The mapping camera sits 1 m ahead of its base, looking forward: the keyframe's base at
    (10, 5) facing +y put it at (10, 6) looking +y. The query camera sits 2 m behind its base,
    looking left: standing where the mapping camera stood, its robot faces +x (yaw 0) and its base
    is 2 m ahead of the camera, at (12, 6)."""
    mapping = (1.0, 0.0, 0.0, *OPTICAL)  # 1 m ahead, looking forward
    place_map = one_keyframe_map(mapping)
    query = (np.array([-2.0, 0.0, 0.0]), quat_multiply(yaw_q(90.0), OPTICAL))
    moved = query_base_pose(estimate(0, [10.0, 5.0, 0.0], yaw_q(90.0)), place_map, query)
    np.testing.assert_allclose(moved.position, [12.0, 6.0, 0.0], atol=1e-9)
    assert abs(math.degrees(yaw_of(moved.orientation))) < 1e-6
    refused = estimate(0, [np.nan] * 3, [np.nan] * 4, accepted=False)
    assert query_base_pose(refused, place_map, query) is refused


def test_map_to_odom_composed_with_the_odometry_is_the_base_in_map_on_the_plane():
    base_in_map = (np.array([20.0, -3.0, 1.0]), quat_multiply(yaw_q(60.0), yaw_q(0.0)))
    base_in_odom = (np.array([4.0, 2.0, 0.0]), yaw_q(15.0))
    map_odom = map_to_odom(base_in_map, base_in_odom)
    position, orientation = compose(*map_odom, *base_in_odom)
    np.testing.assert_allclose(position, [20.0, -3.0, 0.0], atol=1e-9)  # z is dropped: a plane
    assert rotation_angle_deg(orientation, yaw_q(60.0)) < 1e-6
    tilted = (base_in_map[0], quat_multiply(yaw_q(60.0), np.array([math.sin(0.05), 0, 0, math.cos(0.05)])))
    flat = planar(*tilted)
    assert flat[0][2] == 0.0 and abs(math.degrees(yaw_of(flat[1])) - 60.0) < 1e-6


def step(gate, t, x, odom_x=None, trusted=True):
    pose = (np.array([x, 0.0, 0.0]), yaw_q(0.0))
    odom = None if odom_x is None else (np.array([odom_x, 0.0, 0.0]), yaw_q(0.0))
    return gate.update(int(t * 1e9), trusted, pose if trusted else None, odom)


def test_a_fix_needs_consistent_trusted_answers_in_a_row():
    gate = FixGate(GateSettings(consistent_frames=3, max_disagreement_m=2.0))
    # odometry moves 5 m per frame; the answers agree, then one jumps 20 m, then they agree again
    assert [step(gate, t, 5 * t, odom_x=5 * t) for t in range(3)] == [False, False, True]
    assert step(gate, 3, 35.0, odom_x=15.0) is False  # 20 m off what the odometry predicts
    assert [step(gate, t, 35.0 + 5 * (t - 3), odom_x=5 * t) for t in (4, 5)] == [False, True]
    assert step(gate, 6, 0.0, trusted=False) is False and gate.streak == 0  # a refusal restarts
    # without odometry: the previous answer plus the speed range times the time
    gate = FixGate(GateSettings(consistent_frames=2, max_disagreement_m=1.0, max_speed_mps=2.0))
    assert [step(gate, 0, 0.0), step(gate, 1, 2.9)] == [False, True]  # 2.9 m <= 1 + 2 x 1 s
    assert step(gate, 2, 6.0) is False  # 3.1 m > 3 m


def test_gate_settings_are_checked():
    with pytest.raises(InputError, match="consistent_frames must be >= 1"):
        FixGate(GateSettings(consistent_frames=0))


def test_rate_limit():
    limit = RateLimit(10.0)
    assert limit.ready(0.0)
    limit.mark(0.0)
    assert not limit.ready(9.9) and limit.ready(10.0)


def test_fusion_prefers_an_accepted_answer_then_the_higher_similarity():
    def answer(camera, accepted, similarity):
        result = estimate(camera, [camera, 0, 0], yaw_q(0), accepted, similarity)
        return CameraAnswer(camera, 100 + camera, result, np.zeros(0), False)

    assert fuse([answer(0, False, 0.95), answer(1, True, 0.6)]).camera == 1
    assert fuse([answer(0, True, 0.7), answer(1, True, 0.8)]).camera == 1
    assert fuse([answer(0, True, 0.8), answer(1, True, 0.8)]).camera == 0  # a tie: the first camera
