"""Model bundle export: our checkpoints and official GCL releases -> ONNX + torch program, parity-checked."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
pytest.importorskip("onnx", reason="onnx not installed (the 'train' extra)")

from training import export as export_module  # noqa: E402
from training.cli import main as training_main  # noqa: E402
from training.config import Config  # noqa: E402
from training.engine import CHECKPOINT_FORMAT  # noqa: E402
from training.models import GeM, ModelConfig, build_model  # noqa: E402
from vpr_ros.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from vpr_ros.backends.torch import TorchBackend  # noqa: E402
from vpr_ros.bundle import SCHEMA, load_bundle  # noqa: E402
from vpr_ros.preprocess import to_input_batch  # noqa: E402

SIZE = (64, 96)


def world_images(world: Path) -> Path:
    return world / "msls" / "train_val" / "synthtown" / "database" / "images"


def write_checkpoint(path: Path, world: Path) -> nn.Module:
    """A vpr_ros training checkpoint as the Trainer writes it (format, step, config, model).

    ImageNet weights (packaged): descriptors of a random network hardly vary between images, so
    two random networks agree to a cosine of 0.9999 and whitening them amplifies float noise."""
    cfg = Config()
    cfg.data.train.root = str(world / "msls")
    cfg.model.backbone, cfg.model.weights, cfg.model.input_size = "mobilenet_v2", "imagenet", list(SIZE)
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(backbone="mobilenet_v2", weights="imagenet"))
    state = {"format": CHECKPOINT_FORMAT, "step": 12, "config": cfg.to_dict(), "model": model.state_dict()}
    torch.save(state, path)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, small_world) -> tuple[Path, nn.Module]:
    tmp = tmp_path_factory.mktemp("export")
    model = write_checkpoint(tmp / "last.pt", small_world)
    out = tmp / "bundle"
    code = training_main(
        ["export", "--checkpoint", str(tmp / "last.pt"), "--out", str(out), "--parity-images",
         str(world_images(small_world)), "--parity-count", "12"]
    )  # fmt: skip
    assert code == 0
    return out, model


def test_bundle_holds_both_graphs_checksums_and_the_contract(exported) -> None:
    out, model = exported
    meta = json.loads((out / "model.json").read_text())
    assert meta["schema"] == SCHEMA
    assert set(meta["files"]) == {"model.onnx", "model.pt2"}
    assert (meta["input"]["height"], meta["input"]["width"]) == SIZE
    assert meta["output"] == {"name": "descriptors", "dim": 1280, "normalized": "l2", "dtype": "float32"}
    assert meta["training"]["step"] == 12 and len(meta["training"]["checkpoint_sha256"]) == 64
    for name in ("onnxruntime", "torch"):
        assert meta["parity"][name]["min_cosine"] >= 0.9999
        assert meta["parity"][name]["top_k_equivalent"] is True
    assert meta["parity"]["images"] == 12
    assert not list(out.parent.glob(".bundle.*")), "staging directories must not survive"
    bundle = load_bundle(out)
    assert bundle.content_hash == meta["content_hash"] and bundle.input.size == SIZE


def test_every_backend_reproduces_the_pytorch_module_on_any_batch_size(exported, small_world) -> None:
    out, model = exported
    bundle = load_bundle(out)
    files = sorted(world_images(small_world).glob("*.jpg"))[:5]
    images = [np.ascontiguousarray(cv2.imread(str(f))[..., ::-1]) for f in files]
    with torch.no_grad():
        reference = model(torch.from_numpy(to_input_batch(images, bundle.input))).numpy()
    for backend in (OnnxRuntimeBackend(bundle, max_batch=2), TorchBackend(bundle, max_batch=3)):
        got = backend.embed(images)  # 5 images through batches of 2 (or 3): dynamic batch in the graph
        np.testing.assert_allclose(got, reference, atol=2e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(backend.embed(images[:1]), reference[:1], atol=2e-5)


def test_pca_whitening_is_fitted_into_the_graph(tmp_path, small_world) -> None:
    write_checkpoint(tmp_path / "last.pt", small_world)
    folder = world_images(small_world)
    code = training_main(
        ["export", "--checkpoint", str(tmp_path / "last.pt"), "--out", str(tmp_path / "b"),
         "--pca-dim", "16", "--pca-images", str(folder), "--pca-samples", "60",
         "--parity-images", str(folder), "--parity-count", "8"]
    )  # fmt: skip
    assert code == 0
    bundle = load_bundle(tmp_path / "b")
    assert bundle.descriptor_dim == 16
    assert bundle.meta["architecture"]["whitening"]["dim"] == 16
    assert bundle.meta["architecture"]["whitening"]["samples"] == 60
    fit = export_module.sample_images(export_module.image_folder(folder), 60)
    descriptors = OnnxRuntimeBackend(bundle).embed(fit)
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)
    # Whitened, then L2-normalised: the fitting set's dimensions are decorrelated.
    corr = np.corrcoef(descriptors.T)
    assert np.abs(corr - np.diag(np.diag(corr))).max() < 0.5


class GclBaseNet(nn.Module):
    """GCL's src/networks.py BaseNet: ``backbone`` = ResNet children()[:-2], ``pool`` = GeM, L2."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])
        self.pool = GeM(p=2.7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.pool(self.backbone(x)), dim=1)


