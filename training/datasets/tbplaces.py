"""TB-Places (garden place recognition, Leyva-Vallina et al., IEEE Access 2019) from its set files.

Layout (marialeyvallina/TB_Places README)::

    root/<SET>.json                 {"im_prefix": ..., "im_paths": [...], "poses": n x 7}
    root/<SET>_similarity.h5        "sim": condensed (scipy squareform) binary similarity of all pairs

Poses are [tx, ty, tz, qx, qy, qz, qw] in the garden's metric frame unless the file has a
``pose_fields`` list naming the seven columns (our synthetic sets write one). Position is (tx, ty);
yaw is the heading of the camera's viewing axis projected on the ground plane (``view_axis``: "x"
when the pose's x axis points where the camera looks, as in our synthetic sets; "z" for optical-frame
poses). The real sets do not document their camera axis convention: check a few frames before
training on them.

Images are ``<json folder>/<im_prefix>/<im_path>``. The released files carry the authors' own
absolute ``im_prefix`` (the official TestDataSet opens ``im_prefix + im_path`` directly, GCL ignores
the prefix and joins its own root), so when that image does not exist the reader tries
``<json folder>/<im_path>`` and ``<json folder>/<SET>/<im_path>`` and keeps the first folder that
holds the set's first image.

Thresholds (GCL, Leyva-Vallina, Strisciuglio, Petkov, "Data-efficient Large Scale Place Recognition
with Graded Similarity Supervision", CVPR 2023, supplementary "2D Field of View Overlap with IMU and
laser tracking: TB-Places dataset"): the FoV sector has r = 3.5 m and theta = 90 degrees, taken from
the TB-Places paper. GCL labels TB-Places only by FoV overlap (positive when >= 50 %) and gives no
metric threshold, so the binary ones here are MSLS's scaled to that radius: MSLS pairs 25 m / 40
degrees (train 10 m) with r = 50 m, and overlap depends only on distance / r and the angle, so
r = 3.5 m gives 1.75 m / 40 degrees (train 0.7 m) with the same overlap. The set's own ``sim``
matrix stays the dataset's official ground truth (:func:`read_tbplaces_similarity`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse

from training.datasets.base import PlaceDataset, PlaceSet
from training.datasets.common import check_quaternions, quaternion_yaw, require_dir, require_file
from training.errors import UserError

POSE_FIELDS = ("tx", "ty", "tz", "qx", "qy", "qz", "qw")
RADIUS_M = 3.5  # GCL supplement, after the TB-Places paper
FOV_DEG = 90.0
# MSLS's thresholds scaled by 3.5 m / 50 m, the ratio of the FoV radii (see the module docstring).
POSITIVE_M = 1.75  # 25 m
TRAIN_POSITIVE_M = 0.7  # 10 m
POSITIVE_DEG = 40.0  # angles do not scale
SIM_CHUNK = 1 << 24  # condensed entries read at a time: W16's 830 M pairs never sit in memory at once


def read_tbplaces(
    root: Path,
    database_set: str,
    query_set: str,
    radius_m: float = RADIUS_M,
    fov_deg: float = FOV_DEG,
    view_axis: str = "x",
) -> PlaceDataset:
    """One set as database and another as queries (GCL: W17 map, W18 queries), tags = set names."""
    root = require_dir(root, "TB-Places root")
    return PlaceDataset(
        name=f"tbplaces_{database_set}_{query_set}",
        database=read_tbplaces_set(root, database_set, view_axis),
        queries=read_tbplaces_set(root, query_set, view_axis),
        positive_m=POSITIVE_M,
        positive_deg=POSITIVE_DEG,
        train_positive_m=TRAIN_POSITIVE_M,
        radius_m=radius_m,
        fov_deg=fov_deg,
        meta={"database_set": database_set, "query_set": query_set, "view_axis": view_axis},
    )


def read_tbplaces_set(root: Path, name: str, view_axis: str = "x") -> PlaceSet:
    """The images and planar poses of ``root/<name>.json`` (e.g. to split W18 into map and queries)."""
    path = require_file(Path(root) / f"{name}.json", f"TB-Places set {name!r}")
    index = _load_index(path)
    poses = _poses(path, index)
    im_paths = index["im_paths"]
    if not isinstance(im_paths, list) or len(im_paths) != len(poses):
        count = len(im_paths) if isinstance(im_paths, list) else type(im_paths).__name__
        raise UserError(f"{path}: {len(poses)} poses but im_paths is {count}")
    folder = _image_folder(path, name, str(index.get("im_prefix", "")), im_paths)
    columns = {field: poses[:, i] for i, field in enumerate(_pose_fields(path, index))}
    quaternions = np.stack([columns[f] for f in ("qx", "qy", "qz", "qw")], axis=1)
    quaternions = check_quaternions(quaternions, lambda i: f"{path} pose {i}")
    return PlaceSet(
        tuple(folder / str(p) for p in im_paths),
        np.stack([columns["tx"], columns["ty"]], axis=1),
        quaternion_yaw(quaternions, view_axis),
        (name,) * len(im_paths),
    )


def read_tbplaces_similarity(root: Path, name: str) -> scipy.sparse.csr_array:
    """The set's binary ground truth as a symmetric sparse bool matrix [n, n] (diagonal False).

    Sparse because a dense W16 matrix would take 1.7 GB while under 1 % of its pairs are similar;
    ``.toarray()`` gives the dense matrix of a small set.
    """
    path = require_file(Path(root) / f"{name}_similarity.h5", f"TB-Places set {name!r}")
    try:
        with h5py.File(path, "r") as f:
            if not isinstance(f.get("sim"), h5py.Dataset):
                raise UserError(f"{path}: no dataset 'sim' (found {', '.join(f) or 'nothing'})")
            n, pairs = _condensed_nonzero(path, f["sim"])
    except OSError as exc:
        raise UserError(f"{path}: not a readable HDF5 file ({exc})") from None
    i, j = _condensed_to_pairs(pairs, n)
    data = np.ones(2 * len(pairs), dtype=bool)
    matrix = scipy.sparse.coo_array((data, (np.r_[i, j], np.r_[j, i])), shape=(n, n))
    return matrix.tocsr()


def _load_index(path: Path) -> dict:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    missing = [key for key in ("im_paths", "poses") if not isinstance(index, dict) or key not in index]
    if missing:
        raise UserError(f"{path}: missing key(s) {', '.join(missing)}")
    return index


def _poses(path: Path, index: dict) -> np.ndarray:
    try:
        poses = np.asarray(index["poses"], dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{path}: poses must be an n x 7 list of numbers") from None
    poses = poses.reshape(0, 7) if poses.size == 0 else poses
    if poses.ndim != 2 or poses.shape[1] != 7:
        raise UserError(f"{path}: poses has shape {poses.shape}, expected n x 7")
    bad = np.flatnonzero(~np.isfinite(poses).all(axis=1))
    if bad.size:
        raise UserError(f"{path} pose {bad[0]}: {poses[bad[0]].tolist()} is not finite")
    return poses


def _pose_fields(path: Path, index: dict) -> list[str]:
    fields = index.get("pose_fields", list(POSE_FIELDS))
    if not isinstance(fields, list) or sorted(map(str, fields)) != sorted(POSE_FIELDS):
        raise UserError(f"{path}: pose_fields {fields!r} must name each of {', '.join(POSE_FIELDS)} once")
    return [str(f) for f in fields]


def _image_folder(path: Path, name: str, prefix: str, im_paths: list) -> Path:
    """The folder the set's image paths are relative to (see the module docstring for the order)."""
    candidates = list(dict.fromkeys((path.parent / prefix, path.parent, path.parent / name)))
    if not im_paths:
        return candidates[0]
    for folder in candidates:
        if (folder / str(im_paths[0])).is_file():
            return folder
    tried = ", ".join(str(folder / str(im_paths[0])) for folder in candidates)
    raise UserError(f"{path}: first image not found (tried {tried})")


