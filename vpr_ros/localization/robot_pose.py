"""The robot's pose in REP 105 frames from a place-recognition answer.

REP 105 (https://www.ros.org/reps/rep-0105.html) names the frames a mobile robot's navigation uses:
``map`` (global, no drift, may jump), ``odom`` (continuous, drifts) and ``base_link`` (the robot).
A global localizer publishes ``base_link``'s pose in ``map`` and, so that the TF tree stays a
tree, the correction ``map -> odom`` rather than ``map -> base_link`` (AMCL, slam_toolbox and
RTAB-Map do the same).

A match says the query camera stands where the keyframe's camera stood. The map keeps the base
pose ``B_k`` of each keyframe and its session's base-to-camera extrinsic ``E_k``, so the keyframe's
camera was at ``B_k o E_k``; a query camera mounted at ``E_q`` then puts the robot at
``B_k o E_k o E_q^-1``. With the same camera (``E_q = E_k``, the default) that is ``B_k``: the
extrinsic matters when a map is queried by another camera or another robot. Place recognition
does not measure the remaining height or tilt difference between the two cameras; it is carried
into the published z, roll and pitch, which a planar consumer (AMCL) ignores.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from vpr_ros.geometry import compose, inverse, yaw_of
from vpr_ros.localization.pose_estimate import PoseEstimate
from vpr_ros.mapping.place_map import PlaceMap

Pose = tuple[np.ndarray, np.ndarray]  # position [3], quaternion (x, y, z, w) [4]


def planar(position: np.ndarray, orientation: np.ndarray) -> Pose:
    """The pose projected on the ground plane: x, y and yaw kept, z, roll and pitch dropped."""
    yaw = float(yaw_of(orientation))
    return (
        np.array([position[0], position[1], 0.0]),
        np.array([0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)]),
    )


def query_base_pose(
    estimate: PoseEstimate, place_map: PlaceMap, query_extrinsic: Pose | None
) -> PoseEstimate:
    """``estimate`` (the keyframes' base pose) moved to the query robot's base: ``o E_k o E_q^-1``
    with ``E_k`` the extrinsic of the session of the keyframe the pose came from (module doc).
    ``query_extrinsic`` None means the query camera is mounted like the mapping one: no change.
    The covariance is kept: the offset is rigid, and a rotation of the position covariance by a
    lever arm of a few decimetres is well inside the place-recognition spread."""
    if query_extrinsic is None or estimate.keyframe_id < 0 or not estimate.accepted:
        return estimate
    keyframe_extrinsic = tuple(e[0] for e in place_map.extrinsics(np.array([estimate.keyframe_id])))
    offset = compose(*keyframe_extrinsic, *inverse(*query_extrinsic))
    position, orientation = compose(estimate.position, estimate.orientation, *offset)
    return replace(estimate, position=position, orientation=orientation)


def map_to_odom(base_in_map: Pose, base_in_odom: Pose) -> Pose:
    """The ``map -> odom`` transform that makes ``map -> odom -> base_link`` equal the localizer's
    ``base_link`` in ``map``: ``map_T_base o (odom_T_base)^-1``, in the plane (as AMCL publishes it:
    a camera fix's height, roll and pitch must not tilt the robot's odometry frame)."""
    map_base = planar(*base_in_map)
    odom_base = planar(*base_in_odom)
    return compose(*map_base, *inverse(*odom_base))
