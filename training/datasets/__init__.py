"""Readers of the real on-disk formats of VPR datasets; each returns ``PlaceDataset`` objects.

The readers are imported on first use (PEP 562), so ``from training.datasets.base import PlaceSet``
stays light: it does not pull in torch, rosbags, h5py and OpenCV.
"""

from __future__ import annotations

import importlib

from training.datasets.base import PlaceDataset, PlaceSet

_LAZY = {
    "ImageListDataset": "images",
    "UnreadableImage": "images",
    "load_image": "images",
    "read_msls": "msls",
    "read_pittsburgh": "pittsburgh",
    "read_tbplaces": "tbplaces",
    "read_tbplaces_set": "tbplaces",
    "read_tbplaces_similarity": "tbplaces",
    "read_bag_trajectory": "trajectory",
    "read_image_folder": "trajectory",
    "trajectory_dataset": "trajectory",
}

__all__ = ["PlaceDataset", "PlaceSet", *_LAZY]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
