"""rosbag2 recordings of the synthetic traverses, as a robot with a camera and odometry would make.

Layout (one bag per traverse, database and query alike; a traverse without frames gets none)::

    root/bags/<traverse.name>/metadata.yaml
    root/bags/<traverse.name>/<traverse.name>.mcap     (storage="mcap", default)
    root/bags/<traverse.name>/<traverse.name>.db3      (storage="sqlite3")

Written with ``rosbags`` (rosbag2 format version 9, CDR, message definitions from the ROS 2 Kilted
typestore embedded in the bag). Per frame, three messages share the frame's stamp, which is both
the header stamp and the bag timestamp (``traverse.stamps_ns``):

- ``/camera/image_raw`` sensor_msgs/msg/Image: frame_id ``camera``, encoding ``rgb8``,
  is_bigendian 0, step = 3 * width, the rendered pixels row by row.
- ``/camera/camera_info`` sensor_msgs/msg/CameraInfo: frame_id ``camera``, ``plumb_bob`` with
  d = [0, 0, 0, 0, 0], K = [fx, 0, cx; 0, fx, cy; 0, 0, 1], R = I, P = [K | 0], no binning or ROI.
- ``/odom`` nav_msgs/msg/Odometry: frame_id ``map``, child_frame_id ``base_link``; pose = body
  (x, y, 0) in the map frame with the quaternion of ``yaw`` about +z; twist in ``base_link`` from
  central differences of the poses over the stamps (one-sided at the ends, zero for a single frame);
  both covariances diagonal, ``ODOM_VARIANCE`` on all six axes (exact poses, but a zero covariance
  makes some fusion nodes divide by zero).

Offered QoS of every topic: reliable, volatile, keep-last 10 — what a camera driver on default QoS
offers. Replayed with ``ros2 bag play``, a reliable publisher serves both reliable subscribers and
the best-effort (sensor-data) subscribers of the localization node; best effort would serve only the
latter. metadata.yaml ``custom_data`` carries the world and traverse description (``synth.*`` keys)
so a replay evaluation can tell a night query from a day one without a side file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from training.synth.traverse import Traverse, WorldInfo
from training.synth.writers.common import FrameWriter, yaw_quaternion

IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
ODOM_TOPIC = "/odom"
CAMERA_FRAME = "camera"
MAP_FRAME = "map"
BODY_FRAME = "base_link"
ODOM_VARIANCE = 1e-4  # (1 cm)^2 and (0.01 rad)^2

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}

_DEFAULT_TIME = QosTime(0, 0)  # rmw "unspecified": the middleware default (infinite)
RELIABLE_QOS = Qos(
    history=QosHistory.KEEP_LAST,
    depth=10,
    reliability=QosReliability.RELIABLE,
    durability=QosDurability.VOLATILE,
    deadline=_DEFAULT_TIME,
    lifespan=_DEFAULT_TIME,
    liveliness=QosLiveliness.AUTOMATIC,
    liveliness_lease_duration=_DEFAULT_TIME,
    avoid_ros_namespace_conventions=False,
)


class RosbagWriter(FrameWriter):
    """Writes one bag per traverse; only the bag of the current traverse is open at any time."""

    subdir = "bags"

    def __init__(self, root: Path, world: WorldInfo, storage: str = "mcap") -> None:
        super().__init__(root, world)
        if storage not in STORAGES:
            raise ValueError(f"RosbagWriter: storage must be one of {sorted(STORAGES)}, got {storage!r}")
        self.storage = STORAGES[storage]
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self._bag: _TraverseBag | None = None

    def _write_frame(self, t: int, i: int, rgb: np.ndarray, jpeg: bytes) -> None:
        if self._bag is None or self._bag.t != t:
            self._close_bag()
            self._bag = _TraverseBag(self, t)
        self._bag.write(i, rgb)

    def _finish(self) -> None:
        self._close_bag()

    def _close_bag(self) -> None:
        if self._bag is not None:
            self._bag.close()
            self._bag = None


class _TraverseBag:
    """The open bag of one traverse with the per-traverse data its messages need."""

    def __init__(self, owner: RosbagWriter, t: int) -> None:
        self.t = t
        self.traverse = owner.world.traverses[t]
        self.types = owner.typestore.types
        self.serialize = owner.typestore.serialize_cdr
        self.camera_info_fields = _camera_info_fields(owner.world, self.types)
        self.quaternions = yaw_quaternion(self.traverse.yaw)
        self.body_velocity, self.yaw_rate = body_twist(self.traverse)
        self.writer = Writer(
            owner.root / self.traverse.name, version=Writer.VERSION_LATEST, storage_plugin=owner.storage
        )
        for key, value in _custom_data(owner.world, self.traverse).items():
            self.writer.set_custom_data(key, value)
        self.writer.open()
        self.connections = {
            topic: self.writer.add_connection(
                topic, msgtype, typestore=owner.typestore, offered_qos_profiles=[RELIABLE_QOS]
            )
            for topic, msgtype in (
                (IMAGE_TOPIC, "sensor_msgs/msg/Image"),
                (CAMERA_INFO_TOPIC, "sensor_msgs/msg/CameraInfo"),
                (ODOM_TOPIC, "nav_msgs/msg/Odometry"),
            )
        }

    def write(self, i: int, rgb: np.ndarray) -> None:
        stamp_ns = int(self.traverse.stamps_ns[i])
        messages = {
            IMAGE_TOPIC: self._image(stamp_ns, rgb),
            CAMERA_INFO_TOPIC: self.types["sensor_msgs/msg/CameraInfo"](
                header=self._header(stamp_ns, CAMERA_FRAME), **self.camera_info_fields
            ),
            ODOM_TOPIC: self._odometry(stamp_ns, i),
        }
        for topic, msg in messages.items():
            connection = self.connections[topic]
            self.writer.write(connection, stamp_ns, self.serialize(msg, connection.msgtype))

    def close(self) -> None:
        self.writer.close()

    def _header(self, stamp_ns: int, frame_id: str) -> object:
        sec, nanosec = divmod(stamp_ns, 1_000_000_000)
        stamp = self.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
        return self.types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def _image(self, stamp_ns: int, rgb: np.ndarray) -> object:
        height, width, _ = rgb.shape
        return self.types["sensor_msgs/msg/Image"](
            header=self._header(stamp_ns, CAMERA_FRAME),
            height=height,
            width=width,
            encoding="rgb8",
            is_bigendian=0,
            step=3 * width,
            data=np.ascontiguousarray(rgb).reshape(-1),
        )

    def _odometry(self, stamp_ns: int, i: int) -> object:
        types = self.types
        x, y = (float(v) for v in self.traverse.xy[i])
        qx, qy, qz, qw = (float(v) for v in self.quaternions[i])
        vx, vy = (float(v) for v in self.body_velocity[i])
        covariance = np.diag(np.full(6, ODOM_VARIANCE)).reshape(-1)
        pose = types["geometry_msgs/msg/Pose"](
            position=types["geometry_msgs/msg/Point"](x=x, y=y, z=0.0),
            orientation=types["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
        )
        twist = types["geometry_msgs/msg/Twist"](
            linear=types["geometry_msgs/msg/Vector3"](x=vx, y=vy, z=0.0),
            angular=types["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=float(self.yaw_rate[i])),
        )
        return types["nav_msgs/msg/Odometry"](
            header=self._header(stamp_ns, MAP_FRAME),
            child_frame_id=BODY_FRAME,
            pose=types["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=covariance),
            twist=types["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=covariance),
        )


def body_twist(traverse: Traverse) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame velocity (vx, vy) [N, 2] in m/s and yaw rate [N] in rad/s from the poses.

    Central differences over the (possibly uneven) stamps, one-sided at the ends; the yaw is
    unwrapped first so a heading crossing +-pi does not read as a full turn.
    """
    n = len(traverse)
    if n < 2:
        return np.zeros((n, 2)), np.zeros(n)
    seconds = (traverse.stamps_ns - traverse.stamps_ns[0]).astype(np.float64) * 1e-9
    world_velocity = np.gradient(traverse.xy, seconds, axis=0)
    yaw_rate = np.gradient(np.unwrap(traverse.yaw), seconds)
    cos, sin = np.cos(traverse.yaw), np.sin(traverse.yaw)
    vx = cos * world_velocity[:, 0] + sin * world_velocity[:, 1]
    vy = -sin * world_velocity[:, 0] + cos * world_velocity[:, 1]
    return np.stack([vx, vy], axis=1), yaw_rate


