"""Images to the network's input tensor, exactly as the bundle's ``model.json`` says.

Training reads files with ``training.datasets.images.load_image`` (OpenCV INTER_AREA resize to
H x W, RGB, divided by 255); this module does the same to camera frames, so the robot's
descriptors are those the network was trained and evaluated on. Mean/std normalisation is inside
the graph and does not happen here.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from vpr_ros.bundle import InputSpec
from vpr_ros.errors import InputError

_INTERPOLATION = {"area": cv2.INTER_AREA}


def check_rgb(image: np.ndarray, index: int = 0) -> np.ndarray:
    """An RGB uint8 [H, W, 3] array, or an InputError naming what is wrong with image ``index``."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image {index}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"image {index}: expected uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image {index}: expected shape [H, W, 3], got {list(image.shape)}")
    return image


def to_input(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """One RGB uint8 image [H, W, 3] of any size -> float32 [3, h, w] in [0, 1] at the bundle's size."""
    if image.shape[:2] != spec.size:
        image = cv2.resize(image, (spec.width, spec.height), interpolation=_INTERPOLATION[spec.interpolation])
    # x / 255 (not x * (1 / 255)): bit-identical to training's tensor.float().div_(255.0)
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def to_input_batch(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """RGB uint8 images of any sizes -> one float32 batch [N, 3, h, w]; every image is checked."""
    if len(images) == 0:
        return np.zeros((0, 3, spec.height, spec.width), np.float32)
    return np.stack([to_input(check_rgb(image, i), spec) for i, image in enumerate(images)])
