"""The synthetic world in the NetVLAD / Pittsburgh layout: images plus ``dbStruct`` .mat files.

Layout::

    root/pittsburgh/images/<dbImageFn>            frames of the role "database" traverses
    root/pittsburgh/queries_real/<qImageFn>       frames of the role "query" traverses
    root/pittsburgh/datasets/pitts30k_train.mat
    root/pittsburgh/datasets/pitts30k_val.mat
    root/pittsburgh/datasets/pitts30k_test.mat

Image names follow the real pattern ``NNN/NNNNNN_pitch1_yawY.jpg``: every frame is its own
"panorama" with a running id k (database and query frames counted separately, in traverse and frame
order), folder ``k // 1000`` (3 digits), file ``k`` (6 digits, so names are unique), pitch 1, and yaw
index Y = 1 + floor(compass angle / 30 degrees) in 1..12, the compass angle being clockwise from north.

Splits are geographically disjoint strips: the database frames are ordered by their UTM easting or
northing, whichever spans more, and cut at 50 % and 75 % of the frames (train below the first cut,
val between, test above; frames with equal coordinates stay together). A query joins the split of
its nearest database frame, so it always has its positives in its own split.

Each .mat (MAT 5, uncompressed) holds one struct ``dbStruct`` with the fields of Relja/netvlad
``dbBase.m``, in this order: ``whichSet`` (char), ``dbImageFns`` (cell N x 1 of char), ``utmDb``
(double 2 x N: easting; northing), ``qImageFns`` (cell M x 1), ``utmQ`` (double 2 x M),
``numImages``, ``numQueries``, ``posDistThr`` (25), ``posDistSqThr`` (625), ``nonTrivPosDistSqThr``
(100), all double scalars. Python readers index the struct positionally, so the order is part of
the format. The files are named ``pitts30k_*`` because readers key on the name: Relja's
``dbPitts(false, set)`` loads ``pitts30k_<set>.mat`` and Nanne/pytorch-NetVlad hard-codes
``datasets/pitts30k_{train,val,test}.mat``; those tools take this folder as the Pittsburgh root
(Relja's looks for queries in ``queries/``, Nanne's for database images in the root itself: point
their path settings at ``images/`` and ``queries_real/``). The MAT header's "Created on" date, which
scipy fills with the wall clock, is replaced by a fixed text so equal inputs give equal files.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from training.synth.traverse import WorldInfo
from training.synth.writers.common import FrameWriter, compass_deg, traverses_with_role, write_bytes

SPLITS = (("train", 0.5), ("val", 0.75), ("test", 1.0))  # name, cumulative fraction of database frames
MAT_PREFIX = "pitts30k"
POS_DIST_THR = 25.0
NON_TRIV_POS_DIST_SQ_THR = 100.0
FIELDS = (
    "whichSet",
    "dbImageFns",
    "utmDb",
    "qImageFns",
    "utmQ",
    "numImages",
    "numQueries",
    "posDistThr",
    "posDistSqThr",
    "nonTrivPosDistSqThr",
)
MAT_HEADER_TEXT = b"MATLAB 5.0 MAT-file, written by vpr_ros training.synth (Pittsburgh dbStruct)"
MAT_DESCRIPTION_BYTES = 116  # the description part of the 128-byte MAT 5 file header


class PittsburghWriter(FrameWriter):
    """Writes images as they arrive and the three split files at close."""

    subdir = "pittsburgh"
    requires = ("scipy.io", "scipy.spatial")

    def __init__(self, root: Path, world: WorldInfo) -> None:
        super().__init__(root, world)
        self.db_traverses = traverses_with_role(world, "database")
        if not any(len(world.traverses[t]) for t in self.db_traverses):
            raise ValueError("PittsburghWriter: the world has no database frames to split")
        self.q_traverses = traverses_with_role(world, "query")
        self.names = {}  # traverse index -> image names relative to images/ or queries_real/
        for side in (self.db_traverses, self.q_traverses):
            start = 0
            for t in side:
                self.names[t] = image_names(start, world.traverses[t].yaw)
                start += len(self.names[t])

    def _write_frame(self, t: int, i: int, rgb: np.ndarray, jpeg: bytes) -> None:
        folder = "images" if self.world.traverses[t].role == "database" else "queries_real"
        write_bytes(self.root / folder / self.names[t][i], jpeg)

    def _finish(self) -> None:
        from scipy.spatial import cKDTree  # the 'train' extra: only this writer needs it

        db_names, db_utm = self._side(self.db_traverses)
        q_names, q_utm = self._side(self.q_traverses)
        db_split = split_database(db_utm)
        q_split = db_split[cKDTree(db_utm).query(q_utm)[1]] if len(q_utm) else np.zeros(0, dtype=np.int64)
        for index, (which_set, _) in enumerate(SPLITS):
            db, q = db_split == index, q_split == index
            struct = db_struct(which_set, db_names[db], db_utm[db], q_names[q], q_utm[q])
            write_mat(self.root / "datasets" / f"{MAT_PREFIX}_{which_set}.mat", struct)

    def _side(self, traverses: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Image names [K] and UTM positions [K, 2] of all frames of some traverses, in order."""
        names = [name for t in traverses for name in self.names[t]]
        utm = [self.world.geo.to_utm(self.world.traverses[t].xy) for t in traverses]
        return np.array(names, dtype=object), np.concatenate(utm) if utm else np.zeros((0, 2))


