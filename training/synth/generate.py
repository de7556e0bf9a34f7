"""Generate a synthetic world: build the town, drive its traverses, render, write every format.

The output directory appears complete or not at all: everything is written into a hidden
sibling directory that is renamed into place at the end, and removed if anything fails.

Rendering is the cost (about 30 ms a frame at 320x240, one core). With ``workers`` > 1 chunks of
frames are rendered in that many processes and written in order by this one: every frame draws
from its own seeded generator, so the bytes are the same for any number of workers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
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
    workers: int = 1,
) -> dict:
    """Write the world for (preset, seed) to ``out``; returns the summary stored in world.json.
    ``workers`` processes render (the same bytes for any number)."""
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
        summary = _write_world(staging, preset, seed, formats, bag_storage, progress, workers)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _write_world(
    root: Path, preset: Preset, seed: int, formats, bag_storage: str, progress: bool, workers: int
) -> dict:
    paths, traverses = plan_traverses(preset, seed)
    world = WorldInfo(CITY, seed, preset.name, preset.camera, GEO, traverses)
    writers = [WRITERS[f](root, world, **({"storage": bag_storage} if f == "bag" else {})) for f in formats]
    chunks = [
        (t, start, min(start + CHUNK_FRAMES, len(trav)))
        for t, trav in enumerate(traverses)
        for start in range(0, len(trav), CHUNK_FRAMES)
    ]
    total = sum(len(t) for t in traverses)
    with (
        tqdm(total=total, desc=f"rendering {preset.name}", unit="frame", disable=not progress) as bar,
        _chunk_renderer(preset, seed, workers) as render,
    ):
        for (t, start, _), frames in zip(chunks, render(chunks)):
            for i, (rgb, jpeg) in enumerate(frames, start):
                for w in writers:
                    w.add_frame(t, i, rgb, jpeg)
                bar.update()
    for w in writers:
        w.close()
    summary = _summary(world, paths, formats, bag_storage)
    (root / "world.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


CHUNK_FRAMES = 16  # frames per task: big enough to amortise the hand-over, small enough to keep order


class _FrameRenderer:
    """Renders frames of the traverses of one (preset, seed): the town, its paths and each
    traverse's moving occluders and clouds (drawn from the traverse's own seeded generator)."""

    def __init__(self, preset: Preset, seed: int) -> None:
        self.seed = seed
        self.town = build_town(preset.layout, seed)
        self.paths, self.traverses = plan_traverses(preset, seed)
        self.renderer = Renderer(self.town, preset.camera)

    def frames(self, chunk: tuple[int, int, int]) -> list[tuple[np.ndarray, bytes]]:
        """(rgb, jpeg) of the frames ``start:stop`` of traverse ``t``."""
        t, start, stop = chunk
        trav = self.traverses[t]
        cond = get_condition(trav.condition)
        path = self.paths[trav.route]
        rng = np.random.default_rng([self.seed, 3, t])
        movers = occluders.spawn(self.town, path, cond.occluders_per_100m, rng)
        clouds = textures.smooth_noise(rng, (64, 512), 6.0)
        out = []
        for i in range(start, stop):
            elapsed_s = (trav.stamps_ns[i] - trav.stamps_ns[0]) / 1e9
            dynamic = occluders.primitives_at(self.town, path, movers, elapsed_s)
            frame_rng = np.random.default_rng([self.seed, 4, t, i])
            rgb = self.renderer.render(*trav.xy[i], trav.yaw[i], cond, dynamic, clouds, frame_rng)
            ok, jpeg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError("OpenCV failed to encode a JPEG")
            out.append((rgb, jpeg.tobytes()))
        return out


_WORKER: _FrameRenderer | None = None  # each rendering process's own


def _start_worker(preset: Preset, seed: int) -> None:
    global _WORKER
    _WORKER = _FrameRenderer(preset, seed)


def _render_in_worker(chunk: tuple[int, int, int]) -> list[tuple[np.ndarray, bytes]]:
    return _WORKER.frames(chunk)


@contextmanager
def _chunk_renderer(preset: Preset, seed: int, workers: int) -> Iterator[Callable]:
    """A function from chunks to their frames, in order: here, or in ``workers`` processes
    (spawned: the caller may hold threads, e.g. a ROS node's, that must not be forked), at most
    two chunks per process ahead of the writing, so memory stays bounded."""
    if workers <= 1:
        renderer = _FrameRenderer(preset, seed)
        yield lambda chunks: map(renderer.frames, chunks)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, context, _start_worker, (preset, seed)) as pool:

        def ordered(chunks: list) -> Iterator[list]:
            pending: deque = deque()
            for chunk in chunks:
                pending.append(pool.submit(_render_in_worker, chunk))
                if len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

        yield ordered


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
