"""The TensorRT engine cache, builder dispatch, calibration sources and ``vpr-build-engine``.

TensorRT cannot be installed on the development machines (no GPU; PyPI's wheels download the
real library from NVIDIA's index), so everything around the library is tested without it:
cache keys, staleness, atomic writes, locking, calibration from folders and bags, the CLI's
errors. The builder runs against a recording stand-in for the ``tensorrt`` module (and for
ModelOpt) that has exactly the API of one major version, which checks that TensorRT 10 gets
``BuilderFlag.FP16`` / an INT8 calibrator and that TensorRT 11 gets a rewritten ONNX built
strongly typed without touching what 11 removed. That the engines compute the right
descriptors needs the real library and a GPU: ``test_real_engine_matches_onnxruntime``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import types
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore

from vpr_ros import bundle as bundle_mod
from vpr_ros.bundle import ModelBundle, load_bundle
from vpr_ros.errors import BackendError, InputError
from vpr_ros.trt import builder, engine_cache, runtime
from vpr_ros.trt.build_engine import build_parser, main
from vpr_ros.trt.builder import build_engine, ensure_engine, precision_plan
from vpr_ros.trt.calibration import calibration_batches, calibration_hash, calibration_set
from vpr_ros.trt.engine_cache import (
    EngineKey,
    GpuIdentity,
    engine_key,
    engine_lock,
    gpu_identity,
    lookup,
    sidecar_path,
    store,
)
from vpr_ros.trt.runtime import TensorRTBackend, check_engine_io

NOT_INSTALLABLE = "TensorRT is not installable on this machine (see README, Not yet verified)"
GPU = GpuIdentity("NVIDIA GeForce RTX 4090", "89", "GPU-11111111-2222-3333-4444-555555555555")
SIZE = 8  # the test bundle's input is 8 x 8
DIM = 4


# --- a minimal real bundle ------------------------------------------------------------------------


def _tiny_onnx(path: Path) -> None:
    """images [N, 3, 8, 8] -> conv 3x3 -> global average -> flatten -> L2 -> descriptors [N, 4]."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(DIM, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(size=DIM).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["images", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("LpNormalization", ["flat"], ["descriptors"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_vpr",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("descriptors", TensorProto.FLOAT, ["N", DIM])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))


@pytest.fixture
def bundle(tmp_path: Path) -> ModelBundle:
    directory = tmp_path / "bundle"
    directory.mkdir()
    _tiny_onnx(directory / bundle_mod.ONNX_FILE)
    sha = bundle_mod.sha256_file(directory / bundle_mod.ONNX_FILE)
    inp = {"name": "images", "height": SIZE, "width": SIZE, "resize": "stretch", "interpolation": "area"}
    out = {"name": "descriptors", "dim": DIM}
    meta = {
        "schema": bundle_mod.SCHEMA,
        "files": {bundle_mod.ONNX_FILE: {"sha256": sha}},
        "input": inp,
        "output": out,
        "content_hash": bundle_mod.content_hash(sha, inp, out),
        "architecture": {"backbone": "tiny", "pooling": "gap", "dim": DIM},
    }
    (directory / bundle_mod.META_FILE).write_text(json.dumps(meta))
    return load_bundle(directory)


def _key(bundle: ModelBundle, **changes) -> EngineKey:
    fields = {"gpu": GPU, "trt_version": "10.3.0", "precision": "fp16", "max_batch": 16} | changes
    return engine_key(bundle, fields["gpu"], fields["trt_version"], fields["precision"], fields["max_batch"])


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- keys -----------------------------------------------------------------------------------------


