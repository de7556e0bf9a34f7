"""Named world sizes. ``small`` is the test world, ``demo`` the README demo, ``benchmark`` the
throughput test (over 10,000 frames). Every number of a preset lives here."""

from __future__ import annotations

from dataclasses import dataclass

from training.errors import UserError
from training.synth.routes import Drive
from training.synth.traverse import Camera
from training.synth.world import TownLayout


@dataclass(frozen=True)
class TraverseSpec:
    condition: str
    role: str  # "database" (the map) or "query"
    route: str  # key into Preset.routes
    drive: Drive


@dataclass(frozen=True)
class Preset:
    name: str
    layout: TownLayout
    camera: Camera
    routes: dict[str, list[tuple[int, int]]]
    traverses: tuple[TraverseSpec, ...]


def _drive(spacing: float, offset: float, jitter: float = 2.0, speed: float = 8.0) -> Drive:
    return Drive(spacing_m=spacing, lateral_offset_m=offset, heading_jitter_deg=jitter, speed_mps=speed)


# Lateral offsets differ per traverse (lanes), so queries never sit exactly on map frames.
_OFFSETS = (1.5, 0.5, 2.3, 1.0, 0.0, 2.0, 1.2, 0.8, 1.8)

PRESETS: dict[str, Preset] = {
    "small": Preset(
        name="small",
        layout=TownLayout(blocks_x=4, blocks_y=3),
        camera=Camera(width=160, height=120, hfov_deg=90.0, mount_height_m=1.6),
        routes={"main": [(1, 1), (3, 1), (3, 2)]},
        traverses=(
            TraverseSpec("day", "database", "main", _drive(0.8, 1.5)),
            TraverseSpec("night", "query", "main", _drive(0.8, 0.5)),
        ),
    ),
    "demo": Preset(
        name="demo",
        layout=TownLayout(blocks_x=5, blocks_y=4),
        camera=Camera(width=320, height=240, hfov_deg=90.0, mount_height_m=1.6),
        routes={
            "main": [(1, 1), (4, 1), (4, 3), (2, 3), (2, 2)],
            # Shares the first street with "main", then turns into streets the map never saw.
            "detour": [(1, 1), (2, 1), (2, 2), (3, 2), (3, 3), (4, 3)],
        },
        traverses=tuple(
            TraverseSpec(cond, role, route, _drive(1.5, off))
            for (cond, role, route), off in zip(
                (
                    ("day", "database", "main"),
                    ("day", "query", "main"),
                    ("dusk", "query", "main"),
                    ("night", "query", "main"),
                    ("fog", "query", "main"),
                    ("winter", "query", "main"),
                    ("occluders", "query", "main"),
                    ("noise", "query", "main"),
                    ("day", "query", "detour"),
                ),
                _OFFSETS,
            )
        ),
    ),
    "benchmark": Preset(
        name="benchmark",
        layout=TownLayout(blocks_x=8, blocks_y=6),
        camera=Camera(width=160, height=120, hfov_deg=90.0, mount_height_m=1.6),
        routes={"main": [(1, 1), (7, 1), (7, 5), (1, 5), (1, 2)]},
        traverses=tuple(
            TraverseSpec(cond, "database" if i == 0 else "query", "main", _drive(0.8, _OFFSETS[i]))
            for i, cond in enumerate(("day", "dusk", "night", "fog", "winter", "occluders", "noise", "day"))
        ),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})") from None
