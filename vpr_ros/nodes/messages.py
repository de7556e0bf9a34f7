"""ROS messages the nodes publish, built from plain arrays (one place for frames, stamps, colours)."""

from __future__ import annotations

from typing import Any

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Path
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from vpr_ros.io import match_table


def pose_msg(position: np.ndarray, orientation: np.ndarray) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
    o = pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in orientation)
    return pose


def pose_with_covariance(header: Header, estimate: Any) -> PoseWithCovarianceStamped:
    msg = PoseWithCovarianceStamped(header=header)
    msg.pose.pose = pose_msg(estimate.position, estimate.orientation)
    msg.pose.covariance = [float(v) for v in np.asarray(estimate.covariance, np.float64).reshape(36)]
    return msg


def match_cloud(header: Header, rows: np.ndarray) -> PointCloud2:
    fields = match_table.cloud_fields(rows)
    specs = fields.pop("fields")
    msg = PointCloud2(header=header, **{k: v for k, v in fields.items() if k != "data"})
    msg.fields = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in specs]
    msg.data = fields["data"]
    return msg


# The map layers are for looking at in RViz: past this many keyframes every n-th one is drawn.
# Building one Python message object per keyframe took seconds for 60,000 keyframes and held the
# interpreter lock from the frames meanwhile (a map reload); 5,000 draw a 5 km route at 1 m.
MAX_DRAWN_KEYFRAMES = 5000


def drawn(count: int) -> slice:
    """Every n-th of ``count`` keyframes, so at most :data:`MAX_DRAWN_KEYFRAMES` are drawn."""
    return slice(None, None, max(1, -(-count // MAX_DRAWN_KEYFRAMES)))


def keyframe_path(header: Header, positions: np.ndarray, orientations: np.ndarray) -> Path:
    """The keyframes as a nav_msgs/Path, thinned to :data:`MAX_DRAWN_KEYFRAMES`."""
    step = drawn(len(positions))
    path = Path(header=header)
    path.poses = [
        PoseStamped(header=header, pose=pose_msg(p, q)) for p, q in zip(positions[step], orientations[step])
    ]
    return path


def _colour(r: float, g: float, b: float, a: float = 1.0) -> ColorRGBA:
    return ColorRGBA(r=r, g=g, b=b, a=a)


def map_markers(header: Header, positions: np.ndarray, namespace: str = "map") -> MarkerArray:
    """The keyframes as one sphere list (grey), thinned to :data:`MAX_DRAWN_KEYFRAMES`."""
    marker = Marker(header=header, ns=namespace, id=0, type=Marker.SPHERE_LIST, action=Marker.ADD)
    marker.pose.orientation.w = 1.0
    marker.scale.x = marker.scale.y = marker.scale.z = 0.6
    marker.color = _colour(0.6, 0.6, 0.6, 0.8)
    marker.points = [
        Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in positions[drawn(len(positions))]
    ]
    return MarkerArray(markers=[marker])


def match_markers(header: Header, estimate: Any, candidates: np.ndarray) -> MarkerArray:
    """The accepted estimate (a green arrow) and lines to the candidate keyframes, brighter for
    higher similarity. A refused frame has no pose: both markers are deleted, so RViz does not keep
    showing the last accepted match as if it were current."""
    if not estimate.accepted:
        return MarkerArray(
            markers=[Marker(header=header, ns="match", id=i, action=Marker.DELETE) for i in (0, 1)]
        )
    arrow = Marker(header=header, ns="match", id=0, type=Marker.ARROW, action=Marker.ADD)
    arrow.pose = pose_msg(estimate.position, estimate.orientation)
    arrow.scale.x, arrow.scale.y, arrow.scale.z = 3.0, 0.6, 0.6
    arrow.color = _colour(0.1, 0.8, 0.2)
    lines = Marker(header=header, ns="match", id=1, type=Marker.LINE_LIST, action=Marker.ADD)
    lines.pose.orientation.w = 1.0
    lines.scale.x = 0.15
    origin = Point(
        x=float(estimate.position[0]), y=float(estimate.position[1]), z=float(estimate.position[2])
    )
    for row in candidates:
        level = float(np.clip(row["similarity"], 0.0, 1.0))
        lines.points += [origin, Point(x=float(row["x"]), y=float(row["y"]), z=float(row["z"]))]
        lines.colors += [_colour(level, level, 0.2)] * 2
    return MarkerArray(markers=[arrow, lines])
