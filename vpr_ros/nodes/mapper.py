"""``vpr_mapper``: drive the route once, get a place map.

Subscribes to ``image`` (raw, or ``<image>/compressed``) and to the robot's pose: ``odom``
(nav_msgs/Odometry) or ``pose`` (geometry_msgs/PoseStamped), paired by stamp
(``vpr_ros.io.pose_sync``). Keeps a keyframe every ``mapper.keyframe_min_distance_m`` or
``mapper.keyframe_min_rotation_deg``, embeds it and adds it with the robot's (base) pose to the
map (``vpr_ros.mapping.map_builder``: the same code path as ``vpr-build-map``) as one session whose
camera is ``frames.camera_extrinsic``. With ``map.append`` the session is added to the map already
at ``map.dir`` (same model and frame, checked). A map frame that is an odometry frame is warned
about once.
Publishes the keyframe trajectory on ``~/keyframes`` (nav_msgs/Path, latched) for RViz. The map is
saved atomically on ``~/save_map`` (std_srvs/Trigger) and on shutdown (SIGINT/SIGTERM): a crash
mid-save leaves the previous map whole.

The callbacks only pair images with poses (cheap); a worker thread offers the pairs to the builder,
which decodes and embeds the keyframes, so an embedding never holds up the executor (poses, images,
``~/save_map``, the keyframe timer). The builder is shared by the worker, the services, the timer
and diagnostics under one lock; a save first drains the pairs still queued.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path as FsPath
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry, Path
from rclpy.qos import QoSProfile
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from vpr_ros.errors import InputError
from vpr_ros.geometry import parse_extrinsic
from vpr_ros.io.image_codec import message_to_rgb
from vpr_ros.io.pose_sync import ImagePosePairer, Pair, stamp_ns
from vpr_ros.io.tf_buffer import ImageTransformPairer, TransformBuffer
from vpr_ros.mapping.keyframes import KeyframeSelector
from vpr_ros.mapping.map_builder import MapBuilder
from vpr_ros.mapping.map_files import check_target
from vpr_ros.mapping.place_map import PlaceMap, Session, odometry_frame_warning
from vpr_ros.nodes import params as P
from vpr_ros.nodes.common import CAMERA_QOS, LATCHED_QOS, VprNode, run
from vpr_ros.nodes.tf_io import TF_QOS, TF_STATIC_QOS, tf_message_type

POSE_DEPTH = 50  # poses are small and come faster than images: keep enough to pair every frame
# Mapping embeds only keyframes, so it keeps up on average; a short queue rides out the stall of
# one embedding instead of losing the frame that should have been the next keyframe.
IMAGE_DEPTH = 10
# ~/keyframes and ~/markers carry the whole map (building them is O(keyframes)), so they are
# refreshed by a timer rather than on every new keyframe in the image callback.
KEYFRAMES_PERIOD_S = 0.5
# Paired frames waiting for the worker: seconds of camera frames while one keyframe is embedded.
# Beyond it the newest pairs are dropped and counted (the next frame becomes the keyframe).
PAIR_QUEUE = 60


class Mapper(VprNode):
    PARAMS = P.MAPPER
    IMAGE_QOS = QoSProfile(depth=IMAGE_DEPTH, reliability=CAMERA_QOS.reliability, history=CAMERA_QOS.history)
    DIAGNOSTIC_TASK = "mapping"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("vpr_mapper", **kwargs)
        self.builder: MapBuilder | None = None
        self.pairer: ImagePosePairer | None = None
        self.frame_id = ""
        self.frame_refusal = ""  # why poses are not used (an appended map in another frame)
        self.saved_to = ""
        self.camera_extrinsic = ()
        self.appended_frame = ""  # with map.append: the frame of the map at map.dir
        self.invalid_poses = 0
        self._keyframes_changed = False
        self._pose_subs: list = []
        self._builder_lock = threading.Lock()
        self._pairs: queue.Queue[Pair | None] = queue.Queue(maxsize=PAIR_QUEUE)
        self._worker: threading.Thread | None = None
        self.dropped_busy = 0
        self.path_pub = self.create_publisher(Path, "~/keyframes", LATCHED_QOS)
        self.marker_pub = self.create_publisher(MarkerArray, "~/markers", LATCHED_QOS)
        self.create_service(Trigger, "~/save_map", self._save_service)
        self.create_service(Trigger, "~/reset", self._reset_service)
        self.create_timer(KEYFRAMES_PERIOD_S, self._publish_keyframes)

    # ---------------------------------------------------------------- configure / activate

    def load(self) -> None:
        cfg = self.config
        out = FsPath(str(cfg["map.dir"])).expanduser()
        if cfg["map.append"] and cfg["map.overwrite"]:
            raise InputError("parameters map.append and map.overwrite exclude each other")
        if not cfg["map.append"]:
            check_target(out, cfg["map.overwrite"], f"map.dir {out}", "set map.overwrite")  # save's checks
        try:
            parse_extrinsic(cfg["frames.camera_extrinsic"])
        except InputError as exc:
            raise InputError(f"parameter frames.camera_extrinsic: {exc}") from None
        self.camera_extrinsic = tuple(cfg["frames.camera_extrinsic"])
        self.load_model()
        self.appended_frame = ""
        if cfg["map.append"]:
            self.appended_frame = self._existing_map().frame_id  # read once: model and frame checked
            wanted = str(cfg["frames.map"])
            if wanted and wanted != self.appended_frame:
                raise InputError(
                    f"map.append: the map at {out} is in frame '{self.appended_frame}', not '{wanted}'"
                )
        if cfg["input.pose_type"] == "tf":
            tf_message_type("input.pose_type 'tf'")  # refuse at configure when the type is missing
            target, base = str(cfg["frames.map"]) or "map", str(cfg["frames.base"])
            self.pairer = ImageTransformPairer(TransformBuffer(), target, base)
        else:
            self.pairer = ImagePosePairer(float(cfg["mapper.sync_tolerance_s"]))
        self.builder = None
        how = "a new session of " if cfg["map.append"] else ""
        self.get_logger().info(
            f"model {self.bundle.summary()} on {self.backend.describe()}; map -> {how}{out}"
        )

    def _existing_map(self) -> PlaceMap:
        """The map at map.dir that map.append adds to, checked to be of the loaded model."""
        out = FsPath(str(self.config["map.dir"])).expanduser()
        return PlaceMap.load(
            out, expected_model_hash=self.bundle.content_hash, expected_dim=self.bundle.descriptor_dim
        )

    def on_activate(self, state):
        pose_type = self.config["input.pose_type"]
        if pose_type == "tf":
            message = tf_message_type("input.pose_type 'tf'")
            self._pose_subs = [
                self.create_subscription(
                    message, "/tf", self._receive_tf, TF_QOS, callback_group=self.intake_group
                ),
                self.create_subscription(
                    message,
                    "/tf_static",
                    self._receive_tf_static,
                    TF_STATIC_QOS,
                    callback_group=self.intake_group,
                ),
            ]
            self.get_logger().info(f"poses of '{self.pairer.source}' in '{self.pairer.target}' from /tf")
        else:
            odometry = pose_type == "odometry"
            topic = self.resolve_topic_name("odom" if odometry else "pose")
            self._pose_subs = [
                self.create_subscription(
                    Odometry if odometry else PoseStamped,
                    topic,
                    self._receive_pose,
                    _pose_qos(),
                    callback_group=self.intake_group,
                )  # fmt: skip
            ]
            self.get_logger().info(
                f"poses from {topic} ({'nav_msgs/Odometry' if odometry else 'PoseStamped'})"
            )
        self._worker = threading.Thread(target=self._offer_pairs, name="vpr_mapper_worker", daemon=True)
        self._worker.start()
        return super().on_activate(state)

    def on_deactivate(self, state):
        for subscription in self._pose_subs:
            self.destroy_subscription(subscription)
        self._pose_subs = []
        result = super().on_deactivate(state)
        self.stop_worker()
        return result

    def stop_worker(self) -> None:
        if self._worker is not None:
            self._pairs.put(None)  # after the queued pairs: they are offered first
            self._worker.join(timeout=60.0)
            self._worker = None

    def release(self) -> None:
        self.backend = None
        self.builder = None

    # ---------------------------------------------------------------- input

    def _receive_pose(self, msg: Odometry | PoseStamped) -> None:
        pose = msg.pose.pose if isinstance(msg, Odometry) else msg.pose
        if not self.frame_id:
            self._set_frame(str(self.config["frames.map"]) or msg.header.frame_id or "map")
        if self.frame_refusal:
            return
        p, q = pose.position, pose.orientation
        try:
            pairs = self.pairer.add_pose(stamp_ns(msg.header), [p.x, p.y, p.z], [q.x, q.y, q.z, q.w])
        except InputError as exc:  # NaN before a filter initialises: skipped, as vpr-build-map does
            self.invalid_poses += 1
            self.get_logger().warning(f"pose skipped: {exc}", throttle_duration_sec=5.0)
            return
        self._handle(pairs)

    def _receive_tf(self, msg) -> None:
        self._add_transforms(msg, static=False)

    def _receive_tf_static(self, msg) -> None:
        self._add_transforms(msg, static=True)

    def _add_transforms(self, msg, static: bool) -> None:
        if not self.frame_id:
            self._set_frame(self.pairer.target)
        if self.frame_refusal:
            return
        rejected = self.pairer.buffer.rejected
        pairs = self.pairer.add_transforms(msg, static)
        if self.pairer.buffer.rejected > rejected:
            self.invalid_poses += self.pairer.buffer.rejected - rejected
            self.get_logger().warning(
                f"transform skipped: {self.pairer.buffer.first_rejection}", throttle_duration_sec=5.0
            )
        self._handle(pairs)

    def _set_frame(self, frame_id: str) -> None:
        """The map frame, known with the first pose: warned about when it is an odometry frame,
        refused when an appended map lives in another one."""
        self.frame_id = frame_id
        if (warning := odometry_frame_warning(frame_id)) is not None:
            self.get_logger().warning(warning)
        if self.appended_frame and self.appended_frame != frame_id:
            self.frame_refusal = (
                f"poses are in frame '{frame_id}' but the map appended to is in '{self.appended_frame}': "
                "nothing is added (sessions of one map share its frame)"
            )
            self.get_logger().error(self.frame_refusal)

    def on_image(self, msg, camera: int) -> None:
        if self.frame_refusal:
            return
        self._handle(self.pairer.add_image(stamp_ns(msg.header), msg))

    def _handle(self, pairs: list[Pair]) -> None:
        """Hand the paired frames to the worker (never blocks: a full queue drops and counts)."""
        for pair in pairs:
            try:
                self._pairs.put_nowait(pair)
            except queue.Full:
                self.dropped_busy += 1
                self.get_logger().warning(
                    "frames dropped: embedding keyframes is slower than the camera", throttle_duration_sec=5.0
                )

    def _offer_pairs(self) -> None:
        """The worker: offer each pair to the builder, until the None put by on_deactivate."""
        while (pair := self._pairs.get()) is not None:
            with self._builder_lock:
                self._offer(pair)

    def _offer(self, pair: Pair) -> None:
        added = self._builder().offer(  # an undecodable keyframe is logged and counted there
            pair.stamp_ns,
            lambda msg=pair.payload: message_to_rgb(msg),
            pair.position,
            pair.orientation,
            f"{self.image_topic}@{pair.stamp_ns}",
        )
        self._keyframes_changed |= added

    def _builder(self) -> MapBuilder:
        if self.builder is None:  # the map frame is known once the first pose arrived
            if self.config["map.append"]:
                place_map = self._existing_map()
            else:
                place_map = PlaceMap(
                    self.bundle.descriptor_dim,
                    self.bundle.content_hash,
                    frame_id=self.frame_id or "map",
                    index=str(self.config["map.index"]),
                    model_summary=self.bundle.summary(),
                )
            place_map.add_session(Session(self.image_topic, self.camera_extrinsic))
            selector = KeyframeSelector(
                float(self.config["mapper.keyframe_min_distance_m"]),
                float(self.config["mapper.keyframe_min_rotation_deg"]),
            )
            self.builder = MapBuilder(self.backend, place_map, selector, batch_size=1)
        return self.builder

    # ---------------------------------------------------------------- outputs and services

    def _publish_keyframes(self) -> None:
        with self._builder_lock:
            if not self._keyframes_changed or self.builder is None:
                return
            self._keyframes_changed = False
            self.publish_map(self.builder.place_map, self.path_pub, self.marker_pub)

    def save(self) -> str:
        """Save the map atomically, after the pairs still queued; returns a one-line summary (raises
        InputError on failure)."""
        with self._builder_lock:
            while True:
                try:
                    pair = self._pairs.get_nowait()
                except queue.Empty:
                    break
                if pair is not None:
                    self._offer(pair)
            return self._save()

    def _save(self) -> str:
        if self.builder is None or len(self.builder.place_map) == 0 and not self.builder.summary()["pending"]:
            raise NothingToSave("no keyframes yet: nothing to save")
        self.builder.flush()
        out = FsPath(str(self.config["map.dir"])).expanduser()
        self.builder.place_map.save(out, overwrite=True)  # configure checked that map.dir may be written
        self.saved_to = str(out)
        summary = self.builder.summary()
        sessions = len(self.builder.place_map.sessions)
        added = f"{summary['added']} keyframes added, " if sessions > 1 else ""
        return (
            f"saved {added}{summary['keyframes']} keyframes ({summary['travelled_m']:.1f} m, {sessions} "
            f"session{'s' * (sessions > 1)}) to {out}"
        )

    def _save_service(self, request, response):
        try:
            response.message = self.save()
            response.success = True
        except (InputError, OSError) as exc:
            response.success, response.message = False, f"map not saved: {exc}"
        self.get_logger().info(response.message)
        return response

    def _reset_service(self, request, response):
        with self._builder_lock:
            self.builder = None
        response.success, response.message = True, "in-memory keyframes cleared (nothing deleted on disk)"
        return response

    def status(self) -> tuple[bytes, str, dict[str, Any]]:
        if self.backend is None:
            return DiagnosticStatus.ERROR, "not configured", {}
        level, message = (
            (DiagnosticStatus.ERROR, self.frame_refusal)
            if self.frame_refusal
            else (DiagnosticStatus.OK, "mapping")
        )
        with self._builder_lock:
            summary = (
                self.builder.summary()
                if self.builder is not None
                else {"keyframes": 0, "travelled_m": 0.0, "undecodable": 0}
            )
        return (
            level,
            message,
            {
                "backend": self.backend.describe(),
                "frames received": self.received,
                "frames paired": self.pairer.paired,
                "frames without pose": self.pairer.dropped_no_pose,
                "poses invalid": self.invalid_poses,
                "frames undecodable": summary["undecodable"],
                "frames dropped (embedding busy)": self.dropped_busy,
                "keyframes": summary["keyframes"],
                "travelled m": float(summary["travelled_m"]),
                "saved to": self.saved_to,
            },
        )


def _pose_qos() -> QoSProfile:
    """Best effort matches reliable and best-effort publishers alike; deeper than the camera's."""
    return QoSProfile(depth=POSE_DEPTH, reliability=CAMERA_QOS.reliability, history=CAMERA_QOS.history)


class NothingToSave(InputError):
    """~/save_map or shutdown before the first keyframe."""


def _save_on_exit(node: Mapper) -> None:
    if node.backend is None:  # never configured
        return
    try:
        print(node.save(), flush=True)
    except NothingToSave:
        return
    except (InputError, OSError) as exc:
        print(f"vpr_mapper: map not saved: {exc}", flush=True)


def main(args: list[str] | None = None) -> int:
    return run(Mapper, args, on_exit=_save_on_exit)


if __name__ == "__main__":
    raise SystemExit(main())