def _condensed_nonzero(path: Path, dataset: h5py.Dataset) -> tuple[int, np.ndarray]:
    """(n, condensed indices of the similar pairs), reading the vector in chunks."""
    if dataset.ndim not in (1, 2) or (dataset.ndim == 2 and min(dataset.shape) > 1):
        raise UserError(f"{path}: 'sim' has shape {dataset.shape}, expected a condensed vector")
    length = int(np.prod(dataset.shape))
    n = int(round((1 + math.sqrt(1 + 8 * length)) / 2))
    if n * (n - 1) // 2 != length:
        raise UserError(f"{path}: 'sim' has {length} entries, not n (n - 1) / 2 for any n")
    found = []
    for start in range(0, length, SIM_CHUNK):
        part = slice(start, min(start + SIM_CHUNK, length))
        index = part if dataset.ndim == 1 else ((0, part) if dataset.shape[0] == 1 else (part, 0))
        found.append(np.flatnonzero(dataset[index]) + start)
    return n, np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def _condensed_to_pairs(k: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column (i < j) of condensed indices ``k`` in squareform order."""
    k = np.asarray(k, dtype=np.int64)
    i = (n - 2 - np.floor(np.sqrt(-8.0 * k + 4.0 * n * (n - 1) - 7) / 2 - 0.5)).astype(np.int64)
    j = k + i + 1 - n * (n - 1) // 2 + (n - i) * (n - i - 1) // 2
    return i, j
