"""Pittsburgh 30k / 250k (and any NetVLAD ``dbStruct`` split) from its .mat file.

Layout (Relja/netvlad ``dbBase.m``, the files NetVLAD, SARE and GCL evaluate on)::

    root/datasets/pitts{30k,250k}_{train,val,test}.mat
    root/images/<dbImageFns[i]>
    root/queries_real/<qImageFns[j]>     (root/queries/ when only that folder exists)

The struct is read positionally, as every Python port does (``whichSet``, ``dbImageFns``, ``utmDb``,
``qImageFns``, ``utmQ``, ``numImages``, ``numQueries``, ``posDistThr``, ``posDistSqThr``,
``nonTrivPosDistSqThr``), because field names are not reliable across MATLAB versions. Positions
are UTM (easting, northing; zone 17T for Pittsburgh). yaw is NaN: the ``yawNN`` of an image name
indexes the 12 cutouts of a Street View panorama and is not a compass heading, and the protocol
has no heading threshold anyway. Thresholds come from the file: ``positive_m = posDistThr`` (25 m)
and ``train_positive_m = sqrt(nonTrivPosDistSqThr)`` (10 m, NetVLAD's "non-trivial" positives).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import scipy.io

from training.datasets.base import PlaceDataset, PlaceSet
from training.datasets.common import require_dir, require_file
from training.errors import UserError

SPLITS = ("train", "val", "test")
FIELD_COUNT = 10
QUERY_FOLDERS = ("queries_real", "queries")


def read_pittsburgh(root: Path, split: str = "train", variant: str = "30k") -> PlaceDataset:
    """Read ``root/datasets/pitts{variant}_{split}.mat``, or ``root`` itself when it is a .mat file.

    With an explicit .mat the image root is the folder above ``datasets/`` when the file sits in
    one (the standard layout), otherwise the .mat's own folder.
    """
    root = Path(root)
    if root.suffix == ".mat":
        mat = require_file(root, "Pittsburgh")
        base = mat.parent.parent if mat.parent.name == "datasets" else mat.parent
    else:
        if split not in SPLITS:
            raise UserError(f"Pittsburgh split must be one of {', '.join(SPLITS)}, got {split!r}")
        base = require_dir(root, "Pittsburgh root")
        mat = require_file(base / "datasets" / f"pitts{variant}_{split}.mat", "Pittsburgh")
    fields = _load_db_struct(mat)
    try:
        which_set = str(fields[0].item())
        db_names, db_xy = _names(fields[1]), _utm(fields[2])
        q_names, q_xy = _names(fields[3]), _utm(fields[4])
        positive_m = float(fields[7].item())
        non_trivial_sq = float(fields[9].item())
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        raise UserError(f"{mat}: dbStruct fields are not in the NetVLAD layout ({exc})") from None
    _check_counts(mat, "database", db_names, db_xy)
    _check_counts(mat, "query", q_names, q_xy)
    images = require_dir(base / "images", "Pittsburgh")
    queries = _query_folder(base)
    return PlaceDataset(
        name=mat.stem,
        database=_place_set(images, db_names, db_xy),
        queries=_place_set(queries, q_names, q_xy),
        positive_m=positive_m,
        positive_deg=None,
        train_positive_m=math.sqrt(non_trivial_sq),
        meta={"which_set": which_set, "mat": str(mat)},
    )


def _load_db_struct(mat: Path) -> tuple:
    """The ten positional fields of ``dbStruct``; any unreadable file is a UserError naming it."""
    try:
        contents = scipy.io.loadmat(mat)
    except Exception as exc:  # scipy fails on damaged bytes with many types (OSError, IndexError, ...)
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"{mat}: not a readable MAT file ({detail})") from None
    if "dbStruct" not in contents:
        found = ", ".join(k for k in contents if not k.startswith("__")) or "nothing"
        raise UserError(f"{mat}: no dbStruct variable (found {found})")
    struct = contents["dbStruct"]
    fields = struct.item() if struct.dtype.names and struct.size == 1 else ()
    if len(fields) != FIELD_COUNT:
        raise UserError(f"{mat}: dbStruct has {len(fields)} fields, expected {FIELD_COUNT} (NetVLAD layout)")
    return fields


def _names(cell: np.ndarray) -> list[str]:
    """Image names from a MATLAB N x 1 cell of char arrays."""
    return [str(entry[0].item()) for entry in cell] if cell.size else []


def _utm(matrix: np.ndarray) -> np.ndarray:
    """A 2 x N MATLAB matrix (easting; northing) as float64 [N, 2]."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.size and (matrix.ndim != 2 or matrix.shape[0] != 2):
        raise ValueError(f"UTM matrix is {matrix.shape}, expected 2 x N")
    return matrix.reshape(2, -1).T.copy()


def _check_counts(mat: Path, side: str, names: list[str], xy: np.ndarray) -> None:
    if len(names) != len(xy):
        raise UserError(f"{mat}: {len(names)} {side} image names but {len(xy)} {side} positions")
    if not np.isfinite(xy).all():
        raise UserError(f"{mat}: {side} positions contain NaN or infinity")


def _query_folder(base: Path) -> Path:
    """``queries_real/`` (gmberton's layout) or, when only it exists, ``queries/`` (Relja's)."""
    for name in QUERY_FOLDERS:
        if (base / name).is_dir():
            return base / name
    raise UserError(f"Pittsburgh: folder {base / QUERY_FOLDERS[0]} (or {base / QUERY_FOLDERS[1]}) not found")


def _place_set(folder: Path, names: list[str], xy: np.ndarray) -> PlaceSet:
    return PlaceSet(tuple(folder / name for name in names), xy, np.full(len(names), np.nan))
