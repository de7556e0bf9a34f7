"""``vpr_localizer``: which mapped place is this camera frame, and where is the robot.

Per frame: decode (any common encoding, raw or compressed) -> embed with the model bundle ->
search the place map's top-k -> pose from the matches (top-1 or kNN Gaussian voting) -> publish,
stamped with the image's stamp in the map frame:

- ``~/pose`` (geometry_msgs/PoseWithCovarianceStamped): only for accepted frames;
- ``~/matches`` (sensor_msgs/PointCloud2 match table, ``vpr_ros.io.match_table``): every processed
  frame, refusals included (``accepted = 0``), so "unknown place" is explicit;
- ``~/markers`` (current match), ``~/map_markers`` and ``~/keyframes`` (latched map layers), and
  ``/diagnostics``.

With ``sequence.enabled`` the pose, the unknown-place decision (the filter's confidence against the
threshold) and the match table's ``filtered`` rows come from the sequence filter over the last
``sequence.length`` frames (:mod:`vpr_ros.localization.sequence_filter`; odometry from
``sequence.odom_topic`` when set); the table still carries the frame's own top-k (``filtered = 0``).
``~/reset_sequence`` (Trigger) forgets the history, e.g. after the robot was carried elsewhere.

The image callback only stores the newest frame in a one-slot mailbox; a worker thread takes it.
A backend slower than the camera therefore always works on the newest frame and the overwritten
ones are counted as dropped, never queued (depth-1 QoS does the same inside DDS).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from typing import Any

import faiss
import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry, Path
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import MarkerArray

from vpr_ros.errors import InputError
from vpr_ros.io import match_table
from vpr_ros.io.image_codec import ImageConversionError, message_to_rgb
from vpr_ros.io.pose_sync import stamp_ns
from vpr_ros.localization.pose_estimate import estimate_pose, resolve_threshold
from vpr_ros.localization.sequence_filter import (
    SequenceSettings,
    SequenceTracker,
    cosine_scorer,
)
from vpr_ros.mapping.place_map import PlaceMap
from vpr_ros.nodes import messages
from vpr_ros.nodes import params as P
from vpr_ros.nodes.common import LATCHED_QOS, RESULT_QOS, LatencyWindow, VprNode, run


class Mailbox:
    """Holds the newest frame; putting over an untaken one counts a drop."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self.dropped = 0
        self.closed = False

    def put(self, item: Any) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = (item, time.monotonic())
            self._cond.notify()

    def take(self, timeout: float = 0.5) -> Any:
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class OdometryHistory:
    """The recent odometry poses, for the pose nearest an image's stamp (the image is not held
    back waiting for odometry: without a pose close enough the filter falls back to time)."""

    def __init__(self, size: int = 500) -> None:
        self._lock = threading.Lock()
        self._poses: deque[tuple[int, np.ndarray, np.ndarray]] = deque(maxlen=size)

    def add(self, msg) -> None:
        pose = msg.pose.pose
        position = np.array([pose.position.x, pose.position.y, pose.position.z])
        q = pose.orientation
        orientation = np.array([q.x, q.y, q.z, q.w])
        if np.all(np.isfinite(position)) and np.all(np.isfinite(orientation)):
            with self._lock:
                self._poses.append((stamp_ns(msg.header), position, orientation))

    def nearest(self, stamp: int, tolerance_ns: int = 500_000_000) -> tuple[np.ndarray, np.ndarray] | None:
        with self._lock:
            poses = list(self._poses)
        if not poses:
            return None
        best = min(poses, key=lambda pose: abs(pose[0] - stamp))
        return (best[1], best[2]) if abs(best[0] - stamp) <= tolerance_ns else None


