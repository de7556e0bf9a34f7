"""``vpr_localizer``: which mapped place is this camera frame, and where is the robot.

Per time step (the newest frame of each camera in ``input.image_topics``): decode (any common
encoding, raw or compressed) -> embed the frames in one batch -> per camera: search the place map's
top-k, the sequence filter (``sequence.enabled``), pose from the matches (top-1 or kNN voting),
moved to the robot's base with the camera's extrinsic -> fuse the cameras (the best answer,
:mod:`vpr_ros.localization.frame_answer`) -> publish, stamped with that camera's image stamp in the
map frame:

- ``~/pose`` (geometry_msgs/PoseWithCovarianceStamped): ``frames.base``'s pose (REP 105), only for
  accepted frames;
- ``~/matches`` (sensor_msgs/PointCloud2 match table, ``vpr_ros.io.match_table``): every time
  step, refusals included (``accepted = 0``), so "unknown place" is explicit; the frame's own top-k
  (``filtered = 0``) then, when the filter answered, its place (``filtered = 1``);
- ``~/markers`` (current match), ``~/map_markers`` and ``~/keyframes`` (latched map layers), and
  ``/diagnostics``;
- on a fix (:mod:`vpr_ros.nodes.robot_outputs`): ``map -> odom`` on /tf and ``/initialpose``, each
  optional; ``~/relocalize`` waits for one.

Odometry (``odometry.source``: a nav_msgs/Odometry topic or TF ``frames.odom -> frames.base``) gives
the sequence filter the distance moved between frames and the fix check and ``map -> odom`` the
robot's odometry pose at each image's stamp. ``~/reset_sequence`` (Trigger) forgets the history.

The image callbacks only store the newest frame of each camera (:class:`Mailboxes`); a worker thread
takes them. A backend slower than the cameras therefore always works on the newest frames.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any

import faiss
import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry, Path
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import MarkerArray

from vpr_ros.errors import InputError
from vpr_ros.geometry import parse_extrinsic
from vpr_ros.io.image_codec import ImageConversionError, message_to_rgb
from vpr_ros.io.pose_sync import stamp_ns
from vpr_ros.localization.frame_answer import CameraAnswer, EstimateSettings, FrameAnswerer, fuse
from vpr_ros.localization.pose_estimate import resolve_threshold
from vpr_ros.localization.robot_pose import Pose
from vpr_ros.localization.sequence_filter import SequenceSettings
from vpr_ros.mapping.place_map import PlaceMap
from vpr_ros.nodes import messages
from vpr_ros.nodes import params as P
from vpr_ros.nodes.common import LATCHED_QOS, RESULT_QOS, LatencyWindow, VprNode, run
from vpr_ros.nodes.frame_inputs import Mailboxes, OdometryHistory
from vpr_ros.nodes.robot_outputs import RobotOutputs
from vpr_ros.nodes.tf_io import TfListener


class Localizer(VprNode):
    PARAMS = P.LOCALIZER
    DIAGNOSTIC_TASK = "localization"
    OWN_IMAGE_THREAD = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("vpr_localizer", **kwargs)
        self.map: PlaceMap | None = None
        self.enabled = True
        self.mailboxes = Mailboxes(1)
        self.worker: threading.Thread | None = None
        self.counts = {"processed": 0, "accepted": 0, "invalid": 0, "failed": 0, "throttled": 0, "paused": 0}
        self.latency = LatencyWindow()
        self.backend_latency = LatencyWindow()
        self.last_similarity = float("nan")
        self.last_accept: float | None = None  # monotonic time of the last accepted frame
        self._outcome = ("none", "")  # the last step's: accepted | refused | invalid | failed, and why
        self._first_answer: float | None = None
        self._last_processed = 0.0
        self._map_lock = threading.Lock()
        self.extrinsics: list[Pose | None] = [None]
        self.answerer: FrameAnswerer | None = None
        self.sequence_state = "off"
        self._answerer_stale = True  # rebuild the answerer before the next step (settings, map)
        self._sequence_reset = False  # ~/reset_sequence: forget the history before the next step
        self.odometry: OdometryHistory | TfListener | None = None
        self._odom_sub = None
        self.outputs: RobotOutputs | None = None
        self.pose_pub = self.create_publisher(PoseWithCovarianceStamped, "~/pose", RESULT_QOS)
        self.match_pub = self.create_publisher(PointCloud2, "~/matches", RESULT_QOS)
        self.marker_pub = self.create_publisher(MarkerArray, "~/markers", RESULT_QOS)
        self.map_marker_pub = self.create_publisher(MarkerArray, "~/map_markers", LATCHED_QOS)
        self.path_pub = self.create_publisher(Path, "~/keyframes", LATCHED_QOS)
        # A reload reads, hashes and indexes the whole map: its own group keeps the executor's other
        # work (frames, diagnostics, services) going meanwhile; the new map is swapped in at once.
        self.create_service(
            Trigger, "~/reload_map", self._reload_map, callback_group=MutuallyExclusiveCallbackGroup()
        )
        self.create_service(SetBool, "~/set_enabled", self._set_enabled)
        self.create_service(Trigger, "~/reset_sequence", self._reset_sequence)
        self.add_post_set_parameters_callback(self._apply_parameters)

    # ---------------------------------------------------------------- configure / activate

    def load(self) -> None:
        cfg = self.config
        self.extrinsics = _camera_extrinsics(cfg)
        self._sequence_settings(cfg)  # refuse bad sequence.* values at configure, in one line
        self.load_model()
        self.map = self._read_map()
        self._check_robot_outputs(cfg, self.map)
        faiss.omp_set_num_threads(1)  # one query at a time: FAISS's spinning threads only add latency
        self.get_logger().info(
            f"model {self.bundle.summary()} on {self.backend.describe()}; map {cfg['map.dir']}: "
            f"{len(self.map)} keyframes in {len(self.map.sessions)} session(s), frame '{self.map.frame_id}'; "
            f"similarity threshold {self.threshold():.3f}"
        )
        self.publish_map(self.map, self.path_pub, self.map_marker_pub)
        if cfg["odometry.source"] == "topic":
            history = OdometryHistory()
            self._odom_sub = self.create_subscription(Odometry, str(cfg["odometry.topic"]), history.add, 50)
            self.odometry = history
        elif cfg["odometry.source"] == "tf":
            self.odometry = TfListener(self, "odometry.source 'tf'")
        self.outputs = RobotOutputs(self, cfg, self.map.frame_id)

    def _check_robot_outputs(self, cfg: dict[str, P.Value], place_map: PlaceMap) -> None:
        """What the fix outputs need, refused at configure in one line."""
        if cfg["tf.publish_map_to_odom"] and cfg["odometry.source"] == "none":
            raise InputError(
                "tf.publish_map_to_odom needs the robot's odometry: set odometry.source to 'topic' or 'tf'"
            )
        wanted = str(cfg["relocalization.global_frame"])
        if cfg["relocalization.publish_initialpose"] and place_map.frame_id != wanted:
            raise InputError(
                f"relocalization.publish_initialpose: the map is in frame '{place_map.frame_id}' but "
                f"relocalization.global_frame (AMCL's global frame) is '{wanted}'; AMCL ignores initial "
                "poses in other frames: map in that frame"
            )

    def image_topic_names(self) -> list[str]:
        return [str(topic) for topic in self.config["input.image_topics"]]

    def _sequence_settings(self, cfg: dict[str, P.Value]) -> SequenceSettings:
        settings = SequenceSettings(
            length=int(cfg["sequence.length"]),
            min_frames=int(cfg["sequence.min_frames"]),
            min_speed=float(cfg["sequence.min_speed_mps"]),
            max_speed=float(cfg["sequence.max_speed_mps"]),
            switch_cost=float(cfg["sequence.switch_cost"]),
        )
        settings.check(prefix="parameter sequence.")
        return settings

    def _read_map(self) -> PlaceMap:
        place_map = PlaceMap.load(
            str(self.config["map.dir"]),
            expected_model_hash=self.bundle.content_hash,
            expected_dim=self.bundle.descriptor_dim,
        )
        if len(place_map) == 0:
            raise InputError(f"map {self.config['map.dir']} has no keyframes")
        wanted = self.config["frames.map"]
        if wanted and wanted != place_map.frame_id:
            raise InputError(
                f"map {self.config['map.dir']} is in frame '{place_map.frame_id}' "
                f"but frames.map is '{wanted}'"
            )
        return place_map

    def on_activate(self, state):
        self.enabled = True  # a pause (even one asked for while unconfigured) ends with the transition
        self.mailboxes = Mailboxes(len(self.image_topic_names()), float(self.config["input.camera_sync_s"]))
        self.worker = threading.Thread(target=self._work, name="vpr_localizer_worker", daemon=True)
        self.worker.start()
        return super().on_activate(state)

    def on_deactivate(self, state):
        result = super().on_deactivate(state)
        self.stop_worker()
        return result

    def stop_worker(self) -> None:
        self.mailboxes.close()
        if self.worker is not None:
            self.worker.join(timeout=10.0)
            self.worker = None

    def release(self) -> None:
        self.backend = None
        self.map = None
        self.answerer = None
        if self.outputs is not None:
            self.outputs.close()
            self.outputs = None
        if self._odom_sub is not None:
            self.destroy_subscription(self._odom_sub)
            self._odom_sub = None
        if isinstance(self.odometry, TfListener):
            self.odometry.close()
        self.odometry = None

    def threshold(self, cfg: dict[str, P.Value] | None = None) -> float:
        cfg = self.config if cfg is None else cfg
        return resolve_threshold(float(cfg["search.similarity_threshold"]), self.bundle.similarity_threshold)

    def _apply_parameters(self, changes) -> None:
        """Changes (validated before they were accepted) go in as a new dict swapped in whole: the
        worker reads ``self.config`` once per time step, so it never sees half of one
        set_parameters call, and needs no lock."""
        updated = dict(self.config)
        updated.update({change.name: change.value for change in changes if change.name in updated})
        self.config = updated
        if any(change.name.startswith("sequence.") for change in changes):
            self._answerer_stale = True
        if self.outputs is not None:
            self.outputs.apply_settings(updated)

    # ---------------------------------------------------------------- frames

    def on_image(self, msg, camera: int) -> None:
        if not self.enabled:
            self.counts["paused"] += 1
            return
        self.mailboxes.put(camera, msg)

    def _work(self) -> None:
        mailboxes = self.mailboxes
        while not mailboxes.closed:
            frames = mailboxes.take()
            if not frames:
                continue
            received = min(t for _, _, t in frames)
            cfg = self.config  # one snapshot per time step (see _apply_parameters)
            max_rate = float(cfg["input.max_rate_hz"])
            if max_rate > 0 and received - self._last_processed < 1.0 / max_rate:
                self.counts["throttled"] += 1
                continue
            self._last_processed = received
            try:
                self._process(frames, received, cfg)
            except Exception as exc:  # a fault of this node: the traceback once, then a count
                self.counts["failed"] += 1
                self._outcome = ("failed", f"{type(exc).__name__}: {exc}")
                if self.counts["failed"] == 1:
                    self.get_logger().error(f"frame failed:\n{traceback.format_exc()}")
                else:
                    self.get_logger().error(
                        f"frame failed: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0
                    )

    def _decoded(self, frames: list[tuple[int, Any, float]]) -> list[tuple[int, Any, np.ndarray]]:
        """``(camera, message, rgb)`` of the frames that decode; the others are the input's fault:
        counted, logged, no answer."""
        decoded = []
        for camera, msg, _ in frames:
            try:
                decoded.append((camera, msg, message_to_rgb(msg)))
            except ImageConversionError as exc:
                self.counts["invalid"] += 1
                self._outcome = ("invalid", str(exc))
                self.get_logger().warning(f"frame dropped: {exc}", throttle_duration_sec=5.0)
        return decoded

    def _answerer(self, place_map: PlaceMap, cfg: dict[str, P.Value]) -> FrameAnswerer:
        """The per-frame answerer: rebuilt after a change of the sequence parameters or a map
        reload, its history cleared after ~/reset_sequence or ~/relocalize (all on this worker
        thread, which alone uses it)."""
        if self._answerer_stale or self.answerer is None or self.answerer.place_map is not place_map:
            self._answerer_stale = False
            sequence = None
            self.sequence_state = "off"
            if cfg["sequence.enabled"]:
                try:
                    sequence = self._sequence_settings(cfg)
                except InputError as exc:
                    self.sequence_state = f"off: {exc}"
                    self.get_logger().error(f"sequence filter off: {exc}")
            self.answerer = FrameAnswerer(place_map, self.extrinsics, sequence)
        reset = self.outputs.take_reset()
        if self._sequence_reset or reset:
            self._sequence_reset = False
            self.answerer.reset()
        return self.answerer

    def _odometry_at(self, stamp: int, cfg: dict[str, P.Value]) -> Pose | None:
        if isinstance(self.odometry, OdometryHistory):
            return self.odometry.nearest(stamp)
        if isinstance(self.odometry, TfListener):
            return self.odometry.pose(str(cfg["frames.odom"]), str(cfg["frames.base"]), stamp)
        return None

    def _process(
        self, frames: list[tuple[int, Any, float]], received: float, cfg: dict[str, P.Value]
    ) -> None:
        decoded = self._decoded(frames)
        if not decoded:
            return
        t0 = time.monotonic()
        descriptors = self.backend.embed([rgb for _, _, rgb in decoded])
        self.backend_latency.add(time.monotonic() - t0)
        with self._map_lock:
            place_map = self.map
        answerer = self._answerer(place_map, cfg)
        settings = EstimateSettings(
            top_k=int(cfg["search.top_k"]),
            method=str(cfg["estimate.method"]),
            sigma_m=float(cfg["estimate.sigma_m"]),
            similarity_threshold=self.threshold(cfg),
            min_position_std_m=float(cfg["estimate.min_position_std_m"]),
        )
        answers, odometry, messages_of = [], {}, {}
        for (camera, msg, _), descriptor in zip(decoded, descriptors):
            stamp = stamp_ns(msg.header)
            odometry[camera] = self._odometry_at(stamp, cfg)
            messages_of[camera] = msg
            answers.append(answerer.answer(camera, stamp, descriptor, settings, odometry[camera]))
        best = fuse(answers)
        self._publish(best, messages_of[best.camera], place_map, cfg)
        trusted = best.estimate.accepted and (best.filtered or answerer.trackers is None)
        header = Header(stamp=messages_of[best.camera].header.stamp, frame_id=place_map.frame_id)
        self.outputs.update(best, trusted, header, odometry[best.camera])
        self._count(best, received, answerer)

    def _publish(self, answer: CameraAnswer, msg: Any, place_map: PlaceMap, cfg: dict[str, P.Value]) -> None:
        header = Header(stamp=msg.header.stamp, frame_id=place_map.frame_id)
        if answer.estimate.accepted:
            self.pose_pub.publish(messages.pose_with_covariance(header, answer.estimate))
        self.match_pub.publish(messages.match_cloud(header, answer.rows))
        # Markers only for a listener (RViz): building and sending them took ~0.6 ms per frame.
        if cfg["output.publish_markers"] and self.marker_pub.get_subscription_count() > 0:
            self.marker_pub.publish(messages.match_markers(header, answer.estimate, answer.rows))

    def _count(self, answer: CameraAnswer, received: float, answerer: FrameAnswerer) -> None:
        estimate = answer.estimate
        self.latency.add(time.monotonic() - received)
        self.counts["processed"] += 1
        self.last_similarity = float(estimate.similarity)
        now = time.monotonic()
        self._first_answer = self._first_answer or now
        self._outcome = ("accepted" if estimate.accepted else "refused", "")
        if estimate.accepted:
            self.counts["accepted"] += 1
            self.last_accept = now
        if answerer.trackers is not None:
            self.sequence_state = (
                f"{'filtering' if answer.filtered else 'collecting'}, {_motion(self.config)}"
            )
        self.get_logger().debug(
            f"frame {answer.stamp_ns} (camera {answer.camera}): keyframe {estimate.keyframe_id} "
            f"sim {estimate.similarity:.3f} {'accepted' if estimate.accepted else 'unknown place'}"
        )

    # ---------------------------------------------------------------- services

    def _reload_map(self, request, response):
        if self.backend is None:
            response.success, response.message = False, "not configured"
            return response
        try:
            fresh = self._read_map()
            self._check_robot_outputs(self.config, fresh)
        except InputError as exc:
            response.success, response.message = False, f"kept the current map: {exc}"
            self.get_logger().error(response.message)
            return response
        with self._map_lock:
            self.map = fresh
        self.publish_map(self.map, self.path_pub, self.map_marker_pub)
        response.success, response.message = True, f"{len(fresh)} keyframes from {self.config['map.dir']}"
        return response

    def _reset_sequence(self, request, response):
        self._sequence_reset = True
        response.success = True
        enabled = self.config.get("sequence.enabled")
        response.message = "sequence history cleared" if enabled else "sequence filter is off"
        return response

    def _set_enabled(self, request, response):
        self.enabled = bool(request.data)
        response.success, response.message = True, "enabled" if self.enabled else "paused"
        return response

    # ---------------------------------------------------------------- outputs

    def status(self) -> tuple[bytes, str, dict[str, Any]]:
        if self.map is None:
            return DiagnosticStatus.ERROR, "not configured", {}
        now = time.monotonic()
        outcome, reason = self._outcome
        if not self.enabled:
            level, message = DiagnosticStatus.OK, "paused"
        elif self.received == 0 or outcome == "none":
            level, message = DiagnosticStatus.WARN, "waiting for images"
        elif now - self._last_image >= float(self.config["input.stale_warn_s"]):
            level, message = DiagnosticStatus.WARN, "input stale"
        elif outcome == "invalid":
            level, message = DiagnosticStatus.ERROR, f"input invalid: {reason}"
        elif outcome == "failed":
            level, message = DiagnosticStatus.ERROR, f"processing failed: {reason}"
        elif outcome == "refused":
            since = self.last_accept or self._first_answer or now
            level, message = DiagnosticStatus.WARN, f"unknown place for {now - since:.0f} s"
        else:
            level, message = DiagnosticStatus.OK, "localized"
        processed = max(self.counts["processed"], 1)
        return (
            level,
            message,
            {
                "backend": self.backend.describe(),
                "frames received": self.received,
                "frames processed": self.counts["processed"],
                "frames dropped (newer frame arrived)": self.mailboxes.dropped,
                "frames throttled": self.counts["throttled"],
                "frames ignored while paused": self.counts["paused"],
                "frames invalid": self.counts["invalid"],
                "frames failed (node errors)": self.counts["failed"],
                "intake delay p50 ms": self.intake_delay.percentile_ms(50),
                "latency p50 ms": self.latency.percentile_ms(50),
                "latency p99 ms": self.latency.percentile_ms(99),
                "backend latency p50 ms": self.backend_latency.percentile_ms(50),
                "last similarity": self.last_similarity,
                "accepted ratio": self.counts["accepted"] / processed,
                "map keyframes": len(self.map),
                "map sessions": len(self.map.sessions),
                "cameras": len(self.image_topics),
                "sequence filter": self.sequence_state,
                "fixes": self.outputs.fixes,
                "model": self.bundle.content_hash[:19],
            },
        )


def _camera_extrinsics(cfg: dict[str, P.Value]) -> list[Pose | None]:
    """One extrinsic per image topic (None: like the matched keyframe's mapping camera)."""
    topics, given = list(cfg["input.image_topics"]), list(cfg["frames.camera_extrinsics"])
    if len(given) == 1 and len(topics) > 1 and given[0] == "":
        given = given * len(topics)
    if len(given) != len(topics):
        raise InputError(
            f"parameter frames.camera_extrinsics has {len(given)} entries for {len(topics)} image topics; "
            "give one per topic ('' = like the mapping camera)"
        )
    extrinsics = []
    for topic, text in zip(topics, given):
        try:
            extrinsics.append(parse_extrinsic(text) if text.strip() else None)
        except InputError as exc:
            raise InputError(f"parameter frames.camera_extrinsics ({topic}): {exc}") from None
    return extrinsics


def _motion(cfg: dict[str, P.Value]) -> str:
    return "speed range" if cfg["odometry.source"] == "none" else f"odometry ({cfg['odometry.source']})"


def main(args: list[str] | None = None) -> int:
    return run(Localizer, args, on_exit=lambda node: None)


if __name__ == "__main__":
    raise SystemExit(main())
