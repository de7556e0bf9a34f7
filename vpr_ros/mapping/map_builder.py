"""Frames with poses in, keyframe descriptors in a place map out: the one mapping code path.

The mapping node (frames from DDS) and ``vpr-build-map`` (frames from a bag) both offer every
paired frame here, so a map built live and one built offline from the recording of the same
drive are the same map. The keyframe selector decides first and only keyframes are decoded and
embedded: at 30 Hz with 1 m spacing most frames cost nothing. Keyframes are embedded in small
batches (a GPU embeds 8 images in about the time of 1) and :meth:`MapBuilder.flush` embeds the
rest; the map only ever receives complete keyframes, so a failure leaves it consistent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vpr_ros.backends.base import EmbeddingBackend
from vpr_ros.io.image_codec import ImageConversionError
from vpr_ros.mapping.keyframes import KeyframeSelector
from vpr_ros.mapping.map_files import MapError
from vpr_ros.mapping.place_map import PlaceMap

__all__ = ["MapBuilder"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Keyframe:
    stamp_ns: int
    rgb: np.ndarray
    position: np.ndarray
    orientation: np.ndarray
    source: str


class MapBuilder:
    """Adds the keyframes of a stream of frames with the robot's poses to ``place_map``'s newest
    session (start one with :meth:`PlaceMap.add_session` first).

    ``backend`` must run the model the map was created for (same bundle hash and descriptor dim),
    checked here so a mismatch fails before the first frame rather than at save or query time.
    """

    def __init__(
        self,
        backend: EmbeddingBackend,
        place_map: PlaceMap,
        selector: KeyframeSelector,
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        bundle = backend.bundle
        if bundle.content_hash != place_map.model_hash or bundle.descriptor_dim != place_map.descriptor_dim:
            raise MapError(
                f"the place map is for model {place_map.model_hash} ({place_map.descriptor_dim}-D) but the "
                f"backend runs {bundle.content_hash} ({bundle.descriptor_dim}-D)"
            )
        self.backend = backend
        self.place_map = place_map
        self.selector = selector
        self.batch_size = batch_size
        self.frames_seen = 0
        self.added = 0
        self.undecodable = 0
        self._pending: list[_Keyframe] = []
        self._started: float | None = None
        self._last_active = 0.0

    def offer(
        self,
        stamp_ns: int,
        image: np.ndarray | Callable[[], np.ndarray],
        position: Any,
        orientation: Any,
        source: str,
    ) -> bool:
        """Offer one frame; True when it became a keyframe. ``image`` is RGB uint8 [H, W, 3] or a
        callable returning it (called only for keyframes). An image that fails to decode
        (ImageConversionError) is skipped with a warning, and the selector is reset so that the
        next frame that decodes takes its place."""
        if self._started is None:
            self._started = time.perf_counter()
        self.frames_seen += 1
        if not self.selector.accept(position, orientation):
            self._last_active = time.perf_counter()
            return False
        try:
            rgb = image() if callable(image) else image
        except ImageConversionError as exc:
            self.undecodable += 1
            log.warning("%s: keyframe image skipped: %s", source, exc)
            self.selector.reset()
            return False
        self._pending.append(
            _Keyframe(
                int(stamp_ns),
                rgb,
                np.asarray(position, np.float64),
                np.asarray(orientation, np.float64),
                source,
            )
        )
        if len(self._pending) >= self.batch_size:
            self.flush()
        self._last_active = time.perf_counter()
        return True

    def flush(self) -> np.ndarray:
        """Embed the waiting keyframes and add them to the map; returns their ids."""
        if not self._pending:
            return np.zeros(0, np.int64)
        pending, self._pending = self._pending, []
        descriptors = self.backend.embed([k.rgb for k in pending])
        ids = self.place_map.add(
            descriptors,
            np.array([k.stamp_ns for k in pending], np.int64),
            np.stack([k.position for k in pending]),
            np.stack([k.orientation for k in pending]),
            sources=[k.source for k in pending],
        )
        self.added += len(ids)
        self._last_active = time.perf_counter()
        return np.asarray(ids)

    def summary(self) -> dict[str, Any]:
        """Counts and rates so far: ``added`` keyframes by this builder, ``keyframes`` and
        ``travelled_m`` of the whole map (call :meth:`flush` first for the final numbers; ``pending``
        keyframes are not in the map yet)."""
        seconds = 0.0 if self._started is None else self._last_active - self._started
        return {
            "frames_seen": self.frames_seen,
            "added": self.added,
            "keyframes": len(self.place_map),
            "pending": len(self._pending),
            "undecodable": self.undecodable,
            "travelled_m": float(self.place_map.travelled_m),
            "seconds": seconds,
            "frames_per_s": self.frames_seen / seconds if seconds > 0 else 0.0,
        }
