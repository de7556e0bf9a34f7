"""TensorRT for vpr_ros: engines built on the target device, cached by GPU, TensorRT version,
precision, batch profile and ONNX hash, and run as the ``tensorrt`` embedding backend.

TensorRT, PyTorch and ModelOpt are imported only when an engine is built or run, so this
package imports (and its cache logic works) on machines without a GPU.
"""

from vpr_ros.trt.builder import (
    PrecisionPlan,
    build_engine,
    ensure_engine,
    import_tensorrt,
    precision_plan,
)
from vpr_ros.trt.calibration import CalibrationSet, calibration_batches, calibration_hash, calibration_set
from vpr_ros.trt.engine_cache import (
    EngineKey,
    GpuIdentity,
    engine_key,
    engine_lock,
    gpu_identity,
    lookup,
    store,
)
from vpr_ros.trt.runtime import TensorRTBackend

__all__ = [
    "CalibrationSet",
    "EngineKey",
    "GpuIdentity",
    "PrecisionPlan",
    "TensorRTBackend",
    "build_engine",
    "calibration_batches",
    "calibration_hash",
    "calibration_set",
    "engine_key",
    "engine_lock",
    "ensure_engine",
    "gpu_identity",
    "import_tensorrt",
    "lookup",
    "precision_plan",
    "store",
]
