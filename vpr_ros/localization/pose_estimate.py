"""A pose from the place map's answer to one query: top-1, or k-nearest-neighbour voting.

``top1`` takes the most similar keyframe's pose. Its failure is the one that matters on a robot:
a single look-alike place far away (another identical corridor) wins and the robot jumps.
``knn_gaussian`` is the kNN scheme of IM2GPS (Vo, Jacobs, Hays, "Revisiting IM2GPS in the Deep
Learning Era", 2017; supplement Table 3, ``shared/seeds/000_0b0beaadf9b7570b.txt``): every
neighbour votes for its position with a Gaussian kernel of width sigma, and the densest position
wins. There kNN with sigma = 1 beats NN at every scale for the trained model (street 7.8 vs 7.5,
city 20.9 vs 18.9), while a wide kernel (sigma = 16) trades street-level accuracy for coarse
accuracy (street 5.3): sigma should be about the size of the error you care about, which for a
robot is metres (``sigma_m``).

Our version, for each query's k neighbours with similarity >= threshold:

- weights w_j = similarity_j; kernel K_ij = exp(-||p_i - p_j||^2 / (2 sigma^2));
- density D_i = sum_j w_j K_ij; the densest neighbour wins (ties -> the more similar one);
- one mean-shift step around the winner: position = sum_j w_j K_wj p_j / sum_j w_j K_wj, so a
  neighbour more than ~3 sigma from the winner has essentially no weight - one wrong neighbour
  cannot drag the estimate;
- orientation = the winner keyframe's (averaging orientations of keyframes that face different
  ways would produce a view no keyframe had);
- covariance (ROS order x, y, z, roll, pitch, yaw): the kernel-weighted covariance of the
  neighbours' positions, each variance floored at ``min_position_std_m``^2 (agreeing neighbours do
  not make a place-recognition fix more precise than the keyframe spacing); yaw variance from the
  weighted circular spread of the neighbours' yaws, -2 ln R (the wrapped-normal variance for mean
  resultant length R), floored at ``min_yaw_std_deg``^2 and capped at pi^2; roll and pitch are not
  estimated (the keyframe's are copied), so they get :data:`UNESTIMATED_VARIANCE`, the usual
  "ignore this axis" value for a fusion filter.

Below the threshold the query is an "unknown place": the estimate is refused (``accepted`` is
False, the pose NaN) but still names the most similar keyframe, for diagnostics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.geometry import yaw_of
from vpr_ros.mapping.place_map import PlaceMap

METHODS = ("top1", "knn_gaussian")
DEFAULT_SIMILARITY_THRESHOLD = 0.5  # when neither the user nor the model bundle gives one
UNESTIMATED_VARIANCE = 1e6  # rad^2 for roll and pitch: place recognition does not measure them


@dataclass(frozen=True)
class PoseEstimate:
    """One localization result in the map frame. ``keyframe_id`` / ``similarity`` are the keyframe
    the pose came from (for a refusal: the most similar one, -1 / -inf when there was none);
    ``neighbours`` is how many keyframes voted (similarity >= threshold)."""

    accepted: bool
    keyframe_id: int
    similarity: float
    position: np.ndarray  # [3]
    orientation: np.ndarray  # [4] (x, y, z, w)
    covariance: np.ndarray  # [6, 6] x, y, z, roll, pitch, yaw
    method: str
    neighbours: int


def resolve_threshold(configured: float, suggested: float | None) -> float:
    """The unknown-place threshold in force: the configured one when > 0, else the model bundle's
    suggestion (``model.json``), else :data:`DEFAULT_SIMILARITY_THRESHOLD`."""
    if configured > 0.0:
        return configured
    return DEFAULT_SIMILARITY_THRESHOLD if suggested is None else suggested


def estimate_pose(
    sims: np.ndarray,
    ids: np.ndarray,
    place_map: PlaceMap,
    method: str = "knn_gaussian",
    sigma_m: float = 5.0,
    similarity_threshold: float = 0.5,
    min_position_std_m: float = 0.5,
    min_yaw_std_deg: float = 10.0,
) -> PoseEstimate:
    """The pose for one query from its neighbours (one row of ``PlaceMap.search``); see the module doc."""
    _check_settings(method, sigma_m, similarity_threshold, min_position_std_m, min_yaw_std_deg)
    sims, ids = _check_matches(sims, ids, len(place_map))
    valid = np.flatnonzero(ids >= 0)
    best = valid[np.argmax(sims[valid])] if valid.size else None
    if best is None or sims[best] < similarity_threshold:
        return _refused(method, ids, sims, best)
    voters = valid[sims[valid] >= similarity_threshold]
    floor = _floor_covariance(min_position_std_m, min_yaw_std_deg)
    if method == "top1":
        return _keyframe_estimate(place_map, int(ids[best]), float(sims[best]), floor, method, 1)
    return _knn_gaussian(place_map, ids[voters], sims[voters], sigma_m, floor)


def _check_settings(
    method: str, sigma_m: float, threshold: float, min_std_m: float, min_yaw_deg: float
) -> None:
    if method not in METHODS:
        raise InputError(f"pose estimate: method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    if not (math.isfinite(sigma_m) and sigma_m > 0):
        raise InputError(f"pose estimate: sigma_m must be a finite number > 0, got {sigma_m}")
    if not (math.isfinite(threshold) and 0 < threshold <= 1):
        raise InputError(f"pose estimate: similarity_threshold must be in (0, 1], got {threshold}")
    for name, value in (("min_position_std_m", min_std_m), ("min_yaw_std_deg", min_yaw_deg)):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"pose estimate: {name} must be a finite number >= 0, got {value}")


def _check_matches(sims: np.ndarray, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    sims = np.asarray(sims, dtype=np.float64)
    ids = np.asarray(ids)
    if sims.ndim != 1 or ids.shape != sims.shape or sims.size == 0:
        raise InputError(
            f"pose estimate: sims and ids must be one query's row [k] each, got {list(sims.shape)} "
            f"and {list(ids.shape)}"
        )
    if not np.issubdtype(ids.dtype, np.integer) or np.any(ids < -1) or np.any(ids >= n):
        raise InputError(f"pose estimate: ids must be keyframe ids of this map (0..{n - 1}) or -1")
    if np.any(np.isnan(sims[ids >= 0])):
        raise InputError("pose estimate: sims hold NaN for a valid keyframe id")
    return sims, ids.astype(np.int64)


def _floor_covariance(min_position_std_m: float, min_yaw_std_deg: float) -> np.ndarray:
    pos_var = min_position_std_m**2
    yaw_var = math.radians(min_yaw_std_deg) ** 2
    return np.diag([pos_var, pos_var, pos_var, UNESTIMATED_VARIANCE, UNESTIMATED_VARIANCE, yaw_var])


def _refused(method: str, ids: np.ndarray, sims: np.ndarray, best: int | None) -> PoseEstimate:
    return PoseEstimate(
        accepted=False,
        keyframe_id=-1 if best is None else int(ids[best]),
        similarity=-math.inf if best is None else float(sims[best]),
        position=np.full(3, np.nan),
        orientation=np.full(4, np.nan),
        covariance=np.full((6, 6), np.nan),
        method=method,
        neighbours=0,
    )


def _keyframe_estimate(
    place_map: PlaceMap, keyframe: int, similarity: float, covariance: np.ndarray, method: str, voters: int
) -> PoseEstimate:
    return PoseEstimate(
        accepted=True,
        keyframe_id=keyframe,
        similarity=similarity,
        position=place_map.positions[keyframe].copy(),
        orientation=place_map.orientations[keyframe].copy(),
        covariance=covariance,
        method=method,
        neighbours=voters,
    )


def _knn_gaussian(
    place_map: PlaceMap, ids: np.ndarray, sims: np.ndarray, sigma_m: float, floor: np.ndarray
) -> PoseEstimate:
    positions = place_map.positions[ids]
    kernel = _gaussian_kernel(positions, sigma_m)
    density = kernel @ sims
    densest = np.flatnonzero(density >= density.max() * (1.0 - 1e-9))  # ties up to rounding
    winner = densest[np.argmax(sims[densest])]
    votes = sims * kernel[winner]
    votes = votes / votes.sum()  # > 0: the winner's own vote is its similarity
    mean = votes @ positions
    covariance = _knn_covariance(positions - mean, place_map.orientations[ids], votes, floor)
    estimate = _keyframe_estimate(
        place_map, int(ids[winner]), float(sims[winner]), covariance, "knn_gaussian", len(ids)
    )
    return replace(estimate, position=mean)


def _gaussian_kernel(positions: np.ndarray, sigma_m: float) -> np.ndarray:
    """K_ij = exp(-||p_i - p_j||^2 / (2 sigma^2)), [n, n]."""
    with np.errstate(over="ignore"):  # a tiny sigma overflows far pairs to inf, i.e. a kernel of 0
        scaled = (positions[:, None, :] - positions[None, :, :]) / sigma_m
        return np.exp(-0.5 * np.sum(scaled**2, axis=-1))


def _knn_covariance(
    centred: np.ndarray, orientations: np.ndarray, votes: np.ndarray, floor: np.ndarray
) -> np.ndarray:
    """Vote-weighted position covariance and yaw spread, each variance at least the floor's."""
    covariance = floor.copy()
    covariance[:3, :3] = (votes[:, None] * centred).T @ centred
    diagonal = [0, 1, 2, 5]
    estimated = [*np.diag(covariance[:3, :3]), _yaw_variance(orientations, votes)]
    covariance[diagonal, diagonal] = np.maximum(estimated, floor[diagonal, diagonal])
    return covariance


def _yaw_variance(orientations: np.ndarray, votes: np.ndarray) -> float:
    """Wrapped-normal variance -2 ln R of the vote-weighted yaws (R: mean resultant length), <= pi^2."""
    yaws = np.atleast_1d(yaw_of(orientations))
    resultant = abs(np.sum(votes * np.exp(1j * yaws)))
    if resultant <= math.exp(-(math.pi**2) / 2):
        return math.pi**2
    return -2.0 * math.log(resultant)
