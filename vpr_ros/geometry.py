"""Quaternion and pose helpers in ROS order: quaternions are (x, y, z, w), positions (x, y, z).

Small on purpose: keyframe selection and pose estimation need a handful of operations, and a
transformation library (tf_transformations, scipy) would be a runtime dependency for five
formulas. Every function takes one quaternion [4] or a stack [..., 4] and broadcasts, so a
whole trajectory is handled without a Python loop. Quaternions are normalised on the way in:
odometry quaternions drift off unit norm, and a zero quaternion (an uninitialised message) has no
rotation at all, so it raises :class:`InputError` instead of silently becoming NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vpr_ros.errors import InputError

_EPS = 1e-12


def _array(value: np.ndarray, width: int, name: str) -> np.ndarray:
    out = np.asarray(value, dtype=np.float64)
    if out.ndim == 0 or out.shape[-1] != width:
        raise InputError(f"{name} must have {width} components in its last axis, got shape {list(out.shape)}")
    if not np.all(np.isfinite(out)):
        raise InputError(f"{name} holds NaN or infinite values")
    return out


def quat_normalize(q: np.ndarray) -> np.ndarray:
    """Unit quaternion(s) [..., 4]; raises InputError for a zero (or non-finite) quaternion."""
    q = _array(q, 4, "quaternion")
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < _EPS):
        raise InputError("quaternion has zero norm: it is not a rotation (an unset orientation?)")
    return q / norm


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b (apply b, then a), unit inputs give a unit output."""
    a, b = quat_normalize(a), quat_normalize(b)
    ax, ay, az, aw = np.moveaxis(a, -1, 0)
    bx, by, bz, bw = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ],
        axis=-1,
    )


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vector(s) v [..., 3] rotated by q: v + 2w (u x v) + 2 u x (u x v), with q = (u, w)."""
    q = quat_normalize(q)
    v = _array(v, 3, "vector")
    u, w = q[..., :3], q[..., 3:]
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def compose(p1: np.ndarray, q1: np.ndarray, p2: np.ndarray, q2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pose1 o pose2: pose2 expressed in pose1's frame, mapped to pose1's parent frame."""
    p1 = _array(p1, 3, "position")
    return p1 + quat_rotate(q1, p2), quat_multiply(q1, q2)


def inverse(position: np.ndarray, orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse rigid transform: if B's pose in A is (p, q), A's pose in B is (-q^-1 p, q^-1)."""
    conjugate = quat_normalize(orientation) * np.array([-1.0, -1.0, -1.0, 1.0])
    return -quat_rotate(conjugate, position), conjugate


def rotation_angle_deg(q1: np.ndarray, q2: np.ndarray) -> np.ndarray | float:
    """Smallest rotation angle between two orientations, in [0, 180] degrees.

    q and -q are the same rotation, hence the |w|; atan2 of the relative rotation keeps full
    precision for small angles, where arccos of a dot product near 1 would lose it.
    """
    q1, q2 = quat_normalize(q1), quat_normalize(q2)
    conj = q1 * np.array([-1.0, -1.0, -1.0, 1.0])
    rel = quat_multiply(conj, q2)
    angle = np.degrees(2.0 * np.arctan2(np.linalg.norm(rel[..., :3], axis=-1), np.abs(rel[..., 3])))
    return float(angle) if np.ndim(angle) == 0 else angle


def yaw_of(q: np.ndarray) -> np.ndarray | float:
    """Heading (rotation about z in the ZYX convention) in radians, in (-pi, pi]."""
    x, y, z, w = np.moveaxis(quat_normalize(q), -1, 0)
    yaw = np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    return float(yaw) if np.ndim(yaw) == 0 else yaw


def wrap_angle(angle: np.ndarray | float) -> np.ndarray:
    """An angle in radians wrapped into [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2.0 * np.pi) - np.pi


def yaw_difference(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Absolute heading difference in radians, wrapped: +179 and -179 degrees are 2 degrees apart."""
    return np.abs(wrap_angle(np.asarray(a) - b))


def parse_extrinsic(values: str | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Base-to-camera transform from ``"x y z qx qy qz qw"`` (or 7 numbers): position [3] and unit
    quaternion [4]."""
    try:
        numbers = [
            float(v) for v in (values.replace(",", " ").split() if isinstance(values, str) else values)
        ]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 7 or not np.isfinite(numbers).all():
        raise InputError(f"camera extrinsic must be 7 finite numbers 'x y z qx qy qz qw', got {values!r:.80}")
    try:
        return np.array(numbers[:3]), quat_normalize(np.array(numbers[3:]))
    except InputError as exc:
        raise InputError(f"camera extrinsic {values!r:.80}: {exc}") from None
