"""Image-folder place recognition datasets (the VPR-Bench / VPR tutorial layout), read safely.

The public VPR test sets are mostly shipped as a folder with ``query/`` and ``ref/`` images and,
for VPR-Bench, a ``ground_truth.npy`` (or the corrected ``ground_truth_new.npy``): a numpy OBJECT
array with one row ``[query_index, [ref_indices...]]`` per query. Object arrays are pickles, and
unpickling a file from the internet can run any code, so the payload is unpickled here with an
allow-list of the few numpy globals an array of lists and numbers needs; anything else is refused
before it is called. Without a ground-truth file, query i matches references i-tol .. i+tol (the
sequence sets: Nordland, or pairs with tolerance 0).

Images are listed in natural order (``2.jpg`` before ``10.jpg``), since the sets name them
``0.jpg .. 606.jpg`` as often as ``0000.png``; a dataset is only a list of paths and the matches,
so images are read when they are embedded (:func:`read_image`) and never all held at once.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.lib import format as npy_format

from vpr_ros.errors import InputError

try:  # numpy >= 2
    from numpy._core import multiarray
except ImportError:  # numpy 1.26
    from numpy.core import multiarray

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
QUERY_DIR, REF_DIR = "query", "ref"
GROUND_TRUTH_FILES = ("ground_truth_new.npy", "ground_truth.npy")  # first found wins
# Everything an object array of lists, arrays and numbers unpickles with, in numpy 1 and 2 names.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


@dataclass(frozen=True)
class Dataset:
    """Queries and references by path, and for query i the reference indices ``matches[i]`` that
    show its place (sorted, unique, int64; empty for a query whose place is not among the
    references, which a method should refuse). ``ground_truth`` says where the matches came from;
    ``notes`` what a reader of the results should know (e.g. query and reference counts differ)."""

    name: str
    path: Path | None
    queries: tuple[Path, ...]
    refs: tuple[Path, ...]
    matches: tuple[np.ndarray, ...]
    ground_truth: str
    tolerance: int | None = None
    notes: tuple[str, ...] = field(default=())

    @classmethod
    def from_lists(
        cls,
        name: str,
        queries: Sequence[Path | str],
        refs: Sequence[Path | str],
        matches: Sequence[Sequence[int] | np.ndarray],
        ground_truth: str,
        path: Path | None = None,
        tolerance: int | None = None,
        notes: Sequence[str] = (),
    ) -> Dataset:
        """A dataset of any layout: ``matches[i]`` lists the reference indices of query i. Checks
        what :func:`read_dataset` checks (images present, one entry per query, indices in range)."""
        where = f"dataset {name}"
        if not queries or not refs:
            raise InputError(f"{where}: needs at least one query and one reference image")
        if len(matches) != len(queries):
            raise InputError(f"{where}: {len(matches)} match lists for {len(queries)} queries")
        checked = []
        for i, m in enumerate(matches):
            ids = np.unique(np.asarray(m, dtype=np.int64).reshape(-1))
            if ids.size and (ids[0] < 0 or ids[-1] >= len(refs)):
                raise InputError(
                    f"{where}: query {i} matches reference {ids[0] if ids[0] < 0 else ids[-1]}, "
                    f"but there are {len(refs)} references (0..{len(refs) - 1})"
                )
            checked.append(ids)
        return cls(
            name,
            path,
            tuple(map(Path, queries)),
            tuple(map(Path, refs)),
            tuple(checked),
            ground_truth,
            tolerance,
            tuple(notes),
        )

    @property
    def has_match(self) -> np.ndarray:
        """bool [Q]: does the query's place appear among the references."""
        return np.array([m.size > 0 for m in self.matches], dtype=bool)

    def subset(self, query_indices: Sequence[int] | np.ndarray, name: str) -> Dataset:
        """The same references with only the queries ``query_indices`` (in that order), e.g. a
        held-out stretch of a folder evaluated against all of its references."""
        chosen = np.asarray(query_indices, dtype=np.int64).reshape(-1)
        if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= len(self.queries):
            raise InputError(
                f"dataset {self.name}: a subset needs query indices in 0..{len(self.queries) - 1}"
            )
        return Dataset.from_lists(
            name,
            [self.queries[i] for i in chosen],
            self.refs,
            [self.matches[i] for i in chosen],
            f"{self.ground_truth}, queries {_ranges(chosen)}",
            self.path,
            self.tolerance,
            self.notes,
        )


def natural_key(name: str) -> tuple[list[Any], str]:
    """Sort key putting ``2.jpg`` before ``10.jpg``: digit runs compare as numbers."""
    parts = re.split(r"(\d+)", name)
    return [int(p) if i % 2 else p.lower() for i, p in enumerate(parts)], name


def list_images(folder: Path) -> list[Path]:
    """The image files (.jpg, .jpeg, .png in any case; hidden files skipped) of ``folder``, in
    natural order."""
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        ),
        key=lambda p: natural_key(p.name),
    )


