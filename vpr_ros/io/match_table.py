"""The localizer's per-frame match output as a ``sensor_msgs/PointCloud2`` "match table".

One point per top-k candidate, fields (all little-endian)::

    x, y, z              float32  the candidate keyframe's position in the map frame
    qx, qy, qz, qw       float32  its orientation
    similarity           float32  cosine similarity of the query and keyframe descriptors
    keyframe_id          uint32   id in the place map (keyframes.csv)
    rank                 uint8    0 = best match
    accepted             uint8    1 when this frame was localized (same value on every row)
    filtered             uint8    0 = the frame's own top-k; 1 = the sequence filter's ranking
                                  (rank 0 is its answer; its similarity there is the filter's
                                  confidence), present only while the filter answers

The header carries the query image's stamp and the map frame. A frame whose best similarity is
below the threshold is published too, with ``accepted = 0``, so "unknown place" is explicit and
recorded. Why PointCloud2 and not a custom message: it is stamped, self-describing (named, typed
fields), has wheels on PyPI (custom interfaces need a rosidl build), is readable by ``rosbags`` and
numpy without generated code, and RViz draws the candidates coloured by similarity
(``ROS_NOTES.md`` §7.2). This module builds and parses the fields without importing rclpy, so the
offline evaluator reads recorded tables with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vpr_ros.errors import InputError

POINT_DTYPE = np.dtype(
    [
        ("x", "<f4"),
        ("y", "<f4"),
        ("z", "<f4"),
        ("qx", "<f4"),
        ("qy", "<f4"),
        ("qz", "<f4"),
        ("qw", "<f4"),
        ("similarity", "<f4"),
        ("keyframe_id", "<u4"),
        ("rank", "u1"),
        ("accepted", "u1"),
        ("filtered", "u1"),
    ]
)
# Tables recorded before the sequence filter: the same fields without ``filtered`` (all 0 when read).
_SINGLE_FRAME_DTYPE = np.dtype([(name, POINT_DTYPE.fields[name][0]) for name in POINT_DTYPE.names[:-1]])
# sensor_msgs/PointField datatype codes
_DATATYPES = {np.dtype("<f4"): 7, np.dtype("<u4"): 6, np.dtype("u1"): 2}


@dataclass(frozen=True)
class FieldSpec:
    """A PointField as plain values; callers wrap it in their message class."""

    name: str
    offset: int
    datatype: int
    count: int = 1


def point_fields() -> list[FieldSpec]:
    return [
        FieldSpec(name, POINT_DTYPE.fields[name][1], _DATATYPES[POINT_DTYPE.fields[name][0]])
        for name in POINT_DTYPE.names
    ]


def table_rows(
    keyframe_ids: np.ndarray,
    similarities: np.ndarray,
    positions: np.ndarray,
    orientations: np.ndarray,
    accepted: bool,
    filtered: bool = False,
) -> np.ndarray:
    """The structured rows for k candidates (ids of -1, "no keyframe", are left out)."""
    keep = np.asarray(keyframe_ids) >= 0
    rows = np.zeros(int(keep.sum()), POINT_DTYPE)
    rows["x"], rows["y"], rows["z"] = np.asarray(positions, np.float64)[keep].T
    for i, name in enumerate(("qx", "qy", "qz", "qw")):
        rows[name] = np.asarray(orientations, np.float64)[keep][:, i]
    rows["similarity"] = np.asarray(similarities)[keep]
    rows["keyframe_id"] = np.asarray(keyframe_ids)[keep]
    rows["rank"] = np.arange(len(rows))
    rows["accepted"] = int(accepted)
    rows["filtered"] = int(filtered)
    return rows


def cloud_fields(rows: np.ndarray) -> dict[str, Any]:
    """Keyword values of a PointCloud2 holding ``rows`` (fields as FieldSpec, data as bytes)."""
    return {
        "height": 1,
        "width": len(rows),
        "fields": point_fields(),
        "is_bigendian": False,
        "point_step": POINT_DTYPE.itemsize,
        "row_step": POINT_DTYPE.itemsize * len(rows),
        "data": rows.tobytes(),
        "is_dense": True,
    }


def read_table(msg: Any) -> np.ndarray:
    """Structured rows of a match-table PointCloud2 (rclpy or rosbags message), checked."""
    names = [f.name for f in msg.fields]
    layout = POINT_DTYPE if names == list(POINT_DTYPE.names) else _SINGLE_FRAME_DTYPE
    if names != list(layout.names) or int(msg.point_step) != layout.itemsize:
        raise InputError(f"not a vpr_ros match table: fields {names}, point_step {msg.point_step}")
    if msg.is_bigendian:
        raise InputError("match table: big-endian clouds are not supported")
    data = bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data.tobytes()
    count = int(msg.width) * int(msg.height)
    if len(data) != count * layout.itemsize:
        raise InputError(f"match table: {len(data)} bytes for {count} points of {layout.itemsize}")
    parsed = np.frombuffer(data, layout)
    rows = np.zeros(count, POINT_DTYPE)
    for name in layout.names:
        rows[name] = parsed[name]
    return rows