def test_key_filename_names_everything_the_engine_depends_on(bundle: ModelBundle) -> None:
    key = _key(bundle, trt_version="10.3.0.30")
    assert key.filename() == (
        f"nvidia-geforce-rtx-4090-sm89_trt10.3.0_fp16_b1-1-16_8x8_{bundle.onnx_sha256[:8]}.engine"
    )
    assert key.trt_major == 10
    assert key.to_dict()["trt_version"] == "10.3.0.30"  # compared in full, named by major.minor.patch
    assert "GPU-11111111" in key.describe() and "TensorRT 10.3.0.30" in key.describe()
    assert _key(bundle, precision="int8", max_batch=4).filename().split("_")[2:4] == ["int8", "b1-1-4"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"precision": "bf16"}, "precision 'bf16' is unknown"), ({"max_batch": 0}, "1 <= min <= opt <= max")],
)
def test_key_refuses_bad_settings(bundle: ModelBundle, changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        _key(bundle, **changes)


# --- lookup and staleness -------------------------------------------------------------------------


def test_lookup_hit_and_sidecar_content(bundle: ModelBundle, tmp_path: Path) -> None:
    key = _key(bundle)
    path = store(tmp_path, key, b"engine bytes", {"workspace_mb": 512})
    assert lookup(tmp_path, key) == path
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["schema"] == engine_cache.SIDECAR_SCHEMA
    assert sidecar["tensorrt_version"] == "10.3.0"
    assert sidecar["gpu"] == {"name": GPU.name, "uuid": GPU.uuid, "compute_capability": "89"}
    assert sidecar["onnx_sha256"] == bundle.onnx_sha256
    assert sidecar["builder"] == {"workspace_mb": 512}
    assert {"cuda_version", "driver_version", "built_at", "engine_sha256"} <= sidecar.keys()


@pytest.mark.parametrize(
    ("stored", "wanted", "reason"),
    [
        # another file name: the miss is explained from the sibling's sidecar
        ({"trt_version": "10.3.0"}, {"trt_version": "10.4.0"}, "stale: built with TensorRT 10.3.0"),
        # same file name (same major.minor.patch), other build: refused by the sidecar
        ({"trt_version": "10.3.0.26"}, {"trt_version": "10.3.0.30"}, "stale: built with TensorRT 10.3.0.26"),
        ({"gpu": GPU}, {"gpu": GpuIdentity(GPU.name, "89", "GPU-other")}, "foreign: built on NVIDIA GeForce"),
        ({"gpu": GPU}, {"gpu": GpuIdentity("Orin", "87", "GPU-jetson")}, "foreign: built on"),
    ],
)
def test_lookup_misses_stale_or_foreign_engines(
    bundle: ModelBundle, tmp_path: Path, caplog, stored: dict, wanted: dict, reason: str
) -> None:
    store(tmp_path, _key(bundle, **stored), b"engine bytes", {})
    with caplog.at_level(logging.INFO, logger="vpr_ros.trt"):
        assert lookup(tmp_path, _key(bundle, **wanted)) is None
    assert reason in caplog.text


def test_lookup_misses_engine_of_another_onnx(bundle: ModelBundle, tmp_path: Path, caplog) -> None:
    key = _key(bundle)
    other = EngineKey(**{**key.__dict__, "onnx_sha256": key.onnx_sha256[:8] + "0" * 56})  # same file name
    store(tmp_path, other, b"engine bytes", {})
    with caplog.at_level(logging.WARNING, logger="vpr_ros.trt"):
        assert lookup(tmp_path, key) is None
    assert "stale: built from another ONNX" in caplog.text and "never loaded" in caplog.text


def test_lookup_misses_corrupt_entries(bundle: ModelBundle, tmp_path: Path, caplog) -> None:
    key = _key(bundle)
    path = store(tmp_path, key, b"engine bytes", {})
    path.write_bytes(b"engine bytez")
    with caplog.at_level(logging.WARNING, logger="vpr_ros.trt"):
        assert lookup(tmp_path, key) is None
    assert "corrupt: the engine's sha256 differs" in caplog.text

    caplog.clear()
    sidecar_path(path).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="vpr_ros.trt"):
        assert lookup(tmp_path, key) is None
    assert "corrupt sidecar" in caplog.text

    caplog.clear()
    sidecar_path(path).unlink()
    with caplog.at_level(logging.WARNING, logger="vpr_ros.trt"):
        assert lookup(tmp_path, key) is None
    assert "no sidecar" in caplog.text


def test_lookup_require_compares_build_settings(bundle: ModelBundle, tmp_path: Path, caplog) -> None:
    key = _key(bundle, precision="int8")
    store(tmp_path, key, b"engine bytes", {"calibration_sha256": "aaa"})
    assert lookup(tmp_path, key, {"calibration_sha256": "aaa"}) is not None
    with caplog.at_level(logging.WARNING, logger="vpr_ros.trt"):
        assert lookup(tmp_path, key, {"calibration_sha256": "bbb"}) is None
    assert "calibration_sha256" in caplog.text


# --- atomic store ---------------------------------------------------------------------------------


def test_store_leaves_no_temporary_files(bundle: ModelBundle, tmp_path: Path) -> None:
    key = _key(bundle)
    path = store(tmp_path / "cache", key, b"first", {})
    store(tmp_path / "cache", key, b"second", {})
    assert _entries(tmp_path / "cache") == sorted([path.name, sidecar_path(path).name])
    assert path.read_bytes() == b"second" and lookup(tmp_path / "cache", key) == path