def read_dataset(folder: Path | str, tolerance: int = 0) -> Dataset:
    """The dataset in ``folder`` (``query/``, ``ref/``, optional ground-truth file; see the module
    doc); ``tolerance`` is used only when there is no ground-truth file. Every problem is one
    :class:`InputError` line naming the folder or file."""
    folder = Path(folder).expanduser()
    name = folder.resolve().name
    if tolerance < 0:
        raise InputError(f"dataset {folder}: tolerance must be >= 0, got {tolerance}")
    if not folder.is_dir():
        raise InputError(f"dataset {folder}: not a directory")
    lists = {}
    for sub in (QUERY_DIR, REF_DIR):
        if not (folder / sub).is_dir():
            raise InputError(f"dataset {folder}: has no {sub}/ folder (expected {QUERY_DIR}/ and {REF_DIR}/)")
        lists[sub] = list_images(folder / sub)
        if not lists[sub]:
            raise InputError(f"dataset {folder}: {sub}/ holds no images ({', '.join(IMAGE_SUFFIXES)})")
    queries, refs = lists[QUERY_DIR], lists[REF_DIR]
    gt_file = next((folder / f for f in GROUND_TRUTH_FILES if (folder / f).is_file()), None)
    if gt_file is not None:
        matches = read_ground_truth(gt_file, len(queries), len(refs))
        notes = [f"--tolerance {tolerance} not used: {gt_file.name} gives the matches"] if tolerance else []
        return Dataset.from_lists(name, queries, refs, matches, gt_file.name, folder, None, notes)
    matches = [
        np.arange(max(0, i - tolerance), min(len(refs), i + tolerance + 1)) for i in range(len(queries))
    ]
    notes = []
    if len(queries) != len(refs):
        unmatched = sum(m.size == 0 for m in matches)
        notes.append(
            f"{len(queries)} queries but {len(refs)} references: query i is matched to references "
            f"i-{tolerance}..i+{tolerance} by position in the sorted lists"
            + (f"; {unmatched} queries have no reference in range (no match)" if unmatched else "")
        )
    source = "query i matches reference " + (f"i-{tolerance}..i+{tolerance}" if tolerance else "i")
    source += " (no ground-truth file)"
    return Dataset.from_lists(name, queries, refs, matches, source, folder, tolerance, notes)


def read_ground_truth(path: Path, n_queries: int, n_refs: int) -> list[np.ndarray]:
    """The match list of every query from a VPR-Bench ground-truth .npy (object array of rows
    ``[query_index, ref_indices]``, or a plain integer array [Q, 2]), checked: every query has
    exactly one row and every index is in range."""
    array = _load_npy(path)
    if array.ndim != 2 and not (array.ndim == 1 and array.dtype.hasobject):
        raise InputError(
            f"ground truth {path}: expected one row [query index, reference indices] per query, "
            f"got an array of shape {list(array.shape)}"
        )
    matches: list[np.ndarray | None] = [None] * n_queries
    for r, row in enumerate(array):
        if not isinstance(row, list | tuple | np.ndarray) or len(row) != 2:
            raise InputError(f"ground truth {path}: row {r} is not a pair [query index, reference indices]")
        query = _indices(row[0], path, r)
        if query.size != 1:
            raise InputError(f"ground truth {path}: row {r} does not start with one query index")
        q = int(query[0])
        if not 0 <= q < n_queries:
            raise InputError(
                f"ground truth {path}: row {r} names query {q}, but there are {n_queries} queries "
                f"(0..{n_queries - 1})"
            )
        if matches[q] is not None:
            raise InputError(f"ground truth {path}: query {q} has more than one row (row {r} repeats it)")
        refs = _indices(row[1], path, r)
        bad = refs[(refs < 0) | (refs >= n_refs)]
        if bad.size:
            raise InputError(
                f"ground truth {path}: row {r} (query {q}) names reference {bad[0]}, but there are "
                f"{n_refs} references (0..{n_refs - 1})"
            )
        matches[q] = refs
    missing = [q for q, m in enumerate(matches) if m is None]
    if missing:
        raise InputError(
            f"ground truth {path}: {len(missing)} of {n_queries} queries have no row "
            f"(first: query {missing[0]})"
        )
    return matches


def _indices(value: Any, path: Path, row: int) -> np.ndarray:
    """int64 [n] from a scalar, list or array of integers (an empty list: no match)."""
    flat = np.asarray(value, dtype=object).reshape(-1)
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in flat):
        raise InputError(f"ground truth {path}: row {row} holds something other than integer indices")
    return flat.astype(np.int64)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists and numbers; any other global is refused before it is loaded,
    let alone called, so a hostile file cannot run code."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # latin1: what numpy needs for Python 2 pickles
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        allowed = _NUMPY_GLOBALS.get((module, name))
        if allowed is None:
            raise InputError(
                f"ground truth {self.path}: refusing to unpickle {module}.{name} "
                "(only numpy arrays of lists and integers are read from ground-truth files)"
            )
        return allowed


def _load_npy(path: Path) -> np.ndarray:
    """A .npy array; object arrays through :class:`_NumpyOnlyUnpickler`, never ``allow_pickle``."""
    try:
        with open(path, "rb") as f:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                _, _, dtype = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                _, _, dtype = npy_format.read_array_header_2_0(f)
            else:
                raise InputError(f"ground truth {path}: .npy format version {version} is not supported")
            if not dtype.hasobject:
                array = np.load(path, allow_pickle=False)
                if array.dtype.kind not in "iu":
                    raise InputError(f"ground truth {path}: holds {array.dtype} numbers, not integer indices")
                return array
            array = _NumpyOnlyUnpickler(f, path).load()
    except InputError:
        raise
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, TypeError, AttributeError) as exc:
        raise InputError(f"ground truth {path}: not a readable .npy file ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"ground truth {path}: holds a {type(array).__name__}, not an array")
    return array


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3] of an image file, EXIF orientation ignored (the pixels as stored, as
    the sets were evaluated); an :class:`InputError` naming the file when it cannot be decoded."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise InputError(f"image {path}: cannot be read or decoded")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _ranges(indices: np.ndarray) -> str:
    """``0..9, 20..29``: the runs of consecutive indices, in their order (a subset's description)."""
    runs, start = [], 0
    for i in range(1, len(indices) + 1):
        if i == len(indices) or indices[i] != indices[i - 1] + 1:
            first, last = int(indices[start]), int(indices[i - 1])
            runs.append(str(first) if first == last else f"{first}..{last}")
            start = i
    return ", ".join(runs)
