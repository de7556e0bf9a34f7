"""Inference backends behind one interface (``EmbeddingBackend``), and ``create_backend``.

``auto`` tries TensorRT > ONNX Runtime CUDA > ONNX Runtime CPU > PyTorch and logs why each
faster option was passed over, so a robot's log says what it really runs and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from vpr_ros.backends.base import EmbeddingBackend
from vpr_ros.bundle import ModelBundle
from vpr_ros.errors import BackendError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
PRECISIONS = ("fp32", "fp16", "int8")

__all__ = ["BACKENDS", "PRECISIONS", "EmbeddingBackend", "create_backend"]


def _tensorrt(bundle, precision, device_id, max_batch, engine_cache_dir, build_engine_if_missing, _threads):
    from vpr_ros.trt.runtime import TensorRTBackend

    return TensorRTBackend.open(
        bundle,
        precision=precision,
        device_id=device_id,
        cache_dir=engine_cache_dir,
        build_if_missing=build_engine_if_missing,
        max_batch=max_batch,
    )


def _ort_cuda(bundle, precision, device_id, max_batch, *_):
    from vpr_ros.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(bundle, f"cuda:{device_id}", max_batch)


def _ort_cpu(bundle, precision, device_id, max_batch, _cache, _build, cpu_threads):
    from vpr_ros.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(bundle, "cpu", max_batch, threads=cpu_threads)


def _torch(bundle, precision, device_id, max_batch, *_):
    import torch

    from vpr_ros.backends.torch import TorchBackend

    cuda = torch.cuda.is_available()
    return TorchBackend(
        bundle,
        f"cuda:{device_id}" if cuda else "cpu",
        max_batch,
        precision="fp16" if cuda and precision == "fp16" else "fp32",
        channels_last=cuda,
    )


_CHOICES: dict[str, list[tuple[str, Callable[..., EmbeddingBackend]]]] = {
    "tensorrt": [("TensorRT", _tensorrt)],
    "onnxruntime": [("ONNX Runtime CUDA", _ort_cuda), ("ONNX Runtime CPU", _ort_cpu)],
    "torch": [("PyTorch", _torch)],
}
_CHOICES["auto"] = _CHOICES["tensorrt"] + _CHOICES["onnxruntime"] + _CHOICES["torch"]


def create_backend(
    bundle: ModelBundle,
    backend: str = "auto",
    precision: str = "fp16",
    device_id: int = 0,
    max_batch: int = 16,
    engine_cache_dir: Path | None = None,
    build_engine_if_missing: bool = True,
    cpu_threads: int = 0,
) -> EmbeddingBackend:
    """The first backend of ``backend``'s candidates that works here.

    ``precision`` applies where the backend has it (TensorRT fp32/fp16/int8, PyTorch fp16 autocast on
    CUDA); ONNX Runtime always computes in fp32. ``onnxruntime`` tries CUDA, then the CPU.
    ``cpu_threads`` is ONNX Runtime's thread count on the CPU (0 = every core). Raises a
    BackendError listing every reason when nothing works.
    """
    if backend not in BACKENDS:
        raise BackendError(f"backend {backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise BackendError(f"precision {precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    reasons = []
    for label, make in _CHOICES[backend]:
        try:
            options = (engine_cache_dir, build_engine_if_missing, cpu_threads)
            chosen = make(bundle, precision, device_id, max_batch, *options)
        except (BackendError, ImportError) as exc:
            reasons.append(f"{label}: {exc}")
            log.debug("backend %s: %s not used: %s", backend, label, exc)  # said once, below
            continue
        passed = f" (passed over: {'; '.join(reasons)})" if reasons else ""
        log.info("backend %s -> %s%s", backend, chosen.describe(), passed)
        return chosen
    raise BackendError(f"no {backend} backend works here: " + "; ".join(reasons))