@pytest.mark.parametrize("existing", [False, True])
def test_crash_before_sidecar_leaves_no_valid_entry(
    bundle: ModelBundle, tmp_path: Path, monkeypatch, existing: bool
) -> None:
    key = _key(bundle)
    if existing:  # a forced rebuild over a valid engine
        store(tmp_path, key, b"old engine", {})
    real_replace = os.replace

    def crash_on_sidecar(src, dst) -> None:
        if str(dst).endswith(".json"):
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_sidecar)
    with pytest.raises(OSError, match="simulated crash"):
        store(tmp_path, key, b"new engine", {})
    monkeypatch.setattr(os, "replace", real_replace)
    assert not [name for name in _entries(tmp_path) if name.endswith(".tmp")]
    assert (tmp_path / key.filename()).read_bytes() == b"new engine"
    assert lookup(tmp_path, key) is None


# --- lock -----------------------------------------------------------------------------------------


def test_lock_serialises_builds_and_the_waiter_reuses_the_engine(
    bundle: ModelBundle, tmp_path: Path, monkeypatch, caplog
) -> None:
    key = _key(bundle)
    builds: list[tuple] = []

    def slow_build(
        bundle, key, calibration, workspace_mb, timing_cache, calibration_cache, device_id, progress
    ):
        builds.append((threading.current_thread().name, timing_cache))
        time.sleep(0.4)
        return b"built once"

    monkeypatch.setattr(builder, "build_engine", slow_build)
    results: dict[str, tuple[Path, bool]] = {}

    def run(name: str) -> None:
        results[name] = ensure_engine(bundle, key, tmp_path, progress=False)

    first = threading.Thread(target=run, args=("first",), name="first")
    second = threading.Thread(target=run, args=("second",), name="second")
    with caplog.at_level(logging.INFO, logger="vpr_ros.trt"):
        first.start()
        while not builds:
            time.sleep(0.01)
        second.start()
        first.join(10)
        second.join(10)
    assert [name for name, _ in builds] == ["first"]
    assert builds[0][1] == tmp_path / "nvidia-geforce-rtx-4090-sm89_trt10.3.0.timing"
    assert results["first"] == (tmp_path / key.filename(), True)
    assert results["second"] == (tmp_path / key.filename(), False)
    assert "waiting for the engine build lock" in caplog.text
    assert "pid" in caplog.text  # the waiter is told who holds the lock


def test_lock_timeout_names_the_holder(bundle: ModelBundle, tmp_path: Path) -> None:
    key = _key(bundle)
    with engine_lock(tmp_path, key) as path:
        assert path.name == f".{key.filename()}.lock"
        with (
            pytest.raises(BackendError, match=rf"{path.name} \(held by pid {os.getpid()}"),
            engine_lock(tmp_path, key, timeout_s=0.2, poll_s=0.05),
        ):
            pass
    with engine_lock(tmp_path, key, timeout_s=0.2):  # released on exit
        pass


def test_ensure_engine_force_and_calibration_change_rebuild(
    bundle: ModelBundle, tmp_path: Path, monkeypatch
) -> None:
    key = _key(bundle, precision="int8")
    count = iter(range(100))
    monkeypatch.setattr(builder, "build_engine", lambda *args: f"engine {next(count)}".encode())
    calib_a = _FakeCalibration("a" * 64)
    calib_b = _FakeCalibration("b" * 64)
    assert ensure_engine(bundle, key, tmp_path, calib_a, progress=False)[1] is True
    assert ensure_engine(bundle, key, tmp_path, calib_a, progress=False)[1] is False
    assert ensure_engine(bundle, key, tmp_path, calib_b, progress=False)[1] is True  # other calibration set
    assert ensure_engine(bundle, key, tmp_path, None, progress=False)[1] is False  # any set will do
    path, built = ensure_engine(bundle, key, tmp_path, calib_b, force=True, progress=False)
    assert built and path.read_bytes() == b"engine 2"
    builder_settings = json.loads(sidecar_path(path).read_text())["builder"]
    assert builder_settings["calibration_sha256"] == "b" * 64
    assert builder_settings["builder_flags"] == ["FP16", "INT8"]


class _FakeCalibration:
    """What ensure_engine reads of a CalibrationSet."""

    def __init__(self, sha256: str) -> None:
        self.sha256, self.source, self.topic = sha256, Path("/calib"), None

    def __len__(self) -> int:
        return 3


# --- GPU identity ---------------------------------------------------------------------------------


