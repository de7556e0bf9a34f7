"""One time step of the localizer without ROS: each camera's frame answered, the answers fused.

Per camera frame (an embedded descriptor): search the map's top-k; with the sequence filter on,
step that camera's :class:`~vpr_ros.localization.sequence_filter.SequenceTracker` (each camera
keeps its own history: a rear camera's trajectory through the map is not the front camera's) and
read the filter's place; estimate the keyframes' pose (top-1 or kNN voting); move it to the query
robot's base with the camera's extrinsic (:func:`~vpr_ros.localization.robot_pose.query_base_pose`).

Fusion of several cameras per time step is **the best answer**: an accepted answer beats a refused
one, then the higher similarity (the filter's confidence when it answered) wins. Each camera's
answer is already a pose of the same robot base, so picking one keeps a pose a keyframe really
had; averaging a front and a rear camera's poses would put the robot between two places when one of
them is wrong. A camera that sees nothing useful (a lens covered, a wall) cannot make the answer
worse than the better camera alone, which is what a robot with several cameras needs; the filter
over all cameras' frames together was not chosen because the cameras' frames do not come from one
trajectory through the map's keyframes (they look in different directions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vpr_ros.io import match_table
from vpr_ros.localization.pose_estimate import PoseEstimate, estimate_pose
from vpr_ros.localization.robot_pose import Pose, query_base_pose
from vpr_ros.localization.sequence_filter import SequenceSettings, SequenceTracker, cosine_scorer
from vpr_ros.mapping.place_map import PlaceMap


@dataclass(frozen=True)
class EstimateSettings:
    """The per-frame parameters of search and pose estimation (the node's search.* / estimate.*)."""

    top_k: int
    method: str
    sigma_m: float
    similarity_threshold: float
    min_position_std_m: float


@dataclass(frozen=True)
class CameraAnswer:
    """One camera frame's answer: the robot base's pose ``estimate`` in the map frame, the match
    table ``rows`` (the frame's own top-k, then the filter's place when it answered), and whether
    the sequence filter gave it (``filtered``)."""

    camera: int
    stamp_ns: int
    estimate: PoseEstimate
    rows: np.ndarray
    filtered: bool


class FrameAnswerer:
    """The map, the cameras' extrinsics (None: mounted like the mapping camera) and, when the
    sequence filter is on, one tracker per camera. Used by one thread (the localizer's worker)."""

    def __init__(
        self, place_map: PlaceMap, extrinsics: list[Pose | None], sequence: SequenceSettings | None
    ) -> None:
        self.place_map = place_map
        self.extrinsics = extrinsics
        self.trackers = None
        if sequence is not None:
            poses = (place_map.positions, place_map.orientations)
            self.trackers = [SequenceTracker(*poses, sequence, place_map.session_ids) for _ in extrinsics]

    def reset(self) -> None:
        """Forget every camera's sequence history (a kidnapped robot, ~/reset_sequence)."""
        for tracker in self.trackers or ():
            tracker.reset()

    def answer(
        self,
        camera: int,
        stamp_ns: int,
        descriptor: np.ndarray,
        settings: EstimateSettings,
        odometry: Pose | None = None,
    ) -> CameraAnswer:
        """The answer to one camera's frame; ``odometry`` is the robot's pose in its odometry frame
        at the frame's stamp (the filter's motion), None to use the elapsed time."""
        place_map = self.place_map
        sims, ids = place_map.search(descriptor, settings.top_k)
        ranked, scores = ids[0], sims[0]
        filtered = False
        if self.trackers is not None:
            score = cosine_scorer(place_map.descriptors, descriptor)
            tracker = self.trackers[camera]
            result = tracker.step(stamp_ns, ids[0], sims[0], score, odometry)
            if result.filtered:
                ranked, scores = tracker.filter.ranked_answer(result, ids[0], score)
                filtered = True
        estimate = estimate_pose(
            scores,
            ranked,
            place_map,
            method=settings.method,
            sigma_m=settings.sigma_m,
            similarity_threshold=settings.similarity_threshold,
            min_position_std_m=settings.min_position_std_m,
        )
        estimate = query_base_pose(estimate, place_map, self.extrinsics[camera])
        rows = self._table(ids[0], sims[0], estimate.accepted, filtered=False)
        if filtered:
            rows = np.concatenate([rows, self._table(ranked, scores, estimate.accepted, filtered=True)])
        return CameraAnswer(camera, stamp_ns, estimate, rows, filtered)

    def _table(self, ids: np.ndarray, sims: np.ndarray, accepted: bool, filtered: bool) -> np.ndarray:
        safe = np.clip(ids, 0, None)  # -1 = fewer keyframes than k; table_rows leaves those out
        positions, orientations = self.place_map.positions[safe], self.place_map.orientations[safe]
        return match_table.table_rows(ids, sims, positions, orientations, accepted, filtered)


def fuse(answers: list[CameraAnswer]) -> CameraAnswer:
    """The time step's answer: accepted before refused, then the highest similarity (module doc)."""
    return max(answers, key=lambda a: (a.estimate.accepted, a.estimate.similarity, -a.camera))
