"""The sequence filter: recall@1 on the ordered real set and per-frame cost against map size.

    .venv/bin/python benchmarks/sequence_filter.py [--data DIR] [--bundle DIR] [--sizes 1000 100000 1000000]

1. ``nordland_a`` (winter queries against the summer traverse, +-1 frame, in route order) for raw
   pixels and the bundle (default: the shipped one): single frames, then the filter over sequences
   of 5, 10 and 20 frames (``vpr-bench --sequence-length L``: the frame order is the motion, no
   odometry), on the whole set and on queries 1410-1787. The filter's ordered-folder settings
   (speed range, contrast window, tracked candidates) were chosen on this set, so neither column
   is held out for the filter; the plain SeqSLAM figures in its README are the reference.
2. Per-frame cost of :meth:`SequenceFilter.update` on a route map of N keyframes (1 m apart,
   512-D descriptors, a top-20 search result given), sequences of 10 and 60 frames, with odometry
   and with a speed range; the search itself is not included (``benchmarks/map_search.py`` measures it).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vpr_ros.evaluation.bench import (  # noqa: E402
    FOLDER_SEQUENCE,
    correct_results,
    describe,
    model_method,
    raw_pixel_method,
    search,
    sequence_ranking,
)
from vpr_ros.evaluation.image_folders import read_dataset  # noqa: E402
from vpr_ros.evaluation.report import markdown_table  # noqa: E402
from vpr_ros.localization.sequence_filter import (  # noqa: E402
    KeyframeGraph,
    Motion,
    SequenceFilter,
    SequenceSettings,
    cosine_scorer,
)

LENGTHS = (5, 10, 20)
HELD = slice(1410, 1788)


def nordland_table(data: Path, bundle: str) -> list[str]:
    dataset = read_dataset(data / "nordland_a", tolerance=1)
    rows = []
    for label, method in (
        ("raw pixels", raw_pixel_method(quiet=True)),
        (f"model {bundle}", model_method(bundle)),
    ):
        refs, _ = describe(method, dataset.refs, "references")
        queries, _ = describe(method, dataset.queries, "queries")
        scores, ids = search(method.score, refs, queries, 20)
        row = [label]
        for length in (1, *LENGTHS):
            ranked = ids
            if length > 1:
                ranked, _ = sequence_ranking(
                    method, refs, queries, ids, scores, replace(FOLDER_SEQUENCE, length=length)
                )
            hits = correct_results(ranked[:, :1], dataset.matches)[:, 0]
            row.append(f"{hits.mean():.3f} / {hits[HELD].mean():.3f}")
        rows.append(row)
    header = ["recall@1 (all / queries 1410-1787)", "single frame", *(f"sequence of {n}" for n in LENGTHS)]
    return markdown_table(header, rows)


def cost_table(sizes: list[int], lengths: list[int], repeats: int = 200) -> list[str]:
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        positions = np.zeros((n, 3))
        positions[:, 0] = np.arange(n)
        orientations = np.tile([0.0, 0.0, 0.0, 1.0], (n, 1))
        graph = KeyframeGraph.from_poses(positions, orientations, cell_m=4.0)
        descriptors = rng.standard_normal((n, 512), dtype=np.float32)
        descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
        for length in lengths:
            rows.append([f"{n:,}", str(length), *_per_frame_ms(graph, descriptors, length, repeats, rng)])
    header = ["keyframes", "length", "odometry: p50 / p95 [ms]", "speed range: p50 / p95 [ms]"]
    return markdown_table(header, rows)


def _per_frame_ms(
    graph: KeyframeGraph, descriptors: np.ndarray, length: int, repeats: int, rng: np.random.Generator
) -> list[str]:
    """p50 / p95 of one update (after 10 warm-up frames), with odometry and with a speed range: a
    robot driving along the route, its top-20 drawn from 50 keyframes around the true one."""
    n = len(descriptors)
    row = []
    for motion in (Motion.odometry(1.0, 0.0, 0.0), Motion.unknown(1.0)):
        filt = SequenceFilter(graph, SequenceSettings(length=length))
        elapsed = []
        for t in range(repeats):
            place = (n // 2 + t) % n
            query = descriptors[place] + 0.5 * rng.standard_normal(512).astype(np.float32)
            top = np.unique(np.clip(place + rng.integers(-50, 50, 20), 0, n - 1))
            score = cosine_scorer(descriptors, query)
            started = time.perf_counter()
            filt.update(top, score(top), score, motion)
            elapsed.append(time.perf_counter() - started)
        ms = 1e3 * np.array(elapsed[10:])
        row.append(f"{np.median(ms):.2f} / {np.percentile(ms, 95):.2f}")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--bundle", default="default", help="model bundle (default: the shipped one)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000, 1_000_000])
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 60])
    parser.add_argument("--skip-nordland", action="store_true", help="only the cost table")
    args = parser.parse_args()
    if not args.skip_nordland:
        print("\n".join(nordland_table(args.data, args.bundle)), end="\n\n", flush=True)
    print("\n".join(cost_table(args.sizes, args.lengths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