def test_gpu_identity_without_cuda_is_a_backend_error(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendError, match="no CUDA device"):
        gpu_identity(0)


def test_gpu_identity_reads_torch(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, uuid="abcd-ef")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    gpu = gpu_identity(0)
    assert gpu == GpuIdentity("NVIDIA H100 80GB HBM3", "90", "GPU-abcd-ef")
    assert gpu.slug == "nvidia-h100-80gb-hbm3"
    with pytest.raises(BackendError, match="CUDA device 1 does not exist"):
        gpu_identity(1)


# --- builder with a recording stand-in for the tensorrt module ------------------------------------


def fake_tensorrt(version: str) -> types.ModuleType:
    """A ``tensorrt`` module with the builder API of ``version``'s major release that records
    every call in ``trt.calls``. The 11.x one lacks what 11 removed: BuilderFlag.FP16/INT8, the
    INT8 calibrators, IBuilderConfig.int8_calibrator and set_calibration_profile."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls = []
    trt.parser_errors = []
    trt.build_result = b"serialized engine"
    trt.float32 = "float32"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    # TensorRT 10 numbers STRONGLY_TYPED 1 (after the deprecated EXPLICIT_BATCH); 11 numbers it 0
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1 if major < 11 else 0)
    trt.BuilderFlag = types.SimpleNamespace(
        **{name: name for name in (("FP16", "INT8", "TF32") if major < 11 else ("TF32",))}
    )

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity: str) -> None:
            self.severity = severity

    class IProgressMonitor:
        def __init__(self) -> None:
            calls.append(("IProgressMonitor.__init__",))

    class Profile:
        def set_shape(self, name, low, opt, high) -> None:
            self.shapes = (name, tuple(low), tuple(opt), tuple(high))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return b"timing cache after the build"

    class Config:
        removed = () if major < 11 else ("int8_calibrator",)

        def __setattr__(self, name, value) -> None:
            if name in self.removed:
                raise AttributeError(f"IBuilderConfig.{name} was removed in TensorRT 11")
            if not name.startswith("_"):
                calls.append((name, value))
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool, size) -> None:
            calls.append(("set_memory_pool_limit", pool, size))

        def add_optimization_profile(self, profile) -> int:
            calls.append(("add_optimization_profile", *profile.shapes))
            return 0

        def set_flag(self, flag) -> None:
            calls.append(("set_flag", flag))

        def create_timing_cache(self, data) -> TimingCache:
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch) -> bool:
            self._timing_cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self._timing_cache

    if major < 11:

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                calls.append(("IInt8EntropyCalibrator2.__init__",))

        def set_calibration_profile(self, profile) -> None:
            calls.append(("set_calibration_profile", *profile.shapes))

        Config.set_calibration_profile = set_calibration_profile
        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    class Builder:
        def __init__(self, logger) -> None:
            assert isinstance(logger, Logger)

        def create_network(self, flags: int = 0) -> object:
            calls.append(("create_network", flags))
            return object()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            return trt.build_result

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", Path(path).name, Path(path).read_bytes()))
            return not trt.parser_errors

        @property
        def num_errors(self) -> int:
            return len(trt.parser_errors)

        def get_error(self, i: int) -> str:
            return trt.parser_errors[i]

    trt.Logger, trt.IProgressMonitor, trt.Builder, trt.OnnxParser = (
        Logger,
        IProgressMonitor,
        Builder,
        OnnxParser,
    )
    return trt


def _calls(trt: types.ModuleType, name: str) -> list[tuple]:
    return [call[1:] for call in trt.calls if call[0] == name]


@pytest.fixture
def use_trt(monkeypatch):
    """Install a fake ``tensorrt`` of the given version for the test."""

    def install(version: str) -> types.ModuleType:
        trt = fake_tensorrt(version)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt

    return install


@pytest.fixture
def use_modelopt(monkeypatch):
    """Install fake ModelOpt modules recording their calls in the returned list."""
    calls: list[tuple[str, dict]] = []

    def convert_to_mixed_precision(**kwargs):
        calls.append(("autocast", kwargs))
        return onnx.load(kwargs["onnx_path"])

    def quantize(**kwargs):
        calls.append(("quantize", kwargs))
        Path(kwargs["output_path"]).write_bytes(Path(kwargs["onnx_path"]).read_bytes())

    autocast = types.ModuleType("modelopt.onnx.autocast")
    autocast.convert_to_mixed_precision = convert_to_mixed_precision
    quantization = types.ModuleType("modelopt.onnx.quantization")
    quantization.quantize = quantize
    for name, module in {
        "modelopt": types.ModuleType("modelopt"),
        "modelopt.onnx": types.ModuleType("modelopt.onnx"),
        "modelopt.onnx.autocast": autocast,
        "modelopt.onnx.quantization": quantization,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls


@pytest.fixture
def png_folder(tmp_path: Path) -> Path:
    """Ten 12x16 PNG images in two sub-folders; image i is filled with BGR (i*20, 100, 255 - i*20)."""
    folder = tmp_path / "calib"
    for i in range(10):
        path = folder / f"part{i // 5}" / f"img_{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((12, 16, 3), (i * 20, 100, 255 - i * 20), np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_precision_plans() -> None:
    assert precision_plan(10, "fp16").builder_flags == ("FP16",)
    assert precision_plan(10, "int8").legacy_calibrator and precision_plan(10, "int8").needs_calibration
    assert not precision_plan(10, "fp32").strongly_typed
    for precision, rewrite in (("fp32", None), ("fp16", "autocast_fp16"), ("int8", "modelopt_int8")):
        plan = precision_plan(11, precision)
        assert plan.strongly_typed and plan.builder_flags == () and not plan.legacy_calibrator
        assert plan.onnx_rewrite == rewrite
    with pytest.raises(BackendError, match="not supported"):
        precision_plan(8, "fp16")


def test_trt10_fp16_sets_the_fp16_flag(bundle: ModelBundle, tmp_path: Path, use_trt) -> None:
    trt = use_trt("10.3.0")
    timing = tmp_path / "timing"
    assert build_engine(bundle, _key(bundle), timing_cache=timing, progress=False) == b"serialized engine"
    assert _calls(trt, "create_network") == [(0,)]
    assert _calls(trt, "parse_from_file") == [("model.onnx", bundle.onnx_path.read_bytes())]
    assert _calls(trt, "set_memory_pool_limit") == [("WORKSPACE", 2048 << 20)]
    assert _calls(trt, "add_optimization_profile") == [("images", (1, 3, 8, 8), (1, 3, 8, 8), (16, 3, 8, 8))]
    assert _calls(trt, "set_flag") == [("FP16",)]
    assert not _calls(trt, "int8_calibrator") and not _calls(trt, "progress_monitor")
    assert timing.read_bytes() == b"timing cache after the build"
    build_engine(bundle, _key(bundle), timing_cache=timing, progress=False)  # the second build reads it
    assert _calls(trt, "create_timing_cache")[-1] == (b"timing cache after the build",)


def test_trt10_int8_uses_the_entropy_calibrator(
    bundle: ModelBundle, tmp_path: Path, use_trt, png_folder: Path
) -> None:
    trt = use_trt("10.3.0")
    calibration = calibration_set(png_folder, bundle.input, count=5, batch=2)
    cache = tmp_path / "calib.cache"
    build_engine(bundle, _key(bundle, precision="int8"), calibration, calibration_cache=cache, progress=False)
    assert sorted(_calls(trt, "set_flag")) == [("FP16",), ("INT8",)]
    (calibrator,) = [value for (value,) in _calls(trt, "int8_calibrator")]
    assert isinstance(calibrator, trt.IInt8EntropyCalibrator2)
    assert calibrator.get_batch_size() == 2
    assert _calls(trt, "set_calibration_profile") == [("images", (2, 3, 8, 8), (2, 3, 8, 8), (2, 3, 8, 8))]
    assert calibrator.read_calibration_cache() is None
    calibrator.write_calibration_cache(b"scales")
    assert cache.read_bytes() == b"scales" and calibrator.read_calibration_cache() == b"scales"


def test_trt10_calibrator_feeds_cuda_batches(bundle: ModelBundle, use_trt, png_folder: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (the calibrator hands TensorRT device pointers)")
    trt = use_trt("10.3.0")
    calibration = calibration_set(png_folder, bundle.input, count=5, batch=2)
    build_engine(bundle, _key(bundle, precision="int8"), calibration, progress=False)
    (calibrator,) = [value for (value,) in _calls(trt, "int8_calibrator")]
    expected = list(calibration.batches())
    for batch in expected[:2]:
        (pointer,) = calibrator.get_batch(["images"])
        assert pointer == calibrator._current.data_ptr()
        np.testing.assert_array_equal(calibrator._current.cpu().numpy(), batch)
    assert calibrator.get_batch(["images"]) is None  # the last, smaller batch is left out


def test_trt11_fp16_builds_autocast_onnx_strongly_typed(
    bundle: ModelBundle, use_trt, use_modelopt: list
) -> None:
    trt = use_trt("11.4.0")
    build_engine(bundle, _key(bundle, trt_version="11.4.0"), progress=False)
    ((name, kwargs),) = use_modelopt
    assert name == "autocast"
    assert kwargs == {"onnx_path": str(bundle.onnx_path), "low_precision_type": "fp16", "keep_io_types": True}
    assert _calls(trt, "create_network") == [(1 << 0,)]
    ((parsed, content),) = _calls(trt, "parse_from_file")
    assert parsed == "model_fp16.onnx"
    assert onnx.load_from_string(content).graph.input[0].name == "images"
    assert _calls(trt, "set_flag") == [] and _calls(trt, "int8_calibrator") == []


def test_trt11_int8_quantizes_with_modelopt(
    bundle: ModelBundle, use_trt, use_modelopt: list, png_folder: Path
) -> None:
    trt = use_trt("11.4.0")
    calibration = calibration_set(png_folder, bundle.input, count=6, batch=4)
    build_engine(bundle, _key(bundle, trt_version="11.4.0", precision="int8"), calibration, progress=False)
    ((name, kwargs),) = use_modelopt
    assert name == "quantize" and kwargs["quantize_mode"] == "int8"
    assert kwargs["calibration_data"]["images"].shape == (6, 3, 8, 8)
    assert kwargs["calibration_shapes"] == "images:4x3x8x8"
    assert Path(kwargs["onnx_path"]).parent != bundle.path  # ModelOpt writes beside its input
    assert _calls(trt, "create_network") == [(1,)]
    assert _calls(trt, "parse_from_file")[0][0] == "model_int8.onnx"
    assert _calls(trt, "set_flag") == [] and _calls(trt, "int8_calibrator") == []


def test_trt11_without_modelopt_says_what_to_install(bundle: ModelBundle, use_trt, monkeypatch) -> None:
    use_trt("11.4.0")
    monkeypatch.setitem(sys.modules, "modelopt", None)
    with pytest.raises(BackendError, match=r"pip install 'nvidia-modelopt\[onnx\]'"):
        build_engine(bundle, _key(bundle, trt_version="11.4.0"), progress=False)


def test_builder_errors(bundle: ModelBundle, use_trt) -> None:
    trt = use_trt("10.3.0")
    with pytest.raises(BackendError, match="INT8 engines need calibration images"):
        build_engine(bundle, _key(bundle, precision="int8"), progress=False)
    with pytest.raises(BackendError, match="key is for TensorRT 10.4.0, but 10.3.0 is installed"):
        build_engine(bundle, _key(bundle, trt_version="10.4.0"), progress=False)
    trt.parser_errors = ["node Conv: unsupported\nattribute", "node Flatten: bad axis"]
    with pytest.raises(BackendError, match="unsupported attribute; node Flatten: bad axis"):
        build_engine(bundle, _key(bundle), progress=False)
    trt.parser_errors, trt.build_result = [], None
    with pytest.raises(BackendError, match="could not build an engine"):
        build_engine(bundle, _key(bundle), progress=False)
    use_trt("8.6.1")
    with pytest.raises(BackendError, match="TensorRT 8.6.1 is not supported"):
        build_engine(bundle, _key(bundle, trt_version="8.6.1"), progress=False)


def test_progress_monitor_drives_bars(bundle: ModelBundle, use_trt) -> None:
    trt = use_trt("10.3.0")
    build_engine(bundle, _key(bundle), progress=True)
    ((monitor,),) = _calls(trt, "progress_monitor")
    assert isinstance(monitor, trt.IProgressMonitor)
    monitor.phase_start("Building engine", None, 3)
    monitor.phase_start("Tactics", "Building engine", 2)
    assert monitor.step_complete("Tactics", 1) is True
    monitor.phase_finish("Tactics")
    assert monitor.step_complete("Building engine", 0) is True
    monitor.phase_finish("Building engine")


# --- runtime checks that need no GPU --------------------------------------------------------------


class _FakeEngine:
    def __init__(self, names=("images", "descriptors"), dim=DIM, dtype="float32", largest=16) -> None:
        self.names, self.dim, self.dtype, self.largest = names, dim, dtype, largest
        self.num_io_tensors = len(names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == self.names[0] else "OUTPUT"

    def get_tensor_shape(self, name: str) -> tuple:
        return (-1, 3, SIZE, SIZE) if name == self.names[0] else (-1, self.dim)

    def get_tensor_dtype(self, name: str) -> str:
        return self.dtype

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
        return (1, 3, SIZE, SIZE), (1, 3, SIZE, SIZE), (self.largest, 3, SIZE, SIZE)


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        (_FakeEngine(names=("input", "descriptors")), "engine has inputs \\['input'\\]"),
        (_FakeEngine(dim=8), r"maps \[-1, 3, 8, 8\] to \[-1, 8\]"),
        (_FakeEngine(dtype="float16"), "is float16, not float32"),
        (_FakeEngine(largest=8), "batches of at most 8, 16 were asked for"),
    ],
)
def test_engine_io_is_checked_against_the_bundle(
    bundle: ModelBundle, engine: _FakeEngine, message: str
) -> None:
    trt = fake_tensorrt("10.3.0")
    check_engine_io(trt, _FakeEngine(), bundle, 16)
    with pytest.raises(BackendError, match=message):
        check_engine_io(trt, engine, bundle, 16)


def test_open_without_tensorrt(bundle: ModelBundle, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendError, match="TensorRT is not importable here"):
        TensorRTBackend.open(bundle)


def test_open_refuses_to_build_when_not_allowed(
    bundle: ModelBundle, tmp_path: Path, use_trt, monkeypatch
) -> None:
    use_trt("10.3.0")
    monkeypatch.setattr(runtime, "gpu_identity", lambda device_id: GPU)
    with pytest.raises(BackendError, match="building is not allowed: run 'vpr-build-engine --bundle"):
        TensorRTBackend.open(bundle, cache_dir=tmp_path, build_if_missing=False)


def test_real_engine_matches_onnxruntime(bundle: ModelBundle, tmp_path: Path) -> None:
    """Build fp32 and fp16 engines of the test bundle with the real TensorRT and compare them
    with ONNX Runtime on CPU, through the cache (the second open loads the cached engine)."""
    trt = pytest.importorskip("tensorrt", reason=NOT_INSTALLABLE)
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    import onnxruntime

    batch = np.random.default_rng(1).random((5, 3, SIZE, SIZE), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"images": batch})[0]
    precisions = [("fp32", 2e-3)]
    if int(trt.__version__.split(".")[0]) < 11 or _importable("modelopt.onnx.autocast"):
        precisions.append(("fp16", 2e-2))
    for precision, tolerance in precisions:
        for _ in range(2):
            backend = TensorRTBackend.open(bundle, precision=precision, cache_dir=tmp_path, max_batch=4)
            try:
                np.testing.assert_allclose(backend.embed_batch(batch), reference, atol=tolerance)
            finally:
                backend.close()


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --- calibration sources --------------------------------------------------------------------------


def test_calibration_from_a_folder(png_folder: Path, bundle: ModelBundle) -> None:
    calibration = calibration_set(png_folder, bundle.input, count=4, batch=3)
    assert calibration.items == (
        "part0/img_00.png",
        "part0/img_03.png",
        "part1/img_06.png",
        "part1/img_09.png",
    )
    batches = list(calibration.batches())
    assert [b.shape for b in batches] == [(3, 3, 8, 8), (1, 3, 8, 8)]
    # RGB in [0, 1]: image 3 was written as BGR (60, 100, 195)
    np.testing.assert_allclose(batches[0][1, :, 0, 0], np.array([195, 100, 60]) / 255, atol=1e-6)
    assert [b.shape for b in calibration_batches(png_folder, bundle.input, 20, 8)] == [
        (8, 3, 8, 8),
        (2, 3, 8, 8),
    ]
    assert calibration.sha256 == calibration_hash(calibration.items, 4)
    assert calibration.sha256 != calibration_set(png_folder, bundle.input, count=5).sha256


def test_calibration_source_errors(tmp_path: Path, bundle: ModelBundle) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="calibration source .*empty: no images"):
        calibration_set(tmp_path / "empty", bundle.input)
    with pytest.raises(InputError, match="calibration source .*missing: does not exist"):
        calibration_set(tmp_path / "missing", bundle.input)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="a.png cannot be read as an image"):
        list(calibration_batches(tmp_path / "broken", bundle.input, 10, 2))


def _write_bag(path: Path, topics: dict[str, str], frames: int = 6) -> list[np.ndarray]:
    """A rosbag2 with ``frames`` messages per topic; returns the RGB images written (raw: rgb8,
    compressed: PNG, both lossless)."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    types_ = typestore.types
    images = [np.full((10, 14, 3), (i * 30, 200 - i * 30, 77), np.uint8) for i in range(frames)]
    with Writer(path, version=Writer.VERSION_LATEST) as writer:
        connections = {t: writer.add_connection(t, m, typestore=typestore) for t, m in topics.items()}
        for i, rgb in enumerate(images):
            stamp = 1_700_000_000_000_000_000 + i * 100_000_000
            header = types_["std_msgs/msg/Header"](
                stamp=types_["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9),
                frame_id="camera",
            )
            for topic, msgtype in topics.items():
                msg = _message(types_, msgtype, header, rgb)
                writer.write(connections[topic], stamp, typestore.serialize_cdr(msg, msgtype))
    return images


def _message(types_: dict, msgtype: str, header, rgb: np.ndarray):
    if msgtype == "sensor_msgs/msg/Image":
        h, w, _ = rgb.shape
        return types_[msgtype](
            header=header,
            height=h,
            width=w,
            encoding="rgb8",
            is_bigendian=0,
            step=3 * w,
            data=rgb.reshape(-1),
        )
    if msgtype == "sensor_msgs/msg/CompressedImage":
        png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].reshape(-1)
        return types_[msgtype](header=header, format="png", data=png)
    return types_[msgtype](data="hello")


