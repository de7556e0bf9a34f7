"""Image loading for training and evaluation: files to float tensors of one fixed size.

Images are resized to exactly H x W without keeping the aspect ratio, as GCL's
``transforms.Resize((480, 640))`` does, so a checkpoint sees the geometry it was trained on and
every image of a batch has the same shape. ``cv2.INTER_AREA`` is used because it averages source
pixels when shrinking (the usual case) instead of aliasing like bilinear sampling; normalisation
(ImageNet mean/std, caffe-style) belongs to the model, not here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from training.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_SIZE = (480, 640)  # (H, W) of GCL's training and evaluation


class UnreadableImage(UserError):
    """An image file that is missing, empty or not decodable by OpenCV."""


def load_image(path: Path, size: tuple[int, int] | None = DEFAULT_SIZE) -> torch.Tensor:
    """RGB float32 tensor [3, H, W] in [0, 1], resized to ``size`` = (H, W); None keeps the file's size.

    Grey and 16-bit files become 8-bit RGB (OpenCV ``IMREAD_COLOR``). EXIF orientation is ignored,
    as PIL (GCL's loader) and ``vpr_ros.io.image_codec`` (the robot's frames) ignore it, so a model sees
    the same pixels in training and on the robot.
    """
    try:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:
        raise UnreadableImage(f"image {path}: cannot be decoded ({' '.join(str(exc).split())})") from None
    if bgr is None:
        reason = "not found" if not Path(path).is_file() else "not a readable image"
        raise UnreadableImage(f"image {path}: {reason}")
    if size is not None and bgr.shape[:2] != tuple(size):
        bgr = cv2.resize(bgr, (int(size[1]), int(size[0])), interpolation=cv2.INTER_AREA)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)


class ImageListDataset(Dataset):
    """Images of a list of paths as ``(tensor [3, H, W], index, ok)``; a bad file is not fatal.

    An unreadable image yields a zero tensor with ``ok = False`` and a warning naming the file (once
    per file and process), so one corrupt JPEG among a million does not end an epoch or an
    evaluation. ``failures`` counts them, but only in the process that loaded them: with DataLoader
    workers each worker has its own copy, so callers count the returned ``ok`` flags instead and
    drop those rows (an evaluation must not score a zero tensor as a real image).
    """

    def __init__(self, paths: Sequence[Path], size: tuple[int, int] = DEFAULT_SIZE) -> None:
        self.paths = list(paths)
        self.size = (int(size[0]), int(size[1]))
        self.failures = 0
        self._warned: set[Path] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        path = self.paths[index]
        try:
            return load_image(path, self.size), index, True
        except UnreadableImage as exc:
            self.failures += 1
            if path not in self._warned:
                self._warned.add(path)
                log.warning("skipping %s", exc)
            return torch.zeros(3, *self.size), index, False
