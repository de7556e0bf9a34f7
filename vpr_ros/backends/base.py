"""The interface every inference backend implements: RGB uint8 images in, descriptors out."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from vpr_ros.bundle import ModelBundle
from vpr_ros.errors import BackendError
from vpr_ros.preprocess import to_input_batch


class EmbeddingBackend(abc.ABC):
    """Runs one model bundle. ``embed`` takes RGB uint8 images of any size and returns float32
    descriptors [N, D], L2-normalised by the graph itself; every backend returns the same
    descriptors to within float tolerance, so a map built with one can be searched with another.

    Subclasses implement ``_run`` on a preprocessed float32 batch of at most ``max_batch`` images
    and set ``name`` (``tensorrt`` | ``onnxruntime`` | ``torch``) and ``device`` (``cpu``, ``cuda:0``).
    """

    name: str = ""

    def __init__(self, bundle: ModelBundle, device: str, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.bundle = bundle
        self.device = device
        self.max_batch = max_batch

    @abc.abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """float32 [n, 3, H, W] with 1 <= n <= max_batch -> float32 [n, D]."""

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Descriptors [N, D] of RGB uint8 images [H, W, 3] (any sizes; resized as model.json says)."""
        return self.embed_batch(to_input_batch(images, self.bundle.input))

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """Descriptors of an already preprocessed float32 batch [N, 3, H, W] at the bundle's size."""
        spec = self.bundle.input
        if batch.ndim != 4 or batch.shape[1:] != (3, spec.height, spec.width):
            raise ValueError(
                f"input batch must be [N, 3, {spec.height}, {spec.width}] for this bundle, "
                f"got {list(batch.shape)}"
            )
        dim = self.bundle.descriptor_dim
        if len(batch) == 0:
            return np.zeros((0, dim), np.float32)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        parts = [self._run(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        out = np.concatenate(parts).astype(np.float32, copy=False)
        if out.shape != (len(batch), dim):
            raise BackendError(
                f"{self.name} returned descriptors of shape {list(out.shape)}, expected [N, {dim}]"
            )
        return out

    def describe(self) -> str:
        """``<backend>/<device>``: the diagnostics hardware id."""
        return f"{self.name}/{self.device}"
