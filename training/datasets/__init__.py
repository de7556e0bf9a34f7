"""Readers of the real on-disk formats of VPR datasets; each returns ``PlaceDataset`` objects."""

from training.datasets.base import PlaceDataset, PlaceSet

__all__ = ["PlaceDataset", "PlaceSet"]
