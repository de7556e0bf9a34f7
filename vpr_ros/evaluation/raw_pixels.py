"""The raw-pixel baseline: the floor any learnt descriptor has to clear.

Tiny grey thumbnails compared by sum of absolute differences are the classic appearance-only
baseline of SeqSLAM. Each thumbnail is patch-normalised as in SeqSLAM: the image is cut into
non-overlapping ``patch`` x ``patch`` blocks and every block is shifted to zero mean and scaled
to unit standard deviation, which removes illumination changes that vary across the image (a
street lamp on one side, a shadow on the other) rather than only a global brightness change.

On the real_dev photographs (files read with ``cv2.IMREAD_GRAYSCALE``, as
``training.evaluation.baselines`` does) this gives recall@1 = 0.45 on the pairs and 0.567 on the
triplets with the default INTER_AREA downsampling; the reference numbers in its README
(0.45 / 0.60) come out exactly with INTER_NEAREST, so the README was evidently measured with a
nearest-neighbour resize. Whole-image normalisation instead of per-patch gives 0.60 / 0.57.

It lives in the runtime, working on decoded frames, so that replay evaluation can score a bag
against the same floor without importing the training stack (and torch). Colour frames become
grey with ``cv2.COLOR_RGB2GRAY``, the same weights as ``IMREAD_GRAYSCALE``: for a PNG the two
differ by at most one grey level (rounding). For a JPEG they differ more, because libjpeg's
grey decode keeps the stored luma instead of converting decoded RGB back (up to 10 levels on
about 1% of real_dev's pixels); real_dev recall@1 from decoded RGB is 0.45 / 0.567 all the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import cv2
import faiss
import numpy as np


def _check_geometry(size: tuple[int, int], patch: int) -> tuple[int, int]:
    height, width = size
    if height < 1 or width < 1 or patch < 1:
        raise ValueError(f"size {size} and patch {patch} must be positive")
    return height, width


def _grey(image: np.ndarray, what: str) -> np.ndarray:
    """The grey uint8 [H, W] version of an RGB or grey uint8 image, or a ValueError naming ``what``."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what}: expected a numpy array, got {type(image).__name__}")
    rgb = image.ndim == 3 and image.shape[2] == 3
    if image.dtype != np.uint8 or not (image.ndim == 2 or rgb) or 0 in image.shape[:2]:
        raise ValueError(
            f"{what}: expected an RGB uint8 [H, W, 3] or grey uint8 [H, W] image, "
            f"got {image.dtype} of shape {list(image.shape)}"
        )
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if rgb else image


def _patch_normalise(image: np.ndarray, patch: int) -> np.ndarray:
    """Zero mean, unit std per block; flat blocks (std 0) become zeros instead of NaN."""
    out = np.empty_like(image)
    for y in range(0, image.shape[0], patch):
        for x in range(0, image.shape[1], patch):
            block = image[y : y + patch, x : x + patch]
            std = block.std()
            out[y : y + patch, x : x + patch] = (block - block.mean()) / (std if std > 1e-6 else 1.0)
    return out


def _thumbnail(grey: np.ndarray, size: tuple[int, int], patch: int, interpolation: int) -> np.ndarray:
    height, width = size
    thumb = cv2.resize(grey, (width, height), interpolation=interpolation).astype(np.float32)
    return _patch_normalise(thumb, patch).reshape(-1)


def thumbnail(
    image: np.ndarray,
    size: tuple[int, int] = (24, 32),
    patch: int = 8,
    interpolation: int = cv2.INTER_AREA,
) -> np.ndarray:
    """float32 [H*W]: an RGB uint8 [H, W, 3] or grey uint8 [H, W] image as a patch-normalised grey
    thumbnail of ``size`` = (H, W), 24 x 32 by default."""
    size = _check_geometry(size, patch)
    return _thumbnail(_grey(image, "image"), size, patch, interpolation)


def raw_pixel_descriptors(
    images: Iterable[np.ndarray],
    size: tuple[int, int] = (24, 32),
    patch: int = 8,
    interpolation: int = cv2.INTER_AREA,
) -> np.ndarray:
    """float32 [N, H*W]: the :func:`thumbnail` of every image (RGB or grey uint8, any sizes).

    The descriptors are not L2-normalised: they are meant for :func:`sad_search`.
    """
    size = _check_geometry(size, patch)
    rows = [
        _thumbnail(_grey(image, f"image {i}"), size, patch, interpolation) for i, image in enumerate(images)
    ]
    if not rows:
        return np.zeros((0, size[0] * size[1]), dtype=np.float32)
    return np.stack(rows)


def sad_search(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by smallest sum of absolute differences: (SAD [Q, k], database indices [Q, k]).

    Same shape and -1 padding convention as :func:`training.evaluation.metrics.search`, but the
    scores grow with dissimilarity.
    """
    db = np.ascontiguousarray(db, dtype=np.float32)
    q = np.ascontiguousarray(q, dtype=np.float32)
    if db.ndim != 2 or q.ndim != 2 or db.shape[1] != q.shape[1] or len(db) == 0:
        raise ValueError(f"expected [N, D] database and [Q, D] queries, got {db.shape} and {q.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    index = faiss.IndexFlat(db.shape[1], faiss.METRIC_L1)
    index.add(db)
    distances, indices = index.search(q, k)
    return distances, indices.astype(np.int64)


def sad_scorer(database: np.ndarray, thumbnail: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The sequence filter's scorer of one thumbnail against database rows: minus the mean absolute
    difference, the score :func:`sad_search` results are reported with."""
    return partial(_negative_sad, database, thumbnail)


def _negative_sad(database: np.ndarray, thumbnail: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return -np.abs(database[rows] - thumbnail).sum(axis=1) / database.shape[1]
