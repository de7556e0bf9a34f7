"""Generate a synthetic world: build the town, drive its traverses, render, write every format.

The output directory appears complete or not at all: everything is written into a hidden
sibling directory that is renamed into place at the end, and removed if anything fails.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from training.errors import UserError
from training.synth import occluders, textures
from training.synth.conditions import get_condition
from training.synth.presets import Preset
from training.synth.render import Renderer
from training.synth.routes import route_path, sample_drive
from training.synth.traverse import GeoReference, Traverse, WorldInfo
from training.synth.world import build_town
from training.synth.writers import WRITERS
from training.synth.writers.msls import msls_sequence_key

FORMAT_VERSION = 1
CITY = "synthtown"
# Map origin in UTM zone 31N (a flat, Amsterdam-like spot); only the numbers matter.
GEO = GeoReference(utm_zone=31, northern=True, origin_easting=629_000.0, origin_northing=5_804_000.0)
EPOCH_S = 1_704_067_200  # 2024-01-01T00:00:00Z; traverse t starts on day t at its condition's hour
START_HOUR = {"day": 10, "dusk": 17, "night": 22, "fog": 8, "winter": 12, "occluders": 15, "noise": 11}
JPEG_QUALITY = 95


def plan_traverses(preset: Preset, seed: int) -> tuple[dict, tuple[Traverse, ...]]:
    """Route paths and every traverse's stamps and poses (cheap: no rendering)."""
    paths = {name: route_path(preset.layout, waypoints) for name, waypoints in preset.routes.items()}
    traverses = []
    for t, spec in enumerate(preset.traverses):
        cond = get_condition(spec.condition)
        rng = np.random.default_rng([seed, 2, t])
        start_ns = (EPOCH_S + t * 86_400 + START_HOUR.get(cond.name, 12) * 3600) * 1_000_000_000
        stamps, xy, yaw, _ = sample_drive(paths[spec.route], spec.drive, rng, start_ns)
        name = f"t{t:02d}_{cond.name}" + ("" if spec.route == "main" else f"_{spec.route}")
        traverses.append(Traverse(name, cond.name, spec.role, spec.route, stamps, xy, yaw))
    return paths, tuple(traverses)


def generate(
    out: Path,
    preset: Preset,
    seed: int,
    formats: Sequence[str] = tuple(WRITERS),
    bag_storage: str = "mcap",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write the world for (preset, seed) to ``out``; returns the summary stored in world.json."""
    unknown = sorted(set(formats) - set(WRITERS))
    if unknown:
        raise UserError(f"unknown format(s) {', '.join(unknown)} (choose from {', '.join(WRITERS)})")
    if bag_storage not in ("mcap", "sqlite3"):
        raise UserError(f"--bag-storage must be 'mcap' or 'sqlite3', got {bag_storage!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"output {out} exists and is not empty (pass --overwrite to replace it)")
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory in {out.parent}: {exc.strerror}") from None
    try:
        summary = _write_world(staging, preset, seed, formats, bag_storage, progress)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _write_world(root: Path, preset: Preset, seed: int, formats, bag_storage: str, progress: bool) -> dict:
    town = build_town(preset.layout, seed)
    paths, traverses = plan_traverses(preset, seed)
    world = WorldInfo(CITY, seed, preset.name, preset.camera, GEO, traverses)
    writers = [WRITERS[f](root, world, **({"storage": bag_storage} if f == "bag" else {})) for f in formats]
    renderer = Renderer(town, preset.camera)
    total = sum(len(t) for t in traverses)
    with tqdm(total=total, desc=f"rendering {preset.name}", unit="frame", disable=not progress) as bar:
        for t, trav in enumerate(traverses):
            cond = get_condition(trav.condition)
            path = paths[trav.route]
            rng = np.random.default_rng([seed, 3, t])
            movers = occluders.spawn(town, path, cond.occluders_per_100m, rng)
            clouds = textures.smooth_noise(rng, (64, 512), 6.0)
            for i in range(len(trav)):
                elapsed_s = (trav.stamps_ns[i] - trav.stamps_ns[0]) / 1e9
                dynamic = occluders.primitives_at(town, path, movers, elapsed_s)
                frame_rng = np.random.default_rng([seed, 4, t, i])
                rgb = renderer.render(*trav.xy[i], trav.yaw[i], cond, dynamic, clouds, frame_rng)
                ok, jpeg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:
                    raise RuntimeError("OpenCV failed to encode a JPEG")
                for w in writers:
                    w.add_frame(t, i, rgb, jpeg.tobytes())
                bar.update()
    for w in writers:
        w.close()
    summary = _summary(world, paths, formats, bag_storage)
    (root / "world.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _summary(world: WorldInfo, paths: dict, formats, bag_storage: str) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "generator": "python -m training synth",
        "preset": world.preset,
        "seed": world.seed,
        "city": world.city,
        "formats": list(formats),
        "bag_storage": bag_storage,
        "camera": asdict(world.camera),
        "geo": asdict(world.geo),
        "routes": {name: {"length_m": round(p.length, 3)} for name, p in paths.items()},
        "traverses": [
            {
                "name": t.name,
                "condition": t.condition,
                "role": t.role,
                "route": t.route,
                "frames": len(t),
                "start_ns": int(t.stamps_ns[0]),
                "end_ns": int(t.stamps_ns[-1]),
                "msls_sequence_key": msls_sequence_key(world.seed, t.name),
            }
            for t in world.traverses
        ],
    }


def _replace(staging: Path, out: Path) -> None:
    """Move the finished world into place; an existing ``out`` is swapped out, then deleted."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