def _camera_info_fields(world: WorldInfo, types: dict) -> dict:
    """The CameraInfo fields except the header: an ideal pinhole with square pixels."""
    cam = world.camera
    fx, cx, cy = float(cam.fx), float(cam.cx), float(cam.cy)
    k = np.array([fx, 0.0, cx, 0.0, fx, cy, 0.0, 0.0, 1.0])
    p = np.array([fx, 0.0, cx, 0.0, 0.0, fx, cy, 0.0, 0.0, 0.0, 1.0, 0.0])
    roi = types["sensor_msgs/msg/RegionOfInterest"](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    return {
        "height": cam.height,
        "width": cam.width,
        "distortion_model": "plumb_bob",
        "d": np.zeros(5),
        "k": k,
        "r": np.eye(3).reshape(-1),
        "p": p,
        "binning_x": 0,
        "binning_y": 0,
        "roi": roi,
    }


def _custom_data(world: WorldInfo, traverse: Traverse) -> dict[str, str]:
    """String key-values for metadata.yaml describing where the recording comes from."""
    return {
        "synth.city": world.city,
        "synth.seed": str(world.seed),
        "synth.preset": world.preset,
        "synth.traverse": traverse.name,
        "synth.route": traverse.route,
        "synth.condition": traverse.condition,
        "synth.role": traverse.role,
    }