class Localizer(VprNode):
    PARAMS = P.LOCALIZER
    DIAGNOSTIC_TASK = "localization"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("vpr_localizer", **kwargs)
        self.map: PlaceMap | None = None
        self.enabled = True
        self.mailbox = Mailbox()
        self.worker: threading.Thread | None = None
        self.counts = {"processed": 0, "accepted": 0, "invalid": 0, "failed": 0, "throttled": 0, "paused": 0}
        self.latency = LatencyWindow()
        self.backend_latency = LatencyWindow()
        self.last_similarity = float("nan")
        self.last_accept: float | None = None  # monotonic time of the last accepted frame
        self._outcome = ("none", "")  # the last frame's: accepted | refused | invalid | failed, and why
        self._first_answer: float | None = None
        self._last_processed = 0.0
        self._map_lock = threading.Lock()
        self.tracker: SequenceTracker | None = None
        self.sequence_state = "off"
        self._sequence_stale = True  # rebuild the tracker before the next frame (settings, map)
        self._sequence_reset = False  # ~/reset_sequence: forget the history before the next frame
        self.odometry = OdometryHistory()
        self._odom_sub = None
        self.pose_pub = self.create_publisher(PoseWithCovarianceStamped, "~/pose", RESULT_QOS)
        self.match_pub = self.create_publisher(PointCloud2, "~/matches", RESULT_QOS)
        self.marker_pub = self.create_publisher(MarkerArray, "~/markers", RESULT_QOS)
        self.map_marker_pub = self.create_publisher(MarkerArray, "~/map_markers", LATCHED_QOS)
        self.path_pub = self.create_publisher(Path, "~/keyframes", LATCHED_QOS)
        self.create_service(Trigger, "~/reload_map", self._reload_map)
        self.create_service(SetBool, "~/set_enabled", self._set_enabled)
        self.create_service(Trigger, "~/reset_sequence", self._reset_sequence)
        self.add_post_set_parameters_callback(self._apply_parameters)

    # ---------------------------------------------------------------- configure / activate

    def load(self) -> None:
        cfg = self.config
        self.load_model()
        self.map = self._read_map()
        faiss.omp_set_num_threads(1)  # one query at a time: FAISS's spinning threads only add latency
        self.get_logger().info(
            f"model {self.bundle.summary()} on {self.backend.describe()}; map {cfg['map.dir']}: "
            f"{len(self.map)} keyframes in frame '{self.map.frame_id}'; "
            f"similarity threshold {self.threshold():.3f}"
        )
        self.publish_map(self.map, self.path_pub, self.map_marker_pub)
        self._sequence_settings(cfg)  # refuse bad sequence.* values at configure, in one line
        if cfg["sequence.odom_topic"]:
            self._odom_sub = self.create_subscription(
                Odometry, str(cfg["sequence.odom_topic"]), self.odometry.add, 50
            )

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
        self.mailbox = Mailbox()
        self.worker = threading.Thread(target=self._work, name="vpr_localizer_worker", daemon=True)
        self.worker.start()
        return super().on_activate(state)

    def on_deactivate(self, state):
        result = super().on_deactivate(state)
        self.mailbox.close()
        if self.worker is not None:
            self.worker.join(timeout=10.0)
            self.worker = None
        return result

    def release(self) -> None:
        self.backend = None
        self.map = None
        self.tracker = None
        if self._odom_sub is not None:
            self.destroy_subscription(self._odom_sub)
            self._odom_sub = None

    def threshold(self, cfg: dict[str, P.Value] | None = None) -> float:
        cfg = self.config if cfg is None else cfg
        return resolve_threshold(float(cfg["search.similarity_threshold"]), self.bundle.similarity_threshold)

    def _apply_parameters(self, changes) -> None:
        """Changes (validated before they were accepted) go in as a new dict swapped in whole: the
        worker reads ``self.config`` once per frame, so it never sees half of one set_parameters
        call, and needs no lock."""
        updated = dict(self.config)
        updated.update({change.name: change.value for change in changes if change.name in updated})
        self.config = updated
        if any(change.name.startswith("sequence.") for change in changes):
            self._sequence_stale = True

    # ---------------------------------------------------------------- frames

    def on_image(self, msg) -> None:
        if not self.enabled:
            self.counts["paused"] += 1
            return
        self.mailbox.put(msg)

    def _work(self) -> None:
        mailbox = self.mailbox
        while not mailbox.closed:
            item = mailbox.take()
            if item is None:
                continue
            msg, received = item
            cfg = self.config  # one snapshot per frame (see _apply_parameters)
            max_rate = float(cfg["input.max_rate_hz"])
            if max_rate > 0 and received - self._last_processed < 1.0 / max_rate:
                self.counts["throttled"] += 1
                continue
            self._last_processed = received
            try:
                self._process(msg, received, cfg)
            except ImageConversionError as exc:  # the input's fault: counted, logged, no answer
                self.counts["invalid"] += 1
                self._outcome = ("invalid", str(exc))
                self.get_logger().warning(f"frame dropped: {exc}", throttle_duration_sec=5.0)
            except Exception as exc:  # a fault of this node: the traceback once, then a count
                self.counts["failed"] += 1
                self._outcome = ("failed", f"{type(exc).__name__}: {exc}")
                if self.counts["failed"] == 1:
                    self.get_logger().error(f"frame failed:\n{traceback.format_exc()}")
                else:
                    self.get_logger().error(
                        f"frame failed: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0
                    )

    def _tracker(self, place_map: PlaceMap, cfg: dict[str, P.Value]) -> SequenceTracker | None:
        """The sequence filter for this frame: rebuilt after a change of its parameters or a map
        reload, its history cleared after ~/reset_sequence (both on this worker thread, which alone
        uses it); None while sequence.enabled is false or its parameters do not fit together
        (logged once)."""
        if self._sequence_reset:
            self._sequence_reset = False
            if self.tracker is not None:
                self.tracker.reset()
        if self._sequence_stale:
            self._sequence_stale = False
            self.tracker = None
            self.sequence_state = "off"
            if cfg["sequence.enabled"]:
                try:
                    settings = self._sequence_settings(cfg)
                except InputError as exc:
                    self.sequence_state = f"off: {exc}"
                    self.get_logger().error(f"sequence filter off: {exc}")
                else:
                    self.tracker = SequenceTracker(place_map.positions, place_map.orientations, settings)
        return self.tracker

    def _process(self, msg, received: float, cfg: dict[str, P.Value]) -> None:
        rgb = message_to_rgb(msg)
        t0 = time.monotonic()
        descriptor = self.backend.embed([rgb])
        self.backend_latency.add(time.monotonic() - t0)
        with self._map_lock:
            place_map = self.map
        k = int(cfg["search.top_k"])
        sims, ids = place_map.search(descriptor, k)
        ranked, scores = ids[0], sims[0]
        tracker = self._tracker(place_map, cfg)
        filtered = None
        if tracker is not None:
            stamp = stamp_ns(msg.header)
            odometry = self.odometry.nearest(stamp) if cfg["sequence.odom_topic"] else None
            score = cosine_scorer(place_map.descriptors, descriptor[0])
            answer = tracker.step(stamp, ids[0], sims[0], score, odometry)
            self.sequence_state = (
                f"{'filtering' if answer.filtered else 'collecting'}: {answer.frames} frames, "
                f"{'odometry' if odometry is not None else 'speed range'}"
            )
            if answer.filtered:
                ranked, scores = tracker.filter.ranked_answer(answer, ids[0], score)
                filtered = (ranked, scores)
        estimate = estimate_pose(
            scores,
            ranked,
            place_map,
            method=str(cfg["estimate.method"]),
            sigma_m=float(cfg["estimate.sigma_m"]),
            similarity_threshold=self.threshold(cfg),
            min_position_std_m=float(cfg["estimate.min_position_std_m"]),
        )
        rows = self._table(place_map, ids[0], sims[0], estimate.accepted, filtered=False)
        if filtered is not None:
            rows = np.concatenate([rows, self._table(place_map, *filtered, estimate.accepted, filtered=True)])
        header = Header(stamp=msg.header.stamp, frame_id=place_map.frame_id)
        if estimate.accepted:
            self.pose_pub.publish(messages.pose_with_covariance(header, estimate))
        self.match_pub.publish(messages.match_cloud(header, rows))
        if cfg["output.publish_markers"]:
            self.marker_pub.publish(messages.match_markers(header, estimate, rows))
        self.latency.add(time.monotonic() - received)
        self.counts["processed"] += 1
        self.last_similarity = float(estimate.similarity)
        now = time.monotonic()
        self._first_answer = self._first_answer or now
        self._outcome = ("accepted" if estimate.accepted else "refused", "")
        if estimate.accepted:
            self.counts["accepted"] += 1
            self.last_accept = now
        self.get_logger().debug(
            f"frame {stamp_ns(msg.header)}: keyframe {estimate.keyframe_id} sim {estimate.similarity:.3f} "
            f"{'accepted' if estimate.accepted else 'unknown place'}"
        )

    @staticmethod
    def _table(place_map: PlaceMap, ids: np.ndarray, sims: np.ndarray, accepted: bool, filtered: bool):
        safe = np.clip(ids, 0, None)  # -1 = fewer keyframes than k; table_rows leaves those out
        return match_table.table_rows(
            ids, sims, place_map.positions[safe], place_map.orientations[safe], accepted, filtered
        )

    # ---------------------------------------------------------------- services

    def _reload_map(self, request, response):
        if self.backend is None:
            response.success, response.message = False, "not configured"
            return response
        try:
            fresh = self._read_map()
        except InputError as exc:
            response.success, response.message = False, f"kept the current map: {exc}"
            self.get_logger().error(response.message)
            return response
        with self._map_lock:
            self.map = fresh
        self._sequence_stale = True
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
                "frames dropped (newer frame arrived)": self.mailbox.dropped,
                "frames throttled": self.counts["throttled"],
                "frames ignored while paused": self.counts["paused"],
                "frames invalid": self.counts["invalid"],
                "frames failed (node errors)": self.counts["failed"],
                "latency p50 ms": self.latency.percentile_ms(50),
                "latency p99 ms": self.latency.percentile_ms(99),
                "backend latency p50 ms": self.backend_latency.percentile_ms(50),
                "last similarity": self.last_similarity,
                "accepted ratio": self.counts["accepted"] / processed,
                "map keyframes": len(self.map),
                "sequence filter": self.sequence_state,
                "model": self.bundle.content_hash[:19],
            },
        )


def main(args: list[str] | None = None) -> int:
    return run(Localizer, args, on_exit=lambda node: None)


if __name__ == "__main__":
    raise SystemExit(main())
