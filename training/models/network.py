"""The place-recognition network: images in [0, 1] -> L2-normalised global descriptor.

``PlaceNet`` = input normalisation -> conv trunk -> global pooling -> L2 -> [PCA-whitening -> L2].
Normalisation and whitening are part of the module (buffers and a frozen Linear), so the exported
ONNX graph takes raw [0, 1] RGB and returns the final descriptor: no consumer can get the
preprocessing wrong (DESIGN.md, "Model bundle"). The submodule names ``backbone`` and ``pool`` match
GCL's ``BaseNet``, so the released GCL checkpoints load with ``load_gcl_state_dict``; our own
additions live under ``normalize`` and ``whiten``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.errors import UserError
from training.models.backbones import BACKBONES, RGB, WEIGHT_CHOICES, build_backbone, trainable_blocks
from training.models.pooling import AvgPool, GeM, NetVLAD
from training.models.whitening import fold_whitening

logger = logging.getLogger(__name__)

POOLINGS = ("gem", "avg", "netvlad")
_GCL_PREFIXES = ("backbone.", "pool.")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a PlaceNet. ``mean``/``std`` = None use what the backbone weights expect
    (ImageNet statistics for torchvision and MobileNetV2, inception-style 127/128 for
    EfficientNet-Lite0); ``train_blocks`` = None trains the whole backbone; ``whiten_dim`` reserves a
    whitening layer of that size, filled later by ``PlaceNet.set_whitening``."""

    backbone: str = "mobilenet_v2"
    pooling: str = "gem"
    gem_p: float = 3.0
    netvlad_clusters: int = 64
    weights: str = "imagenet"
    train_blocks: int | None = 2
    whiten_dim: int | None = None
    mean: RGB | None = None
    std: RGB | None = None

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise UserError(f"backbone {self.backbone!r} is unknown; choose one of {', '.join(BACKBONES)}")
        if self.pooling not in POOLINGS:
            raise UserError(f"pooling {self.pooling!r} is unknown; choose one of {', '.join(POOLINGS)}")
        if self.weights not in WEIGHT_CHOICES:
            raise UserError(
                f"weights {self.weights!r} are unknown; choose one of {', '.join(WEIGHT_CHOICES)}"
            )
        if self.gem_p <= 0:
            raise UserError(f"gem_p must be positive, got {self.gem_p}")
        if self.netvlad_clusters < 1:
            raise UserError(f"netvlad_clusters must be >= 1, got {self.netvlad_clusters}")
        if self.train_blocks is not None and self.train_blocks < 0:
            raise UserError(f"train_blocks must be >= 0 or None (all), got {self.train_blocks}")
        if self.whiten_dim is not None and self.whiten_dim < 1:
            raise UserError(f"whiten_dim must be >= 1 or None, got {self.whiten_dim}")
        if (self.mean is None) != (self.std is None):
            raise UserError("mean and std must be given together (or both left out)")


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean/std kept as buffers so they travel in checkpoints."""

    def __init__(self, mean: Iterable[float], std: Iterable[float]) -> None:
        super().__init__()
        mean_t = torch.tensor(tuple(mean), dtype=torch.float32)
        std_t = torch.tensor(tuple(std), dtype=torch.float32)
        if mean_t.shape != (3,) or std_t.shape != (3,) or bool((std_t <= 0).any()):
            raise UserError(
                f"normalisation needs 3 means and 3 positive stds, got {mean_t.tolist()} and {std_t.tolist()}"
            )
        self.register_buffer("mean", mean_t.view(1, 3, 1, 1))
        self.register_buffer("std", std_t.view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PlaceNet(nn.Module):
    """Image batch [N, 3, H, W] in [0, 1] -> descriptor [N, output_dim] of unit L2 norm."""

    def __init__(
        self, backbone: nn.Module, pool: nn.Module, pool_dim: int, mean: Iterable[float], std: Iterable[float]
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.pool = pool
        self.pool_dim = pool_dim
        self.register_module("whiten", None)

    @property
    def output_dim(self) -> int:
        return self.pool_dim if self.whiten is None else self.whiten.out_features

    def set_whitening(
        self, mean: np.ndarray | torch.Tensor | None, projection: np.ndarray | torch.Tensor | None = None
    ) -> None:
        """Install PCA-whitening (from ``fit_pca_whitening``) after the first L2, or remove it with None."""
        if mean is None:
            self.whiten = None
            return
        if projection is None:
            raise UserError("set_whitening needs a projection together with the mean")
        layer = fold_whitening(mean, projection)
        if layer.in_features != self.pool_dim:
            raise UserError(
                f"whitening was fitted on {layer.in_features}-D descriptors but this network "
                f"pools to {self.pool_dim}-D"
            )
        self.whiten = layer.to(self.normalize.mean.device)

    def unwhitened(self, images: torch.Tensor) -> torch.Tensor:
        """The L2-normalised pooled descriptor before whitening: what a whitening fit needs."""
        return F.normalize(self.pool(self.backbone(self.normalize(images))), dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.unwhitened(images)
        return x if self.whiten is None else F.normalize(self.whiten(x), dim=1)


def _build_pool(cfg: ModelConfig, channels: int) -> tuple[nn.Module, int]:
    if cfg.pooling == "gem":
        return GeM(p=cfg.gem_p), channels
    if cfg.pooling == "avg":
        return AvgPool(), channels
    vlad = NetVLAD(num_clusters=cfg.netvlad_clusters, dim=channels)
    return vlad, vlad.output_dim


def build_model(cfg: ModelConfig) -> tuple[PlaceNet, dict[str, Any]]:
    """Build a PlaceNet from its config; ``info`` says which weights were loaded and what is trained."""
    backbone, channels, info = build_backbone(cfg.backbone, cfg.weights)
    blocks = trainable_blocks(backbone, cfg.train_blocks)
    pool, pool_dim = _build_pool(cfg, channels)
    mean, std = (cfg.mean, cfg.std) if cfg.mean is not None else (info["mean"], info["std"])
    if info["pretrained"] and (tuple(mean), tuple(std)) != (info["mean"], info["std"]):
        logger.warning(
            "normalisation mean=%s std=%s differs from what the %s weights expect (mean=%s std=%s)",
            mean,
            std,
            cfg.backbone,
            info["mean"],
            info["std"],
        )
    model = PlaceNet(backbone, pool, pool_dim, mean, std)
    if cfg.whiten_dim is not None:
        if cfg.whiten_dim > pool_dim:
            raise UserError(f"whiten_dim {cfg.whiten_dim} exceeds the {pool_dim}-D pooled descriptor")
        # Placeholder (keeps the first whiten_dim dimensions) so checkpoints with a fitted whitening load.
        model.set_whitening(
            np.zeros(pool_dim, np.float32), np.eye(cfg.whiten_dim, pool_dim, dtype=np.float32)
        )
    trained = blocks if cfg.train_blocks is None else cfg.train_blocks
    info.update(
        {
            "pooling": cfg.pooling,
            "pool_dim": pool_dim,
            "descriptor_dim": model.output_dim,
            "mean": tuple(mean),
            "std": tuple(std),
            "trained_blocks": f"{trained} of {blocks}",
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "whitening": "none" if cfg.whiten_dim is None else f"{cfg.whiten_dim}-D placeholder until fitted",
        }
    )
    return model, info


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def load_gcl_state_dict(model: PlaceNet, checkpoint: Mapping[str, Any]) -> int:
    """Load a GCL-layout checkpoint (``backbone.*``, ``pool.*``) into ``model``; returns the tensor count.

    Accepts what GCL's train.py saves (weights under ``model_state_dict``), the ``state_dict`` key of
    the released files, or a bare state dict, with or without DataParallel's ``module.`` prefix. The
    backbone and pool keys must match exactly, names and shapes; anything wrong raises a ValueError
    listing the missing, unexpected and mis-shaped keys. ``normalize`` and ``whiten`` are left alone.
    """
    state = next(
        (
            checkpoint[key]
            for key in ("model_state_dict", "state_dict")
            if isinstance(checkpoint.get(key), Mapping)
        ),
        checkpoint,
    )
    if not state or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UserError(
            "GCL checkpoint holds no state dict (expected tensors, under 'model_state_dict', "
            "'state_dict' or at top level)"
        )
    state = {key.removeprefix("module."): value for key, value in state.items()}
    ours = {key: value for key, value in model.state_dict().items() if key.startswith(_GCL_PREFIXES)}
    missing = sorted(ours.keys() - state.keys())
    unexpected = sorted(state.keys() - ours.keys())
    mismatched = sorted(
        f"{key} {tuple(state[key].shape)} vs {tuple(ours[key].shape)}"
        for key in ours.keys() & state.keys()
        if state[key].shape != ours[key].shape
    )
    problems = [
        f"{label} [{_listing(keys)}]"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch (checkpoint vs model)", mismatched),
        )
        if keys
    ]
    if problems:
        raise UserError("GCL checkpoint does not fit this model: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    return len(state)
