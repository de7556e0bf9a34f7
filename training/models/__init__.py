"""Place-recognition networks: backbones, GeM / average / NetVLAD pooling, PCA-whitening, GCL import."""

from __future__ import annotations

from training.models.backbones import BACKBONES, build_backbone, trainable_blocks
from training.models.network import ModelConfig, PlaceNet, build_model, load_gcl_state_dict
from training.models.pooling import GeM, NetVLAD
from training.models.whitening import fit_pca_whitening, fold_whitening

__all__ = [
    "BACKBONES",
    "GeM",
    "ModelConfig",
    "NetVLAD",
    "PlaceNet",
    "build_backbone",
    "build_model",
    "fit_pca_whitening",
    "fold_whitening",
    "load_gcl_state_dict",
    "trainable_blocks",
]
