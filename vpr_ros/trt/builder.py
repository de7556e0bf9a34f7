"""Builds a bundle's TensorRT engine on the GPU it will run on, and keeps it in the engine cache.

An engine only runs on the GPU architecture and TensorRT version it was built with, so it is
built on the target device (a Jetson's engine on that Jetson) from the bundle's ONNX file, with
one optimization profile over the batch size (min/opt/max) at the bundle's fixed H x W.

Precision is where TensorRT 10 and 11 part ways, and :func:`precision_plan` is the only place
that tells them apart:

- TensorRT 10 (x86 and JetPack 6, which ships 10.3): weakly typed networks. FP16 is
  ``BuilderFlag.FP16``; INT8 is ``BuilderFlag.INT8`` with an ``IInt8EntropyCalibrator2`` fed
  with calibration images (:mod:`vpr_ros.trt.calibration`), its cache keyed by the set's hash.
- TensorRT 11: those flags and calibrators are removed and networks are strongly typed. FP16
  means converting the ONNX to mixed precision with NVIDIA ModelOpt AutoCast first; INT8 means
  ModelOpt ONNX post-training quantization (explicit Q/DQ nodes, calibrated on the same images).
  Inputs and outputs stay FP32 either way, so every engine takes and returns float32.

TensorRT, PyTorch, ModelOpt and onnx are imported inside functions: this module imports (and
its cache logic is tested) on machines without them.
"""

from __future__ import annotations

import functools
import importlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tqdm import tqdm

from vpr_ros.bundle import ModelBundle
from vpr_ros.errors import BackendError
from vpr_ros.trt.calibration import CalibrationSet
from vpr_ros.trt.engine_cache import (
    DEFAULT_LOCK_TIMEOUT_S,
    EngineKey,
    atomic_write,
    calibration_cache_path,
    engine_lock,
    lookup,
    short_version,
    store,
    timing_cache_path,
)

DEFAULT_WORKSPACE_MB = 2048
MODELOPT_INSTALL = "pip install 'nvidia-modelopt[onnx]'"
_PROTOBUF_LIMIT = 2**31 - 1  # a larger ONNX model must keep its weights in an external file

log = logging.getLogger(__name__)


# --- the TensorRT module --------------------------------------------------------------------------


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a BackendError saying it cannot be imported here and why."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise BackendError(
            f"TensorRT is not importable here ({exc}); install the TensorRT Python wheel for this CUDA "
            "(on a Jetson it comes with JetPack), or use the onnxruntime backend"
        ) from None
    return tensorrt


