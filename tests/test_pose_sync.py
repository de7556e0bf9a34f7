"""ImagePosePairer: stamp matching of images to poses in any arrival order (hand-computed cases)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vpr_ros.errors import InputError
from vpr_ros.io.pose_sync import ImagePosePairer

MS = 1_000_000  # ns
Q = (0.0, 0.0, 0.0, 1.0)


def pose_at(pairer: ImagePosePairer, ms: int) -> list:
    """A pose whose x (in metres) is its stamp in ms, so a pair shows which pose it got."""
    return pairer.add_pose(ms * MS, (float(ms), 0.0, 0.0), Q)


def summary(pairs: list) -> list[tuple[int, str, int]]:
    """(image stamp ms, payload, chosen pose stamp ms) per pair."""
    out = []
    for p in pairs:
        assert p.position[0] == p.pose_stamp_ns // MS  # the pose travelled with its stamp
        out.append((p.stamp_ns // MS, p.payload, p.pose_stamp_ns // MS))
    return out


def counters(pairer: ImagePosePairer) -> tuple[int, int, int, int]:
    return pairer.paired, pairer.dropped_no_pose, pairer.dropped_overflow, pairer.pending


def test_exact_stamp_pairs_at_once():
    pairer = ImagePosePairer(0.05)
    assert pose_at(pairer, 100) == []
    assert summary(pairer.add_image(100 * MS, "a")) == [(100, "a", 100)]
    assert counters(pairer) == (1, 0, 0, 0)


def test_nearest_within_tolerance_and_tie_goes_to_earlier():
    pairer = ImagePosePairer(0.05)
    for ms in (0, 100, 200):
        pose_at(pairer, ms)
    assert summary(pairer.add_image(140 * MS, "near-100")) == [(140, "near-100", 100)]
    assert summary(pairer.add_image(160 * MS, "near-200")) == [(160, "near-200", 200)]
    assert summary(pairer.add_image(150 * MS, "tie")) == [(150, "tie", 100)]
    assert summary(pairer.add_image(50 * MS, "edge")) == [(50, "edge", 0)]  # |50| == tolerance: kept


def test_image_without_pose_in_tolerance_is_dropped():
    pairer = ImagePosePairer(0.05)
    pose_at(pairer, 0)
    pose_at(pairer, 200)
    assert pairer.add_image(100 * MS, "gap") == []  # 100 ms from either pose
    assert pairer.add_image(51 * MS, "just-out") == []
    assert counters(pairer) == (0, 2, 0, 0)


def test_image_before_its_poses_waits_until_a_later_pose_arrives():
    pairer = ImagePosePairer(0.05)
    assert pairer.add_image(100 * MS, "a") == []
    assert pose_at(pairer, 70) == []  # a pose nearer than 30 ms may still come
    assert counters(pairer) == (0, 0, 0, 1)
    assert summary(pose_at(pairer, 110)) == [(100, "a", 110)]  # 10 ms beats 30 ms
    assert counters(pairer) == (1, 0, 0, 0)


def test_later_pose_settles_an_image_even_when_beyond_tolerance():
    pairer = ImagePosePairer(0.05)
    pairer.add_image(100 * MS, "a")
    pairer.add_image(120 * MS, "b")
    pose_at(pairer, 90)
    assert summary(pose_at(pairer, 300)) == [(100, "a", 90), (120, "b", 90)]
    pairer.add_image(200 * MS, "c")  # 100 ms from both neighbours
    assert counters(pairer) == (2, 1, 0, 0)


def test_out_of_order_poses_are_sorted_and_repeated_stamps_keep_the_last():
    pairer = ImagePosePairer(0.05)
    pose_at(pairer, 200)
    pose_at(pairer, 100)
    pairer.add_pose(100 * MS, (7.0, 0.0, 0.0), Q)  # same stamp: replaces x=100
    [pair] = pairer.add_image(105 * MS, "a")
    assert pair.pose_stamp_ns == 100 * MS and pair.position.tolist() == [7.0, 0.0, 0.0]
    assert summary(pairer.add_image(190 * MS, "b")) == [(190, "b", 200)]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_every_interleaving_gives_the_same_pairs(order):
    """All 24 arrival orders of two poses and two images: the same pairs once flushed, except
    when the poses themselves arrive out of order late enough to settle an image early."""
    events = [("pose", 0), ("pose", 100), ("image", 40), ("image", 90)]
    pairer = ImagePosePairer(0.05)
    pairs = []
    for kind, ms in (events[i] for i in order):
        if kind == "pose":
            pairs += pose_at(pairer, ms)
        else:
            pairs += pairer.add_image(ms * MS, f"i{ms}")
    pairs += pairer.flush()
    image_40_settled_at = max(order.index(2), order.index(1))  # when a pose >= 40 is known
    if order.index(0) < image_40_settled_at:
        assert sorted(summary(pairs)) == [(40, "i40", 0), (90, "i90", 100)]
    else:  # pose 0 came after pose 100 had settled image 40 (60 ms away): the one order that loses
        assert sorted(summary(pairs)) == [(90, "i90", 100)]
        assert pairer.dropped_no_pose == 1


def test_overflow_drops_the_oldest_waiting_image():
    pairer = ImagePosePairer(0.05, max_pending=2)
    for ms in (10, 20, 30):
        assert pairer.add_image(ms * MS, f"i{ms}") == []
    assert counters(pairer) == (0, 0, 1, 2)
    assert summary(pose_at(pairer, 30)) == [(20, "i20", 30), (30, "i30", 30)]
    assert counters(pairer) == (2, 0, 1, 0)


def test_flush_settles_waiting_images_with_the_poses_known():
    pairer = ImagePosePairer(0.05)
    pose_at(pairer, 100)
    pairer.add_image(120 * MS, "near")
    pairer.add_image(400 * MS, "far")
    assert counters(pairer) == (0, 0, 0, 2)
    assert summary(pairer.flush()) == [(120, "near", 100)]
    assert counters(pairer) == (1, 1, 0, 0)
    assert pairer.flush() == []


def test_images_older_than_the_pose_history_are_dropped():
    pairer = ImagePosePairer(0.05, pose_history=2)
    for ms in (0, 100, 200):
        pose_at(pairer, ms)
    assert pairer.add_image(10 * MS, "old") == []  # pose 0 has been forgotten
    assert summary(pairer.add_image(110 * MS, "kept")) == [(110, "kept", 100)]
    assert counters(pairer) == (1, 1, 0, 0)


def test_zero_tolerance_pairs_exact_stamps_only():
    pairer = ImagePosePairer(0.0)
    pose_at(pairer, 100)
    assert summary(pairer.add_image(100 * MS, "a")) == [(100, "a", 100)]
    assert pairer.add_image(99 * MS, "b") == []
    assert counters(pairer) == (1, 1, 0, 0)


def test_pair_arrays_are_float64_and_the_quaternion_unit():
    pairer = ImagePosePairer(0.05)
    pairer.add_pose(0, [1, 2, 3], np.array([0, 0, 2, 0], np.float32))
    [pair] = pairer.add_image(0, None)
    assert pair.position.dtype == np.float64 and pair.position.shape == (3,)
    assert pair.orientation.dtype == np.float64 and pair.orientation.tolist() == [0, 0, 1, 0]  # normalised


@pytest.mark.parametrize(
    ("position", "orientation"),
    [((0, 0), Q), ((0, 0, float("nan")), Q), ((0, 0, 0), (0, 0, 0)), ((0, 0, 0), (0, 0, 0, 0))],
)
def test_bad_poses_are_input_errors(position, orientation):
    with pytest.raises(InputError, match="pose|quaternion"):
        ImagePosePairer(0.05).add_pose(0, position, orientation)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="tolerance"):
        ImagePosePairer(-0.1)
    with pytest.raises(ValueError, match="max_pending"):
        ImagePosePairer(0.05, max_pending=0)
