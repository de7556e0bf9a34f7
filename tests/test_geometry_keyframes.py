"""Quaternion helpers (ROS x, y, z, w order) and keyframe selection by distance / rotation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vpr_ros.errors import InputError
from vpr_ros.geometry import compose, quat_multiply, quat_normalize, quat_rotate, rotation_angle_deg, yaw_of
from vpr_ros.mapping.keyframes import KeyframeSelector

IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])


def yaw_quat(yaw_rad: float) -> np.ndarray:
    return np.array([0.0, 0.0, math.sin(yaw_rad / 2), math.cos(yaw_rad / 2)])


def test_compose_with_identity_changes_nothing():
    p, q = np.array([1.0, -2.0, 3.0]), quat_normalize([0.1, 0.2, 0.3, 0.9])
    for composed in (compose(p, q, np.zeros(3), IDENTITY), compose(np.zeros(3), IDENTITY, p, q)):
        np.testing.assert_allclose(composed[0], p, atol=1e-12)
        np.testing.assert_allclose(composed[1], q, atol=1e-12)


def test_compose_applies_the_first_rotation_to_the_second_translation():
    p, q = compose(np.array([1.0, 0.0, 0.0]), yaw_quat(math.pi / 2), np.array([2.0, 0.0, 0.0]), yaw_quat(0.3))
    np.testing.assert_allclose(p, [1.0, 2.0, 0.0], atol=1e-12)
    assert yaw_of(q) == pytest.approx(math.pi / 2 + 0.3)


def test_ninety_degree_yaw():
    q = yaw_quat(math.pi / 2)
    np.testing.assert_allclose(quat_rotate(q, [1.0, 0.0, 0.0]), [0.0, 1.0, 0.0], atol=1e-12)
    assert yaw_of(q) == pytest.approx(math.pi / 2)
    assert rotation_angle_deg(IDENTITY, q) == pytest.approx(90.0)
    np.testing.assert_allclose(quat_multiply(q, q), yaw_quat(math.pi), atol=1e-12)


def test_q_and_minus_q_are_the_same_rotation():
    q = quat_normalize([0.3, -0.1, 0.5, 0.8])
    assert rotation_angle_deg(q, -q) == pytest.approx(0.0, abs=1e-6)
    assert rotation_angle_deg(yaw_quat(0.0), yaw_quat(math.radians(350))) == pytest.approx(10.0)


def test_small_angles_keep_their_precision():
    assert rotation_angle_deg(IDENTITY, yaw_quat(math.radians(1e-4))) == pytest.approx(1e-4, rel=1e-6)


def test_helpers_broadcast_over_stacks():
    yaws = np.linspace(-3.0, 3.0, 7)
    qs = np.stack([yaw_quat(y) for y in yaws])
    np.testing.assert_allclose(yaw_of(qs), yaws, atol=1e-12)
    np.testing.assert_allclose(rotation_angle_deg(IDENTITY, qs), np.degrees(np.abs(yaws)), atol=1e-9)
    rotated = quat_rotate(qs, np.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(rotated[:, :2], np.stack([np.cos(yaws), np.sin(yaws)], 1), atol=1e-12)


@pytest.mark.parametrize("bad", [[0.0, 0.0, 0.0, 0.0], [np.nan, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
def test_bad_quaternions_are_input_errors(bad):
    with pytest.raises(InputError):
        quat_normalize(bad)
    with pytest.raises(InputError):
        rotation_angle_deg(IDENTITY, bad)


def straight_path(step_m: float, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.array([i * step_m, 0.0, 0.0]), IDENTITY) for i in range(n)]


def count_accepted(selector: KeyframeSelector, path) -> list[int]:
    return [i for i, (p, q) in enumerate(path) if selector.accept(p, q)]


def test_selection_by_distance_from_the_last_accepted_keyframe():
    # 0.25 m steps, 1 m spacing: frames 0, 4, 8, ... (by hand: 21 frames over 5 m -> 6 keyframes).
    accepted = count_accepted(KeyframeSelector(1.0, 180.0), straight_path(0.25, 21))
    assert accepted == [0, 4, 8, 12, 16, 20]
    # 0.4 m steps: 0.8 < 1 is rejected, 1.2 accepted; the next is measured from 1.2, not from 0.8.
    assert count_accepted(KeyframeSelector(1.0, 180.0), straight_path(0.4, 10)) == [0, 3, 6, 9]


def test_selection_by_rotation_on_the_spot():
    # Turning in 10-degree steps without moving, 45-degree threshold: 0, 50, 100, 150, 200, 250, 300, 350.
    path = [(np.zeros(3), yaw_quat(math.radians(10 * i))) for i in range(36)]
    assert count_accepted(KeyframeSelector(1.0, 45.0), path) == [0, 5, 10, 15, 20, 25, 30, 35]


def test_either_criterion_suffices():
    path = [
        (np.zeros(3), IDENTITY),
        (np.array([0.5, 0.0, 0.0]), IDENTITY),  # neither
        (np.array([0.5, 0.0, 0.0]), yaw_quat(math.radians(40))),  # rotation
        (np.array([1.7, 0.0, 0.0]), yaw_quat(math.radians(40))),  # distance (1.2 m from the last)
        (np.array([1.8, 0.0, 0.0]), yaw_quat(math.radians(20))),  # neither
    ]
    assert count_accepted(KeyframeSelector(1.0, 30.0), path) == [0, 2, 3]


def test_zero_thresholds_accept_every_frame_and_reset_restarts():
    selector = KeyframeSelector(0.0, 0.0)
    assert count_accepted(selector, [(np.zeros(3), IDENTITY)] * 5) == [0, 1, 2, 3, 4]
    selector = KeyframeSelector(10.0, 90.0)
    assert selector.accept(np.zeros(3), IDENTITY)
    assert not selector.accept(np.zeros(3), IDENTITY)
    selector.reset()
    assert selector.accept(np.zeros(3), IDENTITY)


@pytest.mark.parametrize("args", [(-1.0, 10.0), (1.0, -5.0), (math.nan, 1.0), (math.inf, 1.0)])
def test_bad_selector_parameters(args):
    with pytest.raises(InputError):
        KeyframeSelector(*args)


def test_bad_pose_is_an_input_error():
    selector = KeyframeSelector(1.0, 10.0)
    with pytest.raises(InputError):
        selector.accept(np.zeros(3), np.zeros(4))
    with pytest.raises(InputError):
        selector.accept(np.zeros(2), IDENTITY)