def supported_major(trt: ModuleType) -> int:
    """TensorRT's major version; BackendError below 10 (JetPack 5's 8.x lacks the APIs used here)."""
    major = int(short_version(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendError(
            f"TensorRT {trt.__version__} is not supported: vpr_ros needs TensorRT 10.x (JetPack 6) or 11.x"
        )
    return major


@functools.cache
def trt_logger(trt: ModuleType) -> Any:
    """One logger per process, as TensorRT recommends; warnings and errors go to stderr."""
    return trt.Logger(trt.Logger.WARNING)


# --- precision: the one place where TensorRT 10 and 11 differ -------------------------------------


@dataclass(frozen=True)
class PrecisionPlan:
    """How one precision is obtained with one TensorRT major version."""

    onnx_rewrite: str | None  # None | "autocast_fp16" | "modelopt_int8" (TensorRT >= 11)
    builder_flags: tuple[str, ...]  # names in trt.BuilderFlag (TensorRT 10 only)
    legacy_calibrator: bool  # IInt8EntropyCalibrator2 (TensorRT 10 only)
    strongly_typed: bool

    @property
    def needs_calibration(self) -> bool:
        return self.legacy_calibrator or self.onnx_rewrite == "modelopt_int8"


def precision_plan(trt_major: int, precision: str) -> PrecisionPlan:
    """The build recipe for ``precision`` under TensorRT ``trt_major`` (10, or 11 and later)."""
    if trt_major == 10:
        plans = {
            "fp32": PrecisionPlan(None, (), False, False),
            "fp16": PrecisionPlan(None, ("FP16",), False, False),
            # FP16 too: layers INT8 cannot run fall back to FP16 rather than FP32 (trtexec --int8 --fp16)
            "int8": PrecisionPlan(None, ("FP16", "INT8"), True, False),
        }
    elif trt_major >= 11:
        plans = {
            "fp32": PrecisionPlan(None, (), False, True),
            "fp16": PrecisionPlan("autocast_fp16", (), False, True),
            "int8": PrecisionPlan("modelopt_int8", (), False, True),
        }
    else:
        raise BackendError(f"TensorRT {trt_major}.x is not supported: vpr_ros needs TensorRT 10.x or 11.x")
    if precision not in plans:
        raise BackendError(f"precision {precision!r} is unknown ({', '.join(plans)})")
    return plans[precision]


# --- building -------------------------------------------------------------------------------------


def build_engine(
    bundle: ModelBundle,
    key: EngineKey,
    calibration: CalibrationSet | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: Path | None = None,
    calibration_cache: Path | None = None,
    device_id: int = 0,
    progress: bool = True,
) -> bytes:
    """Serialized engine for ``key`` built from ``bundle.onnx_path`` with the installed TensorRT.

    ``calibration`` is required for INT8. ``timing_cache`` is read if it exists and written
    back after the build; ``calibration_cache`` (TensorRT 10 INT8) likewise. Takes minutes.
    """
    trt = import_tensorrt()
    if trt.__version__ != key.trt_version:
        raise BackendError(
            f"engine key is for TensorRT {key.trt_version}, but {trt.__version__} is installed"
        )
    plan = precision_plan(supported_major(trt), key.precision)
    if plan.needs_calibration and calibration is None:
        raise BackendError(
            "INT8 engines need calibration images: vpr-build-engine --precision int8 --calibration DIR_OR_BAG"
        )
    with tempfile.TemporaryDirectory(prefix="vpr_trt_") as work:
        onnx_path = _prepare_onnx(bundle, plan, calibration, Path(work), device_id)
        # the parser owns the weights and the calibrator is called back: both live until the build ends
        builder, network, parser = _parse_network(trt, onnx_path, plan)
        calibrator = (
            _entropy_calibrator(trt, calibration, calibration_cache, device_id)
            if plan.legacy_calibrator
            else None
        )
        config = _builder_config(trt, builder, bundle, key, plan, calibrator, workspace_mb)
        _use_timing_cache(config, timing_cache)
        monitor = _progress_monitor(trt) if progress else None
        if monitor is not None:
            config.progress_monitor = monitor
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT could not build an engine for {key.describe()}; its log above says why")
    if timing_cache is not None:
        atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _parse_network(trt: ModuleType, onnx_path: Path, plan: PrecisionPlan) -> tuple[Any, Any, Any]:
    """(builder, network, parser) with ``onnx_path`` parsed; every parser error is reported."""
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    # from the file, so that weights stored beside it are found
    if not parser.parse_from_file(str(onnx_path)):
        errors = [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
        for error in errors:
            log.error("TensorRT ONNX parser: %s", error)
        raise BackendError(
            f"TensorRT cannot parse {onnx_path.name}: {'; '.join(errors) or 'no error reported'}"
        )
    return builder, network, parser


def _builder_config(
    trt: ModuleType,
    builder: Any,
    bundle: ModelBundle,
    key: EngineKey,
    plan: PrecisionPlan,
    calibrator: Any,
    workspace_mb: int,
) -> Any:
    """Workspace limit, the batch profile and the precision of ``plan``."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.add_optimization_profile(_profile(builder, bundle, key.batch))
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if calibrator is not None:
        config.int8_calibrator = calibrator
        # TensorRT calibrates at this profile's shape: exactly one calibration batch
        config.set_calibration_profile(_profile(builder, bundle, (calibrator.batch_size,) * 3))
    return config


def _network_flags(trt: ModuleType, plan: PrecisionPlan) -> int:
    """Explicit batch is the only mode since TensorRT 10 (no flag). Strong typing is a flag in
    TensorRT 10 and always on in 11, which keeps the flag (ignored) for compatibility."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None) if plan.strongly_typed else None
    return 0 if flag is None else 1 << int(flag)


def _profile(builder: Any, bundle: ModelBundle, batch: tuple[int, int, int]) -> Any:
    """Optimization profile over the batch size only: H x W is fixed per bundle."""
    spec = bundle.input
    profile = builder.create_optimization_profile()
    low, opt, high = ((n, 3, spec.height, spec.width) for n in batch)
    profile.set_shape(spec.name, low, opt, high)
    return profile


def _use_timing_cache(config: Any, path: Path | None) -> None:
    """Start from the saved timing cache when it exists and fits this GPU/TensorRT, else from empty."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    if data:
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            log.info("using the timing cache %s", path)
            return
        log.warning("timing cache %s does not fit this GPU or TensorRT; starting a new one", path)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _progress_monitor(trt: ModuleType) -> Any:
    """An ``IProgressMonitor`` drawing one tqdm bar per build phase (nested phases below)."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, tqdm] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._bars[phase_name] = tqdm(
                total=num_steps, desc=phase_name, position=len(self._bars), leave=parent_phase is None
            )

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self._bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = self._bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return _Monitor()


def _entropy_calibrator(
    trt: ModuleType, calibration: CalibrationSet, cache_file: Path | None, device_id: int
) -> Any:
    """TensorRT 10's INT8 calibrator: feeds full batches of calibration frames from CUDA memory.

    TensorRT calibrates at the calibration profile's shape, so every batch must have exactly
    ``batch_size`` frames: a smaller last batch is left out (sets smaller than one batch are
    calibrated as one batch of all frames).
    """
    import torch

    device = torch.device("cuda", device_id)

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batch_size = min(calibration.batch, len(calibration))
            self._batches = calibration.batches()
            self._current = None  # the device batch TensorRT is reading

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None or len(batch) != self.batch_size:
                return None
            self._current = torch.from_numpy(batch).to(device)
            return [int(self._current.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            if cache_file is not None and cache_file.is_file():
                log.info("INT8 calibration: reusing %s", cache_file)
                return cache_file.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_file is not None:
                atomic_write(cache_file, bytes(cache))

    return _Calibrator()


# --- ONNX rewrites for TensorRT 11 (ModelOpt) -----------------------------------------------------


def _prepare_onnx(
    bundle: ModelBundle, plan: PrecisionPlan, calibration: CalibrationSet | None, work: Path, device_id: int
) -> Path:
    """The ONNX file TensorRT parses: the bundle's, or its ModelOpt rewrite in ``work``."""
    if plan.onnx_rewrite is None:
        return bundle.onnx_path
    if plan.onnx_rewrite == "autocast_fp16":
        return _autocast_fp16(bundle.onnx_path, work / "model_fp16.onnx")
    return _modelopt_int8(bundle, calibration, work, device_id)


def _import_modelopt(module: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(
            f"TensorRT 11 builds {purpose} engines from an ONNX file rewritten by NVIDIA ModelOpt, which is "
            f"not importable ({exc}): {MODELOPT_INSTALL}"
        ) from None


def _autocast_fp16(source: Path, target: Path) -> Path:
    """Mixed-precision FP16 copy of ``source`` (ModelOpt AutoCast keeps sensitive nodes in FP32)."""
    autocast = _import_modelopt("modelopt.onnx.autocast", "FP16")
    import onnx

    log.info("converting %s to mixed precision FP16 with ModelOpt AutoCast", source.name)
    model = autocast.convert_to_mixed_precision(
        onnx_path=str(source), low_precision_type="fp16", keep_io_types=True
    )
    onnx.save_model(model, str(target), save_as_external_data=model.ByteSize() > _PROTOBUF_LIMIT)
    return target


def _modelopt_int8(bundle: ModelBundle, calibration: CalibrationSet, work: Path, device_id: int) -> Path:
    """INT8 Q/DQ copy of the bundle's ONNX, calibrated (entropy) on ``calibration``.

    Layers left unquantized run in FP16 (ModelOpt's default ``high_precision_dtype``), as with
    TensorRT 10's INT8 + FP16 flags; I/O stay FP32. ModelOpt writes intermediate files beside
    its input, so it works on a copy in ``work``.
    """
    quantization = _import_modelopt("modelopt.onnx.quantization", "INT8")
    source, target = work / "model.onnx", work / "model_int8.onnx"
    shutil.copyfile(bundle.onnx_path, source)
    spec = bundle.input
    log.info("quantizing %s to INT8 with ModelOpt on %s", bundle.onnx_path.name, calibration.describe())
    quantization.quantize(
        onnx_path=str(source),
        quantize_mode="int8",
        calibration_data={spec.name: calibration.array()},
        calibration_method="entropy",
        calibration_shapes=f"{spec.name}:{calibration.batch}x3x{spec.height}x{spec.width}",
        calibration_eps=[f"cuda:{device_id}", "cpu"],
        output_path=str(target),
    )
    if not target.is_file():
        raise BackendError(f"ModelOpt quantization of {bundle.onnx_path} wrote no model")
    return target


# --- cache + lock + build -------------------------------------------------------------------------


def ensure_engine(
    bundle: ModelBundle,
    key: EngineKey,
    cache_dir: Path | None = None,
    calibration: CalibrationSet | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: Path | None = None,
    device_id: int = 0,
    force: bool = False,
    progress: bool = True,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> tuple[Path, bool]:
    """(engine path, whether it was built now): the valid cached engine for ``key``, or a new one.

    Builds hold the key's lock; a process that waited for it looks again before building, so
    nodes starting together build once. With ``calibration`` (INT8), an engine calibrated on
    another set counts as stale. ``force`` rebuilds even over a valid engine.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else bundle.engine_dir
    require = {"calibration_sha256": calibration.sha256} if key.precision == "int8" and calibration else None
    if not force and (path := lookup(cache_dir, key, require)) is not None:
        return path, False
    with engine_lock(cache_dir, key, lock_timeout_s):
        if not force and (path := lookup(cache_dir, key, require)) is not None:
            log.info("another process built %s while this one waited", path.name)
            return path, False
        timing_cache = timing_cache or timing_cache_path(cache_dir, key)
        calibration_cache = (
            calibration_cache_path(cache_dir, key, calibration.sha256) if calibration else None
        )
        log.warning("building the TensorRT engine for %s; this can take minutes", key.describe())
        started = time.monotonic()
        engine = build_engine(
            bundle, key, calibration, workspace_mb, timing_cache, calibration_cache, device_id, progress
        )
        settings = _settings(key, calibration, workspace_mb, timing_cache, time.monotonic() - started)
        return store(cache_dir, key, engine, settings), True


def _settings(
    key: EngineKey, calibration: CalibrationSet | None, workspace_mb: int, timing_cache: Path, seconds: float
) -> dict[str, Any]:
    """The build settings the sidecar records."""
    plan = precision_plan(key.trt_major, key.precision)
    settings: dict[str, Any] = {
        "workspace_mb": workspace_mb,
        "timing_cache": str(timing_cache),
        "builder_flags": list(plan.builder_flags),
        "onnx_rewrite": plan.onnx_rewrite,
        "strongly_typed": plan.strongly_typed,
        "build_seconds": round(seconds, 1),
    }
    if key.precision == "int8" and calibration is not None:
        settings.update(
            calibration_sha256=calibration.sha256,
            calibration_source=str(calibration.source),
            calibration_topic=calibration.topic,
            calibration_frames=len(calibration),
            calibration_method="entropy",
        )
    return settings
