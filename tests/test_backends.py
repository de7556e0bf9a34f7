"""Model bundles on the robot's side: loading checks, preprocessing, backends and ``auto``."""

from __future__ import annotations

import io
import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vpr_ros.backends import create_backend
from vpr_ros.backends.onnxruntime import OnnxRuntimeBackend
from vpr_ros.backends.torch import TorchBackend
from vpr_ros.bundle import content_hash, load_bundle, sha256_file
from vpr_ros.errors import BackendError, BundleError, InputError

pytest.importorskip("onnxruntime", reason="onnxruntime not installed")


def images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [(48, 64), (120, 160), (64, 96), (481, 641)]
    return [rng.integers(0, 256, (*sizes[i % 4], 3), dtype=np.uint8) for i in range(count)]


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def rewrite_meta(path: Path, edit) -> None:
    meta = json.loads((path / "model.json").read_text())
    edit(meta)
    (path / "model.json").write_text(json.dumps(meta))


def reseal(meta: dict) -> None:
    """Recompute the content hash, as a careless hand edit with the right tool would."""
    meta["content_hash"] = content_hash(meta["files"]["model.onnx"]["sha256"], meta["input"], meta["output"])


def test_backends_agree_so_a_map_built_with_one_is_searched_with_another(tiny_bundle) -> None:
    bundle = load_bundle(tiny_bundle)
    ort, ref = OnnxRuntimeBackend(bundle), TorchBackend(bundle)
    batch = images(12)
    a, b = ort.embed(batch), ref.embed(batch)
    assert a.shape == (12, bundle.descriptor_dim) and a.dtype == np.float32
    cosine = np.sum(a * b, axis=1)
    assert cosine.min() >= 0.9999
    np.testing.assert_array_equal(np.argmax(a @ b.T, axis=1), np.arange(12))  # each finds itself
    assert ort.describe() == "onnxruntime/cpu" and ref.describe() == "torch/cpu"


def test_any_image_size_is_resized_as_model_json_says(tiny_bundle) -> None:
    import cv2

    bundle = load_bundle(tiny_bundle)
    backend = OnnxRuntimeBackend(bundle)
    big = images(4)[3]
    small = cv2.resize(big, (96, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(backend.embed([big]), backend.embed([small]), atol=1e-6)
    assert backend.embed([]).shape == (0, bundle.descriptor_dim)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8), np.uint8), r"image 1: expected shape \[H, W, 3\], got \[8, 8\]"),
        (np.zeros((8, 8, 4), np.uint8), r"got \[8, 8, 4\]"),
        (np.zeros((8, 8, 3), np.uint16), "image 1: expected uint8 RGB, got dtype uint16"),
        (np.zeros((0, 8, 3), np.uint8), r"got \[0, 8, 3\]"),
        ("frame.jpg", "expected a numpy array, got str"),
    ],
)
def test_bad_images_are_refused_by_index(tiny_bundle, image, message) -> None:
    backend = OnnxRuntimeBackend(load_bundle(tiny_bundle))
    with pytest.raises(InputError, match=message):
        backend.embed([images(1)[0], image])


def test_a_batch_of_the_wrong_size_is_refused(tiny_bundle) -> None:
    backend = OnnxRuntimeBackend(load_bundle(tiny_bundle))
    with pytest.raises(ValueError, match=r"must be \[N, 3, 64, 96\]"):
        backend.embed_batch(np.zeros((1, 3, 64, 64), np.float32))


def damage_missing(path: Path) -> None:
    (path / "model.onnx").unlink()


