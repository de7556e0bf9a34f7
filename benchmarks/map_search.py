"""Place map search: latency vs map size for flat, HNSW and IVF-PQ, build time, index memory, and the
approximate indexes' recall against the exact one, on real descriptors.

    python benchmarks/map_search.py --bundle /tmp/b1 --images runs/synth/val            # 1k, 100k, 1M
    python benchmarks/map_search.py --bundle /tmp/b1 --images runs/synth/val --quick    # under a minute

Descriptors are real: every image of the synthetic world (``<world>/msls/train_val/synthtown/
{database,query}/images``, or every image under a plain directory) is embedded with the bundle
through ONNX Runtime. A random ``--queries`` of them are held out as queries; the rest form the
real map. A 1M-keyframe map cannot be embedded on a small CPU, so maps larger than the real set
are the real descriptors plus copies perturbed in their own PCA space to match the real spectrum:
copy = mu + (x - mu + alpha z) / sqrt(1 + alpha^2), L2-normalised, where x is a random real map
descriptor, mu their mean and z ~ N(0, C) with C the real map's covariance restricted to the
principal components holding 99 % of its variance; the division keeps the copies' covariance equal
to the real one (the spectrum check printed first compares them). Queries are always real.

Recall is that of the exact search's nearest keyframe (FAISS's "1-recall@R"): R@1 = the approximate
index ranks it first, R@10 = within its top 10. It is reported on the purely real map and on the
extended maps with the same real queries. Latency is one query at a time, as a localization node
searches (p50 / p95 over up to ``--timing-queries`` queries, at most ~10 s per cell); "batch q/s"
searches all queries at once, as replay evaluation does. Build time is adding every keyframe through
``PlaceMap.add`` plus training (IVF-PQ); save time is ``PlaceMap.save`` (all files, fsync, sha256);
index MB is the size of the written FAISS index, about its size in memory (the map also keeps
descriptors.npy, 4 D bytes per keyframe, memory-mapped when loaded). Every index runs with the
runtime's default parameters (``vpr_ros.mapping.place_map.INDEX_DEFAULTS``), shown in the index column.
FAISS runs on one thread unless ``--threads`` says otherwise: a node searches one query at a time,
and FAISS's OpenMP threads spin-wait, which on a busy 2-core machine made a single 10k-keyframe
flat search 5x slower (16 ms vs 3 ms) and IVF-PQ training 10x slower than one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vpr_ros.backends import create_backend  # noqa: E402
from vpr_ros.bundle import load_bundle  # noqa: E402
from vpr_ros.mapping.map_index import INDEX_DEFAULTS, ivfpq_shape  # noqa: E402
from vpr_ros.mapping.place_map import PlaceMap  # noqa: E402

WORLD_SIDES = ("database", "query")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CHUNK = 50_000
TIMING_SECONDS = 10.0


def image_paths(root: Path) -> list[Path]:
    """The synthetic world's database and query images, or every image under a plain directory."""
    world = root / "msls" / "train_val" / "synthtown"
    dirs = [world / side / "images" for side in WORLD_SIDES] if world.is_dir() else [root]
    paths = sorted(p for d in dirs for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images under {root}")
    return paths


def embed(bundle_dir: Path, paths: list[Path], batch: int = 64) -> tuple[np.ndarray, str, str]:
    bundle = load_bundle(bundle_dir)
    backend = create_backend(bundle, "onnxruntime")
    parts = []
    for i in range(0, len(paths), batch):
        images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths[i : i + batch]]
        parts.append(backend.embed([cv2.cvtColor(im, cv2.COLOR_BGR2RGB) for im in images if im is not None]))
    return np.concatenate(parts), bundle.content_hash, f"{bundle.summary()} on {backend.describe()}"


