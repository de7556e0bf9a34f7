"""The raw-pixel baseline on image files, for ``python -m training evaluate`` and real_dev.

The method itself (patch-normalised grey thumbnails compared by sum of absolute differences) is
:mod:`vpr_ros.evaluation.raw_pixels`, shared with the runtime's replay evaluation; this layer only
reads files. It reads them with ``cv2.IMREAD_GRAYSCALE``, which for JPEGs is libjpeg's own grey
decode, so the figures measured on files (real_dev 0.45 / 0.567) stay exactly reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from training.errors import UserError
from vpr_ros.evaluation import raw_pixels
from vpr_ros.evaluation.raw_pixels import sad_search

__all__ = ["raw_pixel_descriptors", "sad_search"]


def _read_grey(paths: Sequence[str | Path]) -> Iterator[np.ndarray]:
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise UserError(f"cannot read image {path}: missing, unreadable or not an image")
        yield image


def raw_pixel_descriptors(
    paths: Sequence[str | Path],
    size: tuple[int, int] = (24, 32),
    patch: int = 8,
    interpolation: int = cv2.INTER_AREA,
) -> np.ndarray:
    """float32 [N, H*W] patch-normalised grey thumbnails of image files; ``size`` is (H, W).

    Files are read one at a time, so a long list never holds more than one decoded image.
    """
    return raw_pixels.raw_pixel_descriptors(_read_grey(paths), size, patch, interpolation)
