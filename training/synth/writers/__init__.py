"""Writers that put the synthetic world on disk in the formats of real datasets and recordings.

The generator calls, for every writer: ``w = WRITERS[name](root, world, **options)``, then
``w.add_frame(t, i, rgb, jpeg)`` for every frame in traverse and frame order, then ``w.close()``.
Each writer owns one subfolder of ``root`` and documents its exact layout in its module docstring.
"""

from __future__ import annotations

from training.synth.writers.common import FrameWriter
from training.synth.writers.msls import MslsWriter
from training.synth.writers.pittsburgh import PittsburghWriter
from training.synth.writers.rosbag import RosbagWriter
from training.synth.writers.tbplaces import TbPlacesWriter

WRITERS: dict[str, type[FrameWriter]] = {
    "bag": RosbagWriter,
    "msls": MslsWriter,
    "pittsburgh": PittsburghWriter,
    "tbplaces": TbPlacesWriter,
}

__all__ = ["WRITERS", "FrameWriter", "MslsWriter", "PittsburghWriter", "RosbagWriter", "TbPlacesWriter"]
