"""ONNX Runtime backend: the CPU default, and the CUDA execution provider where it is installed."""

from __future__ import annotations

import logging

import numpy as np

from vpr_ros.backends.base import EmbeddingBackend
from vpr_ros.bundle import ModelBundle
from vpr_ros.errors import BackendError

log = logging.getLogger(__name__)


class OnnxRuntimeBackend(EmbeddingBackend):
    """``model.onnx`` in an ``InferenceSession``. ``device`` is ``cpu`` or ``cuda:<id>``; a CUDA
    request fails (BackendError) instead of silently falling back to the CPU, so ``auto`` can log
    which provider really runs. ``threads`` = 0 lets ONNX Runtime use every core (the nodes pass
    every core but one, see ``vpr_ros.nodes.common.inference_threads``)."""

    name = "onnxruntime"

    def __init__(
        self, bundle: ModelBundle, device: str = "cpu", max_batch: int = 16, threads: int = 0
    ) -> None:
        super().__init__(bundle, device, max_batch)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"onnxruntime is not importable ({exc}); pip install onnxruntime") from None
        if device == "cpu":
            providers: list = ["CPUExecutionProvider"]
        elif device.startswith("cuda:"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError(
                    "onnxruntime has no CUDAExecutionProvider here "
                    "(pip install onnxruntime-gpu on a CUDA machine)"
                )
            providers = [("CUDAExecutionProvider", {"device_id": int(device.split(":")[1])})]
        else:
            raise BackendError(f"onnxruntime device {device!r} is not 'cpu' or 'cuda:<id>'")
        options = ort.SessionOptions()
        self.threads = threads
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise
        try:
            self.session = ort.InferenceSession(str(bundle.onnx_path), options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            reason = " ".join(str(exc).split())
            raise BackendError(f"onnxruntime cannot load {bundle.onnx_path}: {reason}") from None
        active = self.session.get_providers()
        if providers[0] != "CPUExecutionProvider" and "CUDAExecutionProvider" not in active:
            raise BackendError(f"onnxruntime did not enable CUDA (active providers: {', '.join(active)})")
        spec = bundle.input
        shape = self.session.get_inputs()[0].shape[1:]
        if shape != [3, spec.height, spec.width]:
            raise BackendError(
                f"{bundle.onnx_path}: the graph takes images of {shape} but model.json says "
                f"[3, {spec.height}, {spec.width}]"
            )
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [bundle.input.name] or bundle.output_name not in outputs:
            raise BackendError(
                f"{bundle.onnx_path}: graph inputs {inputs} / outputs {outputs} do not match model.json "
                f"({bundle.input.name!r} -> {bundle.output_name!r})"
            )

    def describe(self) -> str:
        """``onnxruntime/cpu``, with the thread count when it was set."""
        if self.device == "cpu" and self.threads > 0:
            return f"{super().describe()} ({self.threads} thread{'s' if self.threads > 1 else ''})"
        return super().describe()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.bundle.output_name], {self.bundle.input.name: batch})[0]
