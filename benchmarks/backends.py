"""Inference backends side by side: images/s, latency percentiles, FLOPs and fraction of peak.

    python benchmarks/backends.py                       # ResNet18-GeM 224x224, ResNet50-GeM 480x640
    python benchmarks/backends.py --networks mobilenet_v2:192x256 --batches 1 --seconds 5

Each network is exported to a bundle by the real exporter (random weights: they do not change
the arithmetic), then every backend that works here runs the same preprocessed batches. Backends
take turns in short rounds, so a slow phase of a noisy machine hits all of them alike; ratios
are only quoted within one run. FLOPs are counted by ``torch.utils.flop_counter`` (2 per
multiply-add); the peak is this machine's measured FP32 GEMM rate (the best of torch.mm and
numpy), so "% peak" says how much of the arithmetic the backend reaches.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.export import Source, export_bundle, procedural_images  # noqa: E402
from training.models import ModelConfig, build_model  # noqa: E402
from vpr_ros.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from vpr_ros.backends.torch import TorchBackend  # noqa: E402
from vpr_ros.bundle import load_bundle  # noqa: E402


def _ort_matmul(a: np.ndarray):
    """A one-node ONNX MatMul in ONNX Runtime: its MLAS kernel is often the fastest GEMM here."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = a.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"a": a, "b": a})


def gemm_peak_gflops(n: int = 2048, seconds: float = 2.0) -> dict[str, float]:
    """FP32 GEMM rates of torch (MKL), numpy (OpenBLAS) and ONNX Runtime (MLAS) on this machine;
    the best of them is the "measured peak"."""
    rates = {}
    a32 = np.random.default_rng(0).random((n, n), dtype=np.float32)
    ta = torch.from_numpy(a32)
    kernels = (
        ("torch.mm", lambda: torch.mm(ta, ta)),
        ("numpy", lambda: a32 @ a32),
        ("ort", _ort_matmul(a32)),
    )
    for name, fn in kernels:
        fn()
        start, runs = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            fn()
            runs += 1
        rates[name] = 2 * n**3 * runs / (time.perf_counter() - start) / 1e9
    return rates


def count_gflops(model: torch.nn.Module, size: tuple[int, int]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.rand(1, 3, *size))
    return counter.get_total_flops() / 1e9


def make_bundle(backbone: str, size: tuple[int, int], out: Path) -> tuple[Path, float]:
    model, _ = build_model(ModelConfig(backbone=backbone, pooling="gem", weights="none"))
    model.eval()
    source = Source(model, size, {"backbone": backbone, "pooling": "gem"}, {"source": "benchmark"}, {})
    export_bundle(source, out, procedural_images(4, size=size), "procedural")
    return out, count_gflops(model, size)


def backends_here(bundle_dir: Path, threads: int) -> list:
    bundle = load_bundle(bundle_dir)
    found = [
        ("onnxruntime cpu", OnnxRuntimeBackend(bundle, "cpu", max_batch=64, threads=threads)),
        ("torch cpu (eager)", TorchBackend(bundle, "cpu", max_batch=64)),
    ]
    if torch.cuda.is_available():
        found += [
            ("torch cuda fp32", TorchBackend(bundle, "cuda:0", 64, "fp32", channels_last=True)),
            ("torch cuda fp16", TorchBackend(bundle, "cuda:0", 64, "fp16", channels_last=True)),
        ]
        try:
            found.append(("onnxruntime cuda", OnnxRuntimeBackend(bundle, "cuda:0", max_batch=64)))
        except Exception as exc:  # no onnxruntime-gpu: say so and go on
            logging.info("onnxruntime cuda not measured: %s", exc)
    return found


def measure(backends: list, batch: np.ndarray, seconds: float, rounds: int) -> dict[str, list[float]]:
    """Per-call latencies (s) of each backend, in interleaved rounds of ~seconds/rounds each."""
    times: dict[str, list[float]] = {name: [] for name, _ in backends}
    for _, backend in backends:  # warm-up: allocators, ORT's first-run graph work, CUDA kernels
        for _ in range(2):
            backend.embed_batch(batch)
    for _ in range(rounds):
        for name, backend in backends:
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / rounds or len(times[name]) < 3:
                t0 = time.perf_counter()
                backend.embed_batch(batch)
                times[name].append(time.perf_counter() - t0)
    return times


def parity(backends: list, batch: np.ndarray) -> dict[str, float]:
    ref = backends[1][1].embed_batch(batch)  # torch cpu: the reference
    return {name: float(np.sum(b.embed_batch(batch) * ref, axis=1).min()) for name, b in backends}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default="resnet18:224x224,resnet50:480x640", help="backbone:HxW,...")
    parser.add_argument("--batches", default="1,16", help="batch sizes (default 1,16)")
    parser.add_argument("--seconds", type=float, default=12.0, help="measuring time per backend and batch")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per measurement")
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)"
    )
    parser.add_argument("--json", type=Path, help="also write the table as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    peak = gemm_peak_gflops()
    best_peak = max(peak.values())
    cpu = f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    print(
        f"machine: {cpu}; FP32 GEMM peak " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()) + " GFLOP/s"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.networks.split(","):
            backbone, size_text = spec.split(":")
            size = tuple(int(v) for v in size_text.split("x"))
            bundle_dir, gflop = make_bundle(backbone, size, Path(tmp) / backbone)
            backends = backends_here(bundle_dir, args.threads)
            for n in (int(b) for b in args.batches.split(",")):
                batch = np.random.default_rng(0).random((n, 3, *size), dtype=np.float32)
                cosines = parity(backends, batch)
                times = measure(backends, batch, args.seconds, args.rounds)
                torch_ips = n / np.median(times["torch cpu (eager)"])
                for name, ts in times.items():
                    ms = np.array(ts) * 1e3
                    ips = n / np.median(ts)
                    rows.append(
                        {
                            "network": f"{backbone}-GeM",
                            "input": f"{size[0]}x{size[1]}",
                            "gflop_per_image": round(gflop, 2),
                            "backend": name,
                            "batch": n,
                            "images_per_s": round(ips, 2),
                            "p50_ms": round(float(np.percentile(ms, 50)), 1),
                            "p90_ms": round(float(np.percentile(ms, 90)), 1),
                            "p99_ms": round(float(np.percentile(ms, 99)), 1),
                            "calls": len(ts),
                            "gflops": round(ips * gflop, 1),
                            "pct_peak": round(100 * ips * gflop / best_peak, 1),
                            "vs_torch_cpu": round(ips / torch_ips, 2),
                            "min_cosine_vs_torch": round(cosines[name], 6),
                        }
                    )
                    print_row(rows[-1], header=len(rows) == 1)
    if args.json:
        args.json.write_text(json.dumps({"peak_gflops": peak, "rows": rows}, indent=2))


def print_row(row: dict, header: bool) -> None:
    cols = [
        ("network", "network"),
        ("input", "input"),
        ("gflop_per_image", "GFLOP/img"),
        ("backend", "backend"),
        ("batch", "batch"),
        ("images_per_s", "img/s"),
        ("p50_ms", "p50 ms"),
        ("p90_ms", "p90 ms"),
        ("p99_ms", "p99 ms"),
        ("pct_peak", "% peak"),
        ("vs_torch_cpu", "x torch cpu"),
        ("min_cosine_vs_torch", "min cos"),
    ]
    if header:
        print("| " + " | ".join(title for _, title in cols) + " |")
        print("|" + "---|" * len(cols))
    print("| " + " | ".join(str(row[key]) for key, _ in cols) + " |", flush=True)


if __name__ == "__main__":
    main()