@dataclass
class Spectrum:
    """The real map descriptors' mean and principal axes (99 % of the variance)."""

    mean: np.ndarray
    axes: np.ndarray  # [r, D]
    std: np.ndarray  # [r]

    @classmethod
    def fit(cls, x: np.ndarray, kept: float = 0.99) -> Spectrum:
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        var = s**2 / (len(x) - 1)
        r = int(np.searchsorted(np.cumsum(var) / var.sum(), kept)) + 1
        return cls(mean, vt[:r], np.sqrt(var[:r]))

    def copies(self, real: np.ndarray, n: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
        source = real[rng.integers(0, len(real), n)]
        z = (rng.standard_normal((n, len(self.std))) * self.std) @ self.axes
        x = self.mean + (source - self.mean + alpha * z) / np.sqrt(1.0 + alpha**2)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def map_chunks(
    real: np.ndarray, size: int, spectrum: Spectrum, alpha: float, seed: int
) -> Iterator[np.ndarray]:
    """The map's descriptors in chunks: real ones first, then copies (the same for every index)."""
    yield real[:size]
    for c, start in enumerate(range(len(real), size, CHUNK)):
        rng = np.random.default_rng([seed, c])
        yield spectrum.copies(real, min(CHUNK, size - start), alpha, rng)


def spectrum_check(real: np.ndarray, spectrum: Spectrum, alpha: float, seed: int, top: int = 6) -> str:
    synthetic = spectrum.copies(real, max(len(real), 20_000), alpha, np.random.default_rng(seed))
    ratio = [np.var((x - x.mean(0)) @ spectrum.axes[:top].T, axis=0) for x in (synthetic, real)]
    sims_real = np.sort(real @ real.T, axis=1)[:, -2]  # nearest other real descriptor
    sims_copy = np.max(synthetic[:2000] @ real.T, axis=1)
    return (
        f"spectrum check (variance along the top {top} real principal axes, copies / real): "
        + ", ".join(f"{a / b:.2f}" for a, b in zip(*ratio))
        + f"; median nearest-neighbour cosine real->real {np.median(sims_real):.3f}, "
        f"copy->real {np.median(sims_copy):.3f}"
    )


def build(kind: str, chunks: Iterator[np.ndarray], dim: int, model_hash: str) -> tuple[PlaceMap, float]:
    """The map and the seconds spent in ``add`` and ``build_index`` (not in making the copies)."""
    place_map = PlaceMap(dim, model_hash, index=kind)  # the runtime's default parameters
    seconds = 0.0
    for d in chunks:
        poses = np.arange(len(d)), np.zeros((len(d), 3)), np.tile([0.0, 0.0, 0.0, 1.0], (len(d), 1))
        start = time.perf_counter()
        place_map.add(d, *poses)
        seconds += time.perf_counter() - start
    start = time.perf_counter()
    place_map.build_index()
    return place_map, seconds + time.perf_counter() - start


def save(place_map: PlaceMap, tmp: Path) -> tuple[float, float]:
    """(seconds to save the whole map, MB of its index.faiss), the map deleted afterwards."""
    start = time.perf_counter()
    place_map.save(tmp / "map")
    seconds = time.perf_counter() - start
    size = json.loads((tmp / "map" / "map.json").read_text())["files"]["index.faiss"]["bytes"]
    shutil.rmtree(tmp / "map")
    return seconds, size / 1e6


def describe(kind: str, n: int, dim: int) -> str:
    params = INDEX_DEFAULTS[kind]
    if kind == "hnsw":
        return f"hnsw M={params['M']} efS={params['efSearch']}"
    if kind == "ivfpq":
        nlist, m = ivfpq_shape(n, dim, params)
        return f"ivfpq {nlist}x{m}B np={params['nprobe']} rr={params['rerank']}"
    return kind


def latency_ms(place_map: PlaceMap, queries: np.ndarray, k: int, count: int) -> tuple[float, float]:
    place_map.search(queries[:1], k)  # warm-up
    times = []
    start = time.perf_counter()
    for q in queries[:count]:
        t0 = time.perf_counter()
        place_map.search(q[None], k)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > TIMING_SECONDS and len(times) >= 5:
            break
    return float(np.median(times) * 1e3), float(np.percentile(times, 95) * 1e3)


def parse_size(text: str) -> int:
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def measure(kind: str, chunks: Iterator[np.ndarray], queries: np.ndarray, args, tmp: Path) -> dict:
    """One table cell group: build, save, latency, batch throughput and the top-k ids."""
    place_map, build_s = build(kind, chunks, queries.shape[1], args.model_hash)
    save_s, megabytes = save(place_map, tmp)
    p50, p95 = latency_ms(place_map, queries, args.k, args.timing_queries)
    start = time.perf_counter()
    _, ids = place_map.search(queries, args.k)
    qps = len(queries) / (time.perf_counter() - start)
    return {"build": build_s, "save": save_s, "mb": megabytes, "p50": p50, "p95": p95, "qps": qps, "ids": ids}


def print_header(args, real: np.ndarray, queries: np.ndarray, spectrum: Spectrum, embedded: str) -> None:
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"FAISS {faiss.__version__} with {faiss.omp_get_max_threads()} threads"
    )
    print(f"model: {embedded}")
    print(
        f"data: {len(queries)} real queries held out; real map of {len(real)} descriptors "
        f"(D = {real.shape[1]}); larger maps = the real map + copies perturbed in its PCA space "
        f"({len(spectrum.std)} components, 99 % of the variance) to match the real spectrum, "
        f"alpha = {args.alpha}"
    )
    print(spectrum_check(real, spectrum, args.alpha, args.seed))
    print()
    print(
        "| keyframes | data | index | build s | save s | index MB | search p50 ms | p95 ms | batch q/s "
        "| R@1 | R@10 |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--images", type=Path, required=True, help="synthetic world or image directory")
    parser.add_argument("--sizes", default="1k,100k,1M", help="map sizes (default 1k,100k,1M)")
    parser.add_argument("--indexes", default="flat,hnsw,ivfpq", help="index types; flat is the reference")
    parser.add_argument("--queries", type=int, default=500, help="real images held out as queries")
    parser.add_argument("--max-images", type=int, default=0, help="embed at most this many (0: all)")
    parser.add_argument("--timing-queries", type=int, default=200, help="single-query timings per cell")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=1.0, help="perturbation of the copies (see above)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads (0: FAISS's default)")
    parser.add_argument("--quick", action="store_true", help="400 images, 100 queries, sizes 1k,5k")
    args = parser.parse_args()
    if args.quick:
        args.max_images, args.queries, args.timing_queries = 400, 100, 50
        args.sizes = "1k,5k" if args.sizes == parser.get_default("sizes") else args.sizes
    args.kinds = args.indexes.split(",")
    if args.kinds[0] != "flat" or any(k not in ("flat", "hnsw", "ivfpq") for k in args.kinds):
        parser.error("--indexes must start with flat (the exact reference) and name flat, hnsw, ivfpq")
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    paths = image_paths(args.images)
    paths = [paths[i] for i in np.random.default_rng(args.seed).permutation(len(paths))]
    start = time.perf_counter()
    descriptors, args.model_hash, model = embed(args.bundle, paths[: args.max_images or None])
    embedded = f"{model}; {len(descriptors)} real images embedded in {time.perf_counter() - start:.0f} s"
    queries, real = descriptors[: args.queries], descriptors[args.queries :]
    spectrum = Spectrum.fit(real)
    print_header(args, real, queries, spectrum, embedded)
    sizes = [("real", len(real))] + [(s, parse_size(s)) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for label, size in sizes:
            exact = None
            for kind in args.kinds:
                row = measure(
                    kind, map_chunks(real, size, spectrum, args.alpha, args.seed), queries, args, Path(tmp)
                )
                ids = row["ids"]
                exact = ids[:, 0] if exact is None else exact
                recall = np.mean(ids[:, 0] == exact), np.mean(np.any(ids == exact[:, None], axis=1))
                name = f"{size:,} (all real)" if label == "real" else f"{size:,}"
                data = "real" if size <= len(real) else "real + copies"
                print(
                    f"| {name} | {data} | {describe(kind, size, real.shape[1])} | {row['build']:.2f} "
                    f"| {row['save']:.2f} | {row['mb']:.1f} | {row['p50']:.3f} | {row['p95']:.3f} "
                    f"| {row['qps']:.0f} | {recall[0]:.3f} | {recall[1]:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