def image_names(start: int, yaw: np.ndarray) -> list[str]:
    """``NNN/NNNNNN_pitch1_yawY.jpg`` for panorama ids start, start + 1, ... with yaw buckets of 30 deg."""
    yaw_index = 1 + (compass_deg(yaw) // 30.0).astype(np.int64)
    return [
        f"{k // 1000:03d}/{k:06d}_pitch1_yaw{y}.jpg" for k, y in enumerate(yaw_index.tolist(), start=start)
    ]


def split_database(utm: np.ndarray) -> np.ndarray:
    """Split index (into ``SPLITS``) of every database frame: disjoint strips along the longer UTM axis."""
    axis = int(np.argmax(np.ptp(utm, axis=0)))
    coord = utm[:, axis]
    ordered = np.sort(coord)
    cuts = [ordered[min(round(fraction * len(coord)), len(coord) - 1)] for _, fraction in SPLITS[:-1]]
    return np.searchsorted(cuts, coord, side="right")


def db_struct(
    which_set: str, db_names: np.ndarray, db_utm: np.ndarray, q_names: np.ndarray, q_utm: np.ndarray
) -> np.ndarray:
    """A 1 x 1 MATLAB struct whose fields keep the dbBase.m order (a dict would not promise it)."""
    values = (
        which_set,
        _cell_column(db_names),
        np.asarray(db_utm, dtype=np.float64).T,
        _cell_column(q_names),
        np.asarray(q_utm, dtype=np.float64).T,
        float(len(db_names)),
        float(len(q_names)),
        POS_DIST_THR,
        POS_DIST_THR**2,
        NON_TRIV_POS_DIST_SQ_THR,
    )
    struct = np.empty((1, 1), dtype=[(name, object) for name in FIELDS])
    for name, value in zip(FIELDS, values, strict=True):
        struct[0, 0][name] = value
    return struct


def write_mat(path: Path, struct: np.ndarray) -> None:
    """Save ``dbStruct`` as MAT 5 with a fixed header text (scipy would stamp the current time)."""
    import scipy.io  # the 'train' extra

    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"dbStruct": struct}, format="5", do_compression=False, oned_as="column")
    data = bytearray(buffer.getvalue())
    data[:MAT_DESCRIPTION_BYTES] = MAT_HEADER_TEXT.ljust(MAT_DESCRIPTION_BYTES)
    write_bytes(path, bytes(data))


def _cell_column(names: np.ndarray) -> np.ndarray:
    """An N x 1 MATLAB cell array of strings."""
    cell = np.empty((len(names), 1), dtype=object)
    cell[:, 0] = list(names)
    return cell