def test_official_gcl_checkpoint_exports_with_its_layout(tmp_path) -> None:
    torch.manual_seed(5)
    gcl = GclBaseNet().eval()
    state = {f"module.{k}": v for k, v in gcl.state_dict().items()}  # DataParallel, as train.py saved it
    path = tmp_path / "MSLS_resnet18_GeM_480_GCL.pth"
    torch.save({"step": 51, "model_state_dict": state, "optimizer": {}, "scheduler": {}}, path)
    out = tmp_path / "gcl"
    assert (
        training_main(["export", "--gcl-checkpoint", str(path), "--out", str(out), "--input-size", "64x80"])
        == 0
    )
    bundle = load_bundle(out)
    assert bundle.meta["architecture"]["backbone"] == "resnet18"
    assert bundle.meta["training"]["loss"] == "gcl" and bundle.meta["training"]["step"] == 51
    assert "procedural" in bundle.meta["parity"]["sample"]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(3)]
    x = torch.from_numpy(to_input_batch(images, bundle.input))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = gcl((x - mean) / std).numpy()  # GCL's transforms.Normalize(ImageNet)
    np.testing.assert_allclose(OnnxRuntimeBackend(bundle).embed(images), expected, atol=2e-5)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("MSLS_resnet50_GeM_480_GCL.pth", ("resnet50", "gem", 480)),
        ("MSLS_resnet152_GeM_480_CL.pth", ("resnet152", "gem", 480)),
        ("MSLS_vgg16_GeM_480_GCL.pth", ("vgg16", "gem", 480)),
        ("MSLS_resnext_GeM_480_GCL.pth", ("resnext101_32x8d", "gem", 480)),
        ("weights.pth", None),
    ],
)
def test_gcl_release_names_give_the_architecture(name: str, expected) -> None:
    assert export_module.parse_gcl_name(name) == expected


class Payload:
    """Unpickling this runs code: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("flag", ["--checkpoint", "--gcl-checkpoint"])
def test_a_pickle_of_arbitrary_objects_is_refused_without_running_it(tmp_path, flag, capsys) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "MSLS_resnet18_GeM_480_GCL.pth"
    torch.save({"model_state_dict": Payload(marker)}, path)
    assert training_main(["export", flag, str(path), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not a readable" in err and len(err.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "b").exists()


def test_failed_parity_leaves_nothing_on_disk(tmp_path, monkeypatch, capsys, small_world) -> None:
    write_checkpoint(tmp_path / "last.pt", small_world)
    real_write_onnx = export_module._write_onnx

    def drifted(model, size, path):  # an exporter bug: the ONNX graph computes something else
        broken = build_model(ModelConfig(backbone="mobilenet_v2", weights="none"))[0].eval()
        real_write_onnx(broken, size, path)

    monkeypatch.setattr(export_module, "_write_onnx", drifted)
    assert (
        training_main(["export", "--checkpoint", str(tmp_path / "last.pt"), "--out", str(tmp_path / "b")])
        == 2
    )
    assert "parity check failed for onnxruntime: min cosine 0." in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_export_refuses_to_overwrite_and_checks_its_flags(tmp_path, capsys, small_world) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("x")
    write_checkpoint(tmp_path / "last.pt", small_world)
    cases = [
        (["--checkpoint", str(tmp_path / "last.pt"), "--out", str(tmp_path / "b")], "--overwrite"),
        (["--out", str(tmp_path / "c")], "exactly one of"),
        (["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "c")], "file not found"),
        (["--gcl-checkpoint", str(tmp_path / "last.pt"), "--out", str(tmp_path / "c")], "--backbone"),
        (["--checkpoint", str(tmp_path / "last.pt"), "--out", str(tmp_path / "c"), "--pca-dim", "8"],
         "--pca-images"),
        (["--checkpoint", str(tmp_path / "last.pt"), "--out", str(tmp_path / "c"), "--parity-count", "1"],
         "--parity-count"),
    ]  # fmt: skip
    for argv, message in cases:
        assert training_main(["export", *argv]) == 2, argv
        assert message in capsys.readouterr().err
    assert (tmp_path / "b" / "keep.txt").read_text() == "x" and not (tmp_path / "c").exists()
    with pytest.raises(SystemExit):
        training_main(["export", "--checkpoint", "x", "--out", "y", "--input-size", "64by80"])


def test_runtime_preprocessing_is_bit_identical_to_training(exported, tmp_path) -> None:
    """The runtime's preprocessing is training's: a file read by training.load_image and the same
    pixels given to the runtime produce the same input tensor."""
    from training.datasets.images import load_image

    out, _ = exported
    bundle = load_bundle(out)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (150, 210, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "frame.png"), rgb[..., ::-1])
    from_training = load_image(tmp_path / "frame.png", bundle.input.size).numpy()
    np.testing.assert_array_equal(to_input_batch([rgb], bundle.input)[0], from_training)
