"""PyTorch backend: the reference. Runs the bundle's ``torch.export`` program (``model.pt2``).

On CUDA it can run in FP16 autocast and channels-last memory format; on a CPU it is the eager
reference the other backends are checked against. Loading a ``.pt2`` archive unpickles its
sample inputs when ``weights_only`` loading fails, so every torch-serialised member is first
loaded here with ``weights_only=True``; an archive needing more than tensors is refused.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from vpr_ros.backends.base import EmbeddingBackend
from vpr_ros.bundle import TORCH_FILE, ModelBundle
from vpr_ros.errors import BackendError, BundleError

PRECISIONS = ("fp32", "fp16")


def _check_no_pickled_objects(path: Path) -> None:
    """Refuse a program archive whose torch-serialised members hold anything but tensors."""
    import torch

    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                data = archive.read(member) if member.endswith(".pt") else b""
                if data:  # torch.export reads an empty member as "no sample inputs"
                    torch.load(io.BytesIO(data), weights_only=True)
    except zipfile.BadZipFile:
        raise BundleError(f"{path}: not a torch.export archive") from None
    except Exception as exc:  # weights_only refusals are pickle.UnpicklingError
        raise BundleError(
            f"{path}: holds objects other than tensors ({type(exc).__name__}); "
            "refused (no pickle from user files)"
        ) from None


class TorchBackend(EmbeddingBackend):
    """``device`` is ``cpu`` or ``cuda:<id>``; ``precision`` fp16 runs under CUDA autocast;
    ``channels_last`` reorders the input (and thereby the convolutions) for tensor cores."""

    name = "torch"

    def __init__(
        self,
        bundle: ModelBundle,
        device: str = "cpu",
        max_batch: int = 16,
        precision: str = "fp32",
        channels_last: bool = False,
    ) -> None:
        super().__init__(bundle, device, max_batch)
        try:
            import torch
        except ImportError as exc:
            raise BackendError(f"torch is not importable ({exc})") from None
        if precision not in PRECISIONS:
            raise BackendError(f"torch backend precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if precision == "fp16" and not device.startswith("cuda"):
            raise BackendError("torch backend: fp16 autocast needs a CUDA device")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch backend: CUDA requested but torch.cuda.is_available() is False")
        if bundle.torch_path is None:
            raise BackendError(f"model bundle {bundle.path}: has no {TORCH_FILE} (exported without it)")
        _check_no_pickled_objects(bundle.torch_path)
        try:
            program = torch.export.load(str(bundle.torch_path))
        except Exception as exc:
            reason = " ".join(str(exc).split())
            raise BundleError(f"{bundle.torch_path}: cannot be loaded ({reason})") from None
        self._torch = torch
        self.precision = precision
        self.channels_last = channels_last
        self.module = program.module().to(device)
        self.torch_device = torch.device(device)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.torch_device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.torch_device.type, torch.float16, enabled=self.precision == "fp16"):
                y = self.module(x)
            return y.float().cpu().numpy()
