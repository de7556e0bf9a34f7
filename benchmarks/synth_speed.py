"""Generation speed of the synthetic world presets, in frames per second, on one CPU core.

    .venv/bin/python benchmarks/synth_speed.py [--presets small,demo,benchmark] [--all-cores]

Each preset is generated end to end (town, rendering, JPEG, all four formats) into a temporary
directory that is deleted afterwards; the table separates rendering from writing. The issue's
target: the small preset in under 20 s on one core.
"""

from __future__ import annotations

import argparse
import os

# One thread for every math library, set before numpy loads, so "one core" means one core.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from training.synth import generate as gen  # noqa: E402
from training.synth.presets import get_preset  # noqa: E402


class _RenderClock:
    """Accumulates the time spent inside Renderer.render while a preset is generated."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._real = gen.Renderer.render

    def __enter__(self) -> _RenderClock:
        clock, real = self, self._real

        def timed(renderer, *args, **kwargs):
            start = time.perf_counter()
            try:
                return real(renderer, *args, **kwargs)
            finally:
                clock.seconds += time.perf_counter() - start

        gen.Renderer.render = timed
        return self

    def __exit__(self, *exc) -> None:
        gen.Renderer.render = self._real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="small,demo,benchmark")
    parser.add_argument("--all-cores", action="store_true", help="do not pin the process to CPU 0")
    args = parser.parse_args()
    if not args.all_cores:
        os.sched_setaffinity(0, {0})
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"pinned to {sorted(os.sched_getaffinity(0))}"
    )
    header = f"| {'preset':<10} | {'size':>7} | {'traverses':>9} | {'frames':>6} | {'total s':>7} | "
    header += f"{'frames/s':>8} | {'render fps':>10} | {'write+other s':>13} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name in args.presets.split(","):
        preset = get_preset(name.strip())
        with tempfile.TemporaryDirectory() as tmp, _RenderClock() as clock:
            start = time.perf_counter()
            summary = gen.generate(Path(tmp) / "world", preset, seed=0, progress=False)
            total = time.perf_counter() - start
        frames = sum(t["frames"] for t in summary["traverses"])
        size = f"{preset.camera.width}x{preset.camera.height}"
        print(
            f"| {name:<10} | {size:>7} | {len(summary['traverses']):>9} | {frames:>6} | {total:>7.1f} | "
            f"{frames / total:>8.1f} | {frames / clock.seconds:>10.1f} | {total - clock.seconds:>13.1f} |"
        )


if __name__ == "__main__":
    main()
