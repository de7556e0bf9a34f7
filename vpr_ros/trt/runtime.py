"""The TensorRT embedding backend: a cached (or freshly built) engine run on one CUDA device.

Device buffers and the CUDA stream are PyTorch's (PyTorch is a dependency of this backend
anyway and avoids a second CUDA binding); the engine runs through the tensor-address API
(``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), the only one TensorRT
10 and 11 share. At load the engine's I/O names, shapes and types are checked against the
bundle, so an engine that does not compute this bundle's descriptors is refused, not run.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from vpr_ros.backends.base import EmbeddingBackend
from vpr_ros.bundle import ModelBundle
from vpr_ros.errors import BackendError
from vpr_ros.trt.builder import ensure_engine, import_tensorrt, supported_major, trt_logger
from vpr_ros.trt.calibration import CalibrationSet
from vpr_ros.trt.engine_cache import EngineKey, engine_key, gpu_identity, lookup

log = logging.getLogger(__name__)


class TensorRTBackend(EmbeddingBackend):
    """Runs a bundle with TensorRT on ``cuda:<device_id>``; see :meth:`open`."""

    name = "tensorrt"

    @classmethod
    def open(
        cls,
        bundle: ModelBundle,
        precision: str = "fp16",
        device_id: int = 0,
        cache_dir: Path | None = None,
        build_if_missing: bool = True,
        max_batch: int = 16,
        calibration: CalibrationSet | None = None,
    ) -> TensorRTBackend:
        """Load the bundle's engine for this GPU from the cache, building it first when allowed.

        BackendError says why TensorRT cannot run here: not importable, no CUDA device, no valid
        engine while building is not allowed, or an engine TensorRT cannot deserialize.
        """
        trt = import_tensorrt()
        supported_major(trt)
        key = engine_key(bundle, gpu_identity(device_id), trt.__version__, precision, max_batch)
        cache_dir = Path(cache_dir) if cache_dir is not None else bundle.engine_dir
        if build_if_missing:
            path, _ = ensure_engine(bundle, key, cache_dir, calibration=calibration, device_id=device_id)
        elif (path := lookup(cache_dir, key)) is None:
            raise BackendError(
                f"no valid TensorRT engine {key.filename()} in {cache_dir} and building is not allowed: "
                f"run 'vpr-build-engine --bundle {bundle.path} --precision {precision} "
                f"--max-batch {max_batch}' on this device"
            )
        return cls(bundle, trt, key, path, device_id, max_batch)

    def __init__(
        self, bundle: ModelBundle, trt: ModuleType, key: EngineKey, path: Path, device_id: int, max_batch: int
    ) -> None:
        """Deserialize ``path`` (an engine for ``key``) and allocate its buffers; prefer :meth:`open`."""
        import torch

        super().__init__(bundle, f"cuda:{device_id}", max_batch)
        self.key = key
        self.engine_path = path
        self._torch = torch
        self._cuda = torch.device("cuda", device_id)
        self._lock = threading.Lock()  # an execution context runs one inference at a time
        spec = bundle.input
        with torch.cuda.device(self._cuda):
            self._runtime = trt.Runtime(trt_logger(trt))  # must outlive the engine
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise BackendError(
                    f"TensorRT could not deserialize {path} (its log above says why); delete it to rebuild"
                )
            check_engine_io(trt, self._engine, bundle, max_batch)
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise BackendError(f"TensorRT could not create an execution context for {path} (GPU memory?)")
            self._stream = torch.cuda.Stream(self._cuda)
            self._input = torch.empty(
                (max_batch, 3, spec.height, spec.width), dtype=torch.float32, device=self._cuda
            )
            self._output = torch.empty(
                (max_batch, bundle.descriptor_dim), dtype=torch.float32, device=self._cuda
            )
        log.info("TensorRT engine %s loaded on %s", path.name, self.device)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = len(batch)
        spec = self.bundle.input
        with self._lock, torch.cuda.device(self._cuda), torch.cuda.stream(self._stream):
            self._input[:n].copy_(torch.from_numpy(batch))
            context = self._context
            if not context.set_input_shape(spec.name, (n, 3, spec.height, spec.width)):
                raise BackendError(f"TensorRT refused input shape [{n}, 3, {spec.height}, {spec.width}]")
            # slices [:n] start at the buffers' first element, so the addresses hold for any n
            context.set_tensor_address(spec.name, self._input.data_ptr())
            context.set_tensor_address(self.bundle.output_name, self._output.data_ptr())
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise BackendError("TensorRT execution failed (its log above says why)")
            out = self._output[:n].to("cpu")  # waits for the stream
        return out.numpy()

    def close(self) -> None:
        """Free the execution context, engine and device buffers."""
        self._context = self._engine = self._runtime = None
        self._input = self._output = None


def check_engine_io(trt: ModuleType, engine: Any, bundle: ModelBundle, max_batch: int) -> None:
    """BackendError unless ``engine`` takes float32 [N, 3, H, W] named as the bundle's input (N up to
    ``max_batch``) and returns float32 [N, D] named as the bundle's output."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    spec = bundle.input
    if inputs != [spec.name] or outputs != [bundle.output_name]:
        raise BackendError(
            f"engine has inputs {inputs} and outputs {outputs}; the bundle has input {spec.name!r} and "
            f"output {bundle.output_name!r}"
        )
    in_shape = tuple(engine.get_tensor_shape(spec.name))
    out_shape = tuple(engine.get_tensor_shape(bundle.output_name))
    if (
        in_shape[1:] != (3, spec.height, spec.width)
        or len(out_shape) != 2
        or out_shape[1] != bundle.descriptor_dim
    ):
        raise BackendError(
            f"engine maps {list(in_shape)} to {list(out_shape)}; the bundle maps "
            f"[N, 3, {spec.height}, {spec.width}] to [N, {bundle.descriptor_dim}]"
        )
    for name in names:
        if engine.get_tensor_dtype(name) != trt.float32:
            raise BackendError(f"engine tensor {name!r} is {engine.get_tensor_dtype(name)}, not float32")
    largest = tuple(engine.get_tensor_profile_shape(spec.name, 0)[2])[0]
    if largest < max_batch:
        raise BackendError(f"engine takes batches of at most {largest}, {max_batch} were asked for")