def test_calibration_from_a_bag(tmp_path: Path, bundle: ModelBundle) -> None:
    bag = tmp_path / "bag"
    topics = {
        "/camera/image_raw": "sensor_msgs/msg/Image",
        "/camera/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
        "/chatter": "std_msgs/msg/String",
    }
    images = _write_bag(bag, topics)
    calibration = calibration_set(bag, bundle.input, count=3, batch=2)
    assert calibration.topic == "/camera/image_raw"  # the first image topic
    assert [item.split("@")[0] for item in calibration.items] == ["0", "2", "5"]
    assert calibration.items[0] == "0@1700000000000000000"
    expected = np.stack(
        [cv2.resize(images[i], (SIZE, SIZE), interpolation=cv2.INTER_AREA) for i in (0, 2, 5)]
    )
    expected = expected.transpose(0, 3, 1, 2).astype(np.float32) / 255
    np.testing.assert_allclose(calibration.array(), expected, atol=1e-6)
    compressed = calibration_set(bag, bundle.input, count=3, batch=2, topic="/camera/image_raw/compressed")
    np.testing.assert_allclose(compressed.array(), expected, atol=1e-6)
    assert compressed.sha256 != calibration.sha256
    with pytest.raises(InputError, match="/chatter is not an image topic of the bag .image topics: /camera"):
        calibration_set(bag, bundle.input, topic="/chatter")


