"""What every writer shares: the frame-order contract with the generator and the pose conventions.

The generator streams frames once, in traverse order and frame order, to all writers at the same
time; metadata is written only at ``close()``. Checking that order here is what lets each writer
trust that its metadata describes exactly the images it put on disk.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from training.synth.traverse import WorldInfo


class FrameWriter(ABC):
    """Base of the dataset writers: ``W(root, world)``, ``add_frame`` for every frame, ``close()``.

    Each writer owns the subfolder ``root/<subdir>``. Frames must arrive as (traverse 0, frame 0),
    (0, 1), ... (1, 0), ...; anything else is a generator bug and raises before a wrong file exists.
    """

    subdir: str
    # Modules outside the runtime install (the 'train' extra) that the writer needs. They are
    # imported when it is made, so a missing one fails before any frame is rendered; the modules
    # themselves import them only where they are used, so ``bag`` needs none of them.
    requires: tuple[str, ...] = ()

    def __init__(self, root: Path, world: WorldInfo) -> None:
        for module in self.requires:
            importlib.import_module(module)
        self.world = world
        self.root = Path(root) / self.subdir
        self._t = 0
        self._i = 0

    def add_frame(self, t: int, i: int, rgb: np.ndarray, jpeg: bytes) -> None:
        """Store frame ``i`` of traverse ``t``: ``rgb`` uint8 [H, W, 3] and the same image as JPEG."""
        expected = self._expected()
        if (t, i) != expected:
            raise ValueError(f"{type(self).__name__}: expected frame {expected}, got ({t}, {i})")
        cam = self.world.camera
        if rgb.shape != (cam.height, cam.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"{type(self).__name__}: frame ({t}, {i}) is {rgb.dtype} {rgb.shape}, "
                f"expected uint8 {(cam.height, cam.width, 3)}"
            )
        self._write_frame(t, i, rgb, jpeg)
        self._i += 1

    def close(self) -> None:
        """Write the metadata; refuses when some frame never arrived (it would describe a missing image)."""
        t, i = self._expected()
        if t != len(self.world.traverses):
            raise ValueError(f"{type(self).__name__}: closed before frame ({t}, {i}) was added")
        self._finish()

    def _expected(self) -> tuple[int, int]:
        """The (traverse, frame) the next ``add_frame`` must carry; traverse == count once all arrived."""
        traverses = self.world.traverses
        while self._t < len(traverses) and self._i == len(traverses[self._t]):
            self._t += 1
            self._i = 0
        return self._t, self._i

    @abstractmethod
    def _write_frame(self, t: int, i: int, rgb: np.ndarray, jpeg: bytes) -> None:
        """Put one frame on disk (called in order, already validated)."""

    @abstractmethod
    def _finish(self) -> None:
        """Write the metadata and release every file handle."""


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file, creating its folder; images are stored as the generator's JPEG bytes, unchanged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def traverses_with_role(world: WorldInfo, role: str) -> list[int]:
    """Indices of the traverses on one side (database or query), in traverse order."""
    return [t for t, trav in enumerate(world.traverses) if trav.role == role]


def stable_id(*parts: object, length: int = 22) -> str:
    """A deterministic id in the base64url alphabet [A-Za-z0-9_-], like Mapillary keys (22 chars).

    Derived from a SHA-256 of the parts, so the same world seed and names always give the same ids.
    """
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:length]


def compass_deg(yaw: np.ndarray) -> np.ndarray:
    """Map yaw (radians, CCW from east) to compass angle (degrees, clockwise from north) in [0, 360)."""
    ca = np.mod(90.0 - np.degrees(yaw), 360.0)
    return np.where(ca >= 360.0, 0.0, ca)  # mod of a tiny negative value can round up to 360


def yaw_quaternion(yaw: np.ndarray) -> np.ndarray:
    """Quaternions (x, y, z, w) [N, 4] of rotations by ``yaw`` about +z, the ROS order."""
    half = 0.5 * np.asarray(yaw, dtype=np.float64)
    zero = np.zeros_like(half)
    return np.stack([zero, zero, np.sin(half), np.cos(half)], axis=1)