def damage_onnx_byte(path: Path) -> None:
    data = bytearray((path / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "model.onnx").write_bytes(bytes(data))


def damage_truncate_program(path: Path) -> None:
    data = (path / "model.pt2").read_bytes()
    (path / "model.pt2").write_bytes(data[: len(data) // 3])


def damage_schema(path: Path) -> None:
    rewrite_meta(path, lambda m: m.update(schema="vpr_ros.model_bundle/0"))


def damage_json(path: Path) -> None:
    (path / "model.json").write_text('{"schema": "vpr_ros.model_bundle/1", ')


def damage_hand_edit(path: Path) -> None:
    rewrite_meta(path, lambda m: m["input"].update(height=80))


def damage_file_name(path: Path) -> None:
    rewrite_meta(path, lambda m: m["files"].update({"../model.onnx": m["files"]["model.onnx"]}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (damage_missing, "model.onnx is missing"),
        (damage_onnx_byte, "model.onnx is corrupt"),
        (damage_truncate_program, "model.pt2 is corrupt"),
        (damage_schema, "has schema 'vpr_ros.model_bundle/0'; this vpr_ros reads 'vpr_ros.model_bundle/1'"),
        (damage_json, "model.json is not valid JSON"),
        (damage_hand_edit, "content_hash does not match"),
        (damage_file_name, "is not a plain file name"),
    ],
)
def test_damaged_bundles_are_refused_with_one_line(tiny_bundle, tmp_path, damage, message) -> None:
    path = copy_of(tiny_bundle, tmp_path)
    damage(path)
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        load_bundle(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_missing_bundle_directory(tmp_path) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nope")


def test_input_size_that_disagrees_with_the_graph_is_refused(tiny_bundle, tmp_path) -> None:
    path = copy_of(tiny_bundle, tmp_path)
    rewrite_meta(path, lambda m: (m["input"].update(height=80), reseal(m)))
    bundle = load_bundle(path)  # consistent metadata, but the graph was exported at 64x96
    with pytest.raises(
        BackendError, match=r"graph takes images of \[3, 64, 96\] but model.json says \[3, 80, 96\]"
    ):
        OnnxRuntimeBackend(bundle)


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_torch_program_carrying_a_pickle_is_refused_unrun(tiny_bundle, tmp_path) -> None:
    path = copy_of(tiny_bundle, tmp_path)
    marker = tmp_path / "pwned"
    src = zipfile.ZipFile(path / "model.pt2")
    buffer = io.BytesIO()
    torch.save({"x": Payload(marker)}, buffer)
    with zipfile.ZipFile(tmp_path / "evil.pt2", "w") as evil:
        for item in src.infolist():
            data = buffer.getvalue() if item.filename.endswith("sample_inputs/model.pt") else src.read(item)
            evil.writestr(item, data)
    shutil.move(tmp_path / "evil.pt2", path / "model.pt2")
    rewrite_meta(path, lambda m: m["files"]["model.pt2"].update(sha256=sha256_file(path / "model.pt2")))
    with pytest.raises(BundleError, match="holds objects other than tensors"):
        TorchBackend(load_bundle(path))
    assert not marker.exists()


def test_auto_picks_onnxruntime_on_this_cpu_and_says_why(tiny_bundle, caplog) -> None:
    bundle = load_bundle(tiny_bundle)
    with caplog.at_level(logging.INFO, logger="vpr_ros.backends"):
        backend = create_backend(bundle, "auto")
    assert backend.describe() == "onnxruntime/cpu"
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(info) == 1, info  # one line says what was chosen and why the others were not
    assert "auto -> onnxruntime/cpu (passed over: TensorRT:" in info[0] and "ONNX Runtime CUDA:" in info[0]


def test_onnxruntime_runs_on_the_cpu_threads_asked_for(tiny_bundle) -> None:
    """``cpu_threads`` reaches ONNX Runtime's session (the nodes leave a core to DDS with it), the
    embeddings do not depend on it, and the thread count is in the description (diagnostics)."""
    bundle = load_bundle(tiny_bundle)
    one = create_backend(bundle, "onnxruntime", cpu_threads=1)
    every = create_backend(bundle, "onnxruntime")
    assert one.session.get_session_options().intra_op_num_threads == 1
    assert every.session.get_session_options().intra_op_num_threads == 0
    assert one.describe() == "onnxruntime/cpu (1 thread)" and every.describe() == "onnxruntime/cpu"
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8)
    np.testing.assert_allclose(one.embed([image]), every.embed([image]), atol=1e-5)


def test_explicit_backends_and_bad_choices(tiny_bundle) -> None:
    bundle = load_bundle(tiny_bundle)
    assert create_backend(bundle, "torch").describe() == "torch/cpu"
    assert create_backend(bundle, "onnxruntime").describe() == "onnxruntime/cpu"
    with pytest.raises(BackendError, match="no tensorrt backend works here: TensorRT:"):
        create_backend(bundle, "tensorrt")
    with pytest.raises(BackendError, match="backend 'openvino' is unknown"):
        create_backend(bundle, "openvino")
    with pytest.raises(BackendError, match="precision 'fp64' is unknown"):
        create_backend(bundle, "auto", precision="fp64")
    with pytest.raises(BackendError, match="fp16 autocast needs a CUDA device"):
        TorchBackend(bundle, "cpu", precision="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_torch_cuda_fp16_channels_last_matches_the_cpu(tiny_bundle) -> None:
    bundle = load_bundle(tiny_bundle)
    batch = images(8)
    cpu = OnnxRuntimeBackend(bundle).embed(batch)
    for precision in ("fp32", "fp16"):
        cuda = TorchBackend(bundle, "cuda:0", precision=precision, channels_last=True).embed(batch)
        assert np.sum(cpu * cuda, axis=1).min() >= (0.9999 if precision == "fp32" else 0.999)
