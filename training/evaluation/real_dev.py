"""real_dev: fifty real photographs that tell a working descriptor from a broken one.

Synthetic training data can produce a model that scores well on renders and fails on cameras;
this small set of real revisits (Gardens Point day/night, SFU Mountain seasons) is the cheap
check against that. Layout: ``<subset>/pN/iK/*.jpg`` where every image under ``pN`` shows place
N. Scoring is leave-one-out: each image is a query against all the others, and it counts when
its nearest other image shows the same place. Evaluation only: never train on it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from training.errors import UserError
from training.evaluation.baselines import sad_search
from training.evaluation.metrics import search
from vpr_ros.evaluation.image_folders import Dataset

ENV_VAR = "VPR_REAL_DEV"
SUBSETS = ("MatchingPairs", "MatchingTriplets")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
_PLACE = re.compile(r"p(\d+)")
_VIEW = re.compile(r"i(\d+)")


def default_real_dev_root() -> Path:
    """$VPR_REAL_DEV, else ``../shared/data/real_dev`` next to the repository."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real_dev"


def _numbered(folder: Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    found = [(m, p) for p in folder.iterdir() if p.is_dir() and (m := pattern.fullmatch(p.name))]
    return sorted((int(m.group(1)), p) for m, p in found)


def read_real_dev(root: str | Path | None = None, subset: str | None = None) -> tuple[list[Path], np.ndarray]:
    """Image paths and their place ids (the N of ``pN``), ordered by place, view and name.

    ``root`` is either a subset folder (holding ``pN``) or the real_dev folder above both subsets;
    in the latter case ``subset`` picks ``MatchingPairs`` or ``MatchingTriplets``.
    """
    root = default_real_dev_root() if root is None else Path(root)
    if not root.is_dir():
        raise UserError(f"real_dev folder {root} does not exist (set {ENV_VAR} or pass the folder)")
    if subset is not None:
        if subset not in SUBSETS:
            raise UserError(f"real_dev subset {subset!r} is not one of {', '.join(SUBSETS)}")
        root = root / subset
        if not root.is_dir():
            raise UserError(f"real_dev folder {root} does not exist")
    places = _numbered(root, _PLACE)
    if not places:
        present = [s for s in SUBSETS if (root / s).is_dir()]
        hint = f"; pick a subset: {', '.join(present)}" if present else ""
        raise UserError(f"real_dev folder {root} has no pN place folders{hint}")
    paths: list[Path] = []
    ids: list[int] = []
    for place, place_dir in places:
        for _, view_dir in _numbered(place_dir, _VIEW):
            images = sorted(p for p in view_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
            paths.extend(images)
            ids.extend([place] * len(images))
    if len(paths) < 2:
        raise UserError(f"real_dev folder {root} holds {len(paths)} images; leave-one-out needs 2 or more")
    return paths, np.asarray(ids, dtype=np.int64)


def _leave_one_out_recall(indices: np.ndarray, place_ids: np.ndarray) -> float:
    """Share of images whose best result other than themselves has their place id.

    Searching with k = 2 and skipping the image's own index (not simply the first column)
    stays right when a duplicate image ties with itself and the search lists it first.
    """
    correct = 0
    for i, row in enumerate(indices):
        other = row[(row != i) & (row >= 0)][0]
        correct += int(place_ids[other] == place_ids[i])
    return correct / len(indices)


def _checked_ids(descriptors: np.ndarray, place_ids: np.ndarray) -> np.ndarray:
    place_ids = np.asarray(place_ids).reshape(-1)
    if np.ndim(descriptors) != 2 or len(descriptors) != len(place_ids) or len(place_ids) < 2:
        raise ValueError(
            f"need [N, D] descriptors for N >= 2 images and N place ids, got {np.shape(descriptors)} "
            f"and {len(place_ids)}"
        )
    return place_ids


def real_dev_recall_at_1(descriptors: np.ndarray, place_ids: np.ndarray) -> float:
    """Leave-one-out recall@1 by cosine similarity of L2-normalised descriptors."""
    place_ids = _checked_ids(descriptors, place_ids)
    _, indices = search(descriptors, descriptors, 2)
    return _leave_one_out_recall(indices, place_ids)


def real_dev_recall_at_1_sad(descriptors: np.ndarray, place_ids: np.ndarray) -> float:
    """Leave-one-out recall@1 by smallest sum of absolute differences (the raw-pixel baseline)."""
    place_ids = _checked_ids(descriptors, place_ids)
    _, indices = sad_search(descriptors, descriptors, 2)
    return _leave_one_out_recall(indices, place_ids)


def real_dev_query_sets(root: str | Path | None = None) -> list[Dataset]:
    """Both subsets as query/reference sets for ``vpr-bench``'s code: the first view (i0) of every
    place is a query, the other views are the references (pairs: i1; triplets: i1 and i2)."""
    out = []
    for subset in SUBSETS:
        paths, place_ids = read_real_dev(root, subset)
        first = np.array([path.parent.name == "i0" for path in paths])
        refs = np.flatnonzero(~first)
        matches = [np.flatnonzero(place_ids[refs] == place) for place in place_ids[first]]
        out.append(
            Dataset.from_lists(
                f"real_dev {subset[len('Matching') :].lower()}",
                [paths[i] for i in np.flatnonzero(first)],
                [paths[i] for i in refs],
                matches,
                "same pN folder (i0 against the other views)",
                paths[0].parents[2],
            )
        )
    return out