def test_calibration_bag_without_image_topic(tmp_path: Path, bundle: ModelBundle) -> None:
    bag = tmp_path / "bag"
    _write_bag(bag, {"/chatter": "std_msgs/msg/String"}, frames=2)
    with pytest.raises(InputError, match=r"bag has no image topic; it has: /chatter \(std_msgs/msg/String\)"):
        calibration_set(bag, bundle.input)


# --- vpr-build-engine -----------------------------------------------------------------------------


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_cli_errors_are_one_line(bundle: ModelBundle, tmp_path: Path, capsys, monkeypatch) -> None:
    assert main(["--bundle", str(tmp_path / "nope")]) == 2
    assert "not a directory" in _error_line(capsys)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["--bundle", str(bundle.path)]) == 2
    assert "TensorRT is not importable here" in _error_line(capsys)
    assert main(["--bundle", str(bundle.path), "--precision", "int8"]) == 2
    assert "--precision int8 needs --calibration" in _error_line(capsys)
    assert main(["--bundle", str(bundle.path), "--precision", "int8", "--calibration", str(tmp_path)]) == 2
    assert "no images" in _error_line(capsys)


def test_cli_help_says_where_to_build() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "Jetson engines must be built on the Jetson" in text
    assert "FP16 by default" in text and "INT8 is optional and needs calibration images" in text


def test_cli_builds_once_then_reuses(bundle: ModelBundle, use_trt, monkeypatch, capsys) -> None:
    trt = use_trt("10.3.0")
    monkeypatch.setattr("vpr_ros.trt.build_engine.gpu_identity", lambda device_id: GPU)
    args = ["--bundle", str(bundle.path), "--max-batch", "4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    engine = bundle.engine_dir / _key(bundle, max_batch=4).filename()
    assert f"engine: {engine}" in out and "built now" in out
    assert main(args) == 0
    assert "valid cached engine" in capsys.readouterr().out
    assert main([*args, "--force"]) == 0
    assert "built now" in capsys.readouterr().out
    assert len(_calls(trt, "build_serialized_network")) == 2
