"""The synthetic world in the TB-Places layout: one "set" per traverse, an index JSON with 6-DoF
camera poses and an HDF5 file with the binary similarity of every pair of images in the set.

Layout (``<SET>`` = traverse name)::

    root/tbplaces/<SET>/images/<NNNNNN>.jpg       frame index, 6 digits; the generator's JPEG bytes
    root/tbplaces/<SET>.json
    root/tbplaces/<SET>_similarity.h5

``<SET>.json`` keys:

- ``im_prefix``: ``"<SET>"``, relative on purpose so the folder can move; an image's path is
  ``<folder of the json> / im_prefix / im_paths[k]`` (GCL's loader ignores im_prefix and joins its
  own root_dir with im_paths: give it ``root/tbplaces/<SET>``).
- ``im_paths``: ``"images/<NNNNNN>.jpg"`` in frame order.
- ``poses``: n x 7 ``[tx, ty, tz, qx, qy, qz, qw]``, the camera in the map frame (metres; x east,
  y north, z up): body position, tz = camera mount height, quaternion = rotation by the yaw about +z
  (the camera looks along the body's +x axis, as in ``Camera``).
- ``pose_fields``: the names of the seven pose columns, so the quaternion order is never guessed.

``<SET>_similarity.h5`` dataset ``sim``: uint8 [n (n - 1) / 2], the condensed upper triangle in
``scipy.spatial.distance.squareform`` order (pairs (0,1), (0,2), ..., (1,2), ...); 1 when the planar
distance between the two cameras is <= 10 m and their absolute heading difference, wrapped to
[0, 180] degrees, is <= 45 degrees. Attributes ``distance_threshold_m`` and
``heading_threshold_deg`` of ``sim`` hold the thresholds. gzip-compressed (the matrix is mostly zeros) and
written without HDF5 object timestamps, so equal inputs give equal files. No cross-set file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.synth.traverse import Traverse
from training.synth.writers.common import FrameWriter, write_bytes, yaw_quaternion

DISTANCE_THRESHOLD_M = 10.0
HEADING_THRESHOLD_DEG = 45.0
POSE_FIELDS = ("tx", "ty", "tz", "qx", "qy", "qz", "qw")


class TbPlacesWriter(FrameWriter):
    """Writes images as they arrive and, at close, the index and similarity file of every set."""

    subdir = "tbplaces"
    requires = ("h5py", "scipy.spatial")

    def _write_frame(self, t: int, i: int, rgb: np.ndarray, jpeg: bytes) -> None:
        write_bytes(self.root / self.world.traverses[t].name / image_path(i), jpeg)

    def _finish(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for trav in self.world.traverses:
            index = set_index(trav, self.world.camera.mount_height_m)
            write_bytes(self.root / f"{trav.name}.json", json.dumps(index).encode())
            write_similarity(self.root / f"{trav.name}_similarity.h5", similarity(trav.xy, trav.yaw))


def image_path(i: int) -> str:
    """Path of frame ``i`` relative to its set folder."""
    return f"images/{i:06d}.jpg"


def set_index(traverse: Traverse, mount_height_m: float) -> dict:
    """The JSON index of one set: image paths and camera poses in frame order."""
    n = len(traverse)
    poses = np.concatenate(
        [traverse.xy, np.full((n, 1), float(mount_height_m)), yaw_quaternion(traverse.yaw)], axis=1
    )
    return {
        "im_prefix": traverse.name,
        "im_paths": [image_path(i) for i in range(n)],
        "poses": poses.tolist(),
        "pose_fields": list(POSE_FIELDS),
    }


def similarity(xy: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Condensed binary similarity of all pairs: close (<= 10 m) and facing alike (<= 45 deg).

    Candidate pairs come from a KD-tree with a slightly larger radius and are then tested with the
    exact rule, so memory grows with the number of close pairs, not with n^2 floats.
    """
    from scipy.spatial import cKDTree  # the 'train' extra: only this writer needs it

    n = len(xy)
    sim = np.zeros(n * (n - 1) // 2, dtype=np.uint8)
    pairs = cKDTree(xy).query_pairs(DISTANCE_THRESHOLD_M * (1 + 1e-9), output_type="ndarray").astype(np.int64)
    i, j = pairs[:, 0], pairs[:, 1]
    distance = np.hypot(xy[i, 0] - xy[j, 0], xy[i, 1] - xy[j, 1])
    heading = np.degrees(np.abs(np.mod(yaw[i] - yaw[j] + np.pi, 2 * np.pi) - np.pi))
    keep = (distance <= DISTANCE_THRESHOLD_M) & (heading <= HEADING_THRESHOLD_DEG)
    i, j = i[keep], j[keep]
    sim[n * i - i * (i + 1) // 2 + (j - i - 1)] = 1
    return sim


def write_similarity(path: Path, sim: np.ndarray) -> None:
    """Store the condensed matrix as ``sim`` with its thresholds as attributes."""
    import h5py  # the 'train' extra

    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("sim", data=sim, compression="gzip", track_times=False)
        dataset.attrs["distance_threshold_m"] = DISTANCE_THRESHOLD_M
        dataset.attrs["heading_threshold_deg"] = HEADING_THRESHOLD_DEG
