"""Latency of the localization node over real DDS, and its behaviour under a too-fast camera.

    python benchmarks/localizer_latency.py                      # latency, both Fast DDS transports
    python benchmarks/localizer_latency.py --cpu-threads 0 2    # the node's default, then 2 ORT threads
    python benchmarks/localizer_latency.py --overload --seconds 600   # 30 Hz for 10 min, RSS sampled

Latency mode: the shipped default model and a map built from a generated town; 640x480 rgb8
frames are published one at a time (the next when the previous answer arrived) and the time
from publish to the ``~/matches`` answer is measured, next to the bare backend call on the same
frame (resize + embed, in this process) and the node's own receive-to-publish time (its
diagnostics). The difference between end to end and the node's own time is the DDS transport
(image in, answer back) plus the node's intake delay: from the DDS reception of the image (the
rmw's timestamp) to the node's callback, also reported on its own (the executor's share). It
runs once with Fast DDS's default transports and once with the shipped profile
(``FASTDDS_DEFAULT_PROFILES_FILE=config/fastdds_large_images.xml``, both sides).

Overload mode: frames at ``--rate`` Hz (default 30) against a bundle at ``--input-size`` (default
480x640, slower than 30 Hz on 2 cores) for ``--seconds``; prints latency percentiles over time,
drops counted by the node, and the node's resident memory every ``--sample-s`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOG = Path(tempfile.gettempdir()) / "vpr_localizer_benchmark.log"
PROFILE = ROOT / "config" / "fastdds_large_images.xml"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def make_town(out: Path) -> Path:
    from training.synth.generate import generate
    from training.synth.presets import get_preset

    preset = dataclasses.replace(get_preset("small"), name="latency")
    generate(out, preset, seed=5, formats=("bag",), progress=False)
    return out / "bags"


def make_map(bags: Path, bundle: Path, out: Path) -> Path:
    from vpr_ros.mapping.build_map import main as build_map

    argv = ["--bag", str(bags / "t00_day"), "--model", str(bundle), "--out", str(out), "--quiet"]
    assert build_map([*argv, "--min-distance", "2", "--backend", "onnxruntime"]) == 0
    return out


def make_slow_bundle(size: tuple[int, int], out: Path) -> Path:
    from training.export import Source, export_bundle, procedural_images
    from training.models import ModelConfig, build_model

    model, _ = build_model(ModelConfig(backbone="mobilenet_v2", weights="imagenet"))
    source = Source(model, size, {"backbone": "mobilenet_v2", "pooling": "gem"}, {"source": "benchmark"}, {})
    export_bundle(source, out, procedural_images(3), "procedural", torch_program=False)
    return out


def query_images(bags: Path, size: tuple[int, int]) -> list[np.ndarray]:
    import cv2

    from vpr_ros.io.rosbag_source import bag_topics, choose_topics, iter_frames

    bag = bags / "t01_night"
    image_topic, _, pose_topic, _ = choose_topics(bag_topics(bag))
    frames = list(iter_frames(bag, image_topic, pose_topic, 0.05))[::4][:40]
    return [cv2.resize(f.rgb(), (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for f in frames]


def start_localizer(bundle: Path, place_map: Path, env: dict, cpu_threads: int = 0) -> subprocess.Popen:
    args = [sys.executable, "-m", "vpr_ros.nodes.localizer", "--ros-args", "-r", "__ns:=/vpr"]
    args += ["-r", "image:=/bench/image", "-p", f"model.bundle_dir:={bundle}", "-p", f"map.dir:={place_map}"]
    args += ["-p", "model.backend:=onnxruntime", "-p", "diagnostics.period_s:=1.0"]
    args += ["-p", f"model.cpu_threads:={cpu_threads}"]
    log = open(LOG, "w")  # noqa: SIM115 -- the node's output, kept for a failure message
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)


def node_values(diagnostics: list) -> dict[str, str]:
    return {kv.key: kv.value for status in diagnostics[-1][1].status for kv in status.values}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def localizer_session(bundle: Path, place_map: Path, name: str, cpu_threads: int = 0) -> Iterator[tuple]:
    """The localizer as its own process and a harness publishing to it:
    ``(process, harness, match tables, diagnostics, image publisher)``; the process is stopped after."""
    from diagnostic_msgs.msg import DiagnosticArray
    from ros_harness import RosHarness
    from sensor_msgs.msg import Image, PointCloud2

    proc = start_localizer(bundle, place_map, dict(os.environ), cpu_threads)
    try:
        with RosHarness(name) as ros:
            matches = ros.record(PointCloud2, "/vpr/vpr_localizer/matches")
            diagnostics = ros.record(DiagnosticArray, "/diagnostics")
            pub = ros.publisher(Image, "/bench/image")
            if not ros.wait_for_subscribers("/bench/image", timeout_s=60):
                raise RuntimeError(f"the localizer did not subscribe: {LOG.read_text()[-2000:]}")
            yield proc, ros, matches, diagnostics, pub
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def latency_run(
    bundle: Path, place_map: Path, images: list[np.ndarray], frames: int, cpu_threads: int
) -> dict:
    """One process per transport setting (Fast DDS reads the variable at start)."""
    from ros_harness import image_msg, stamp_of

    session = localizer_session(bundle, place_map, "latency_bench", cpu_threads)
    with session as (proc, ros, matches, diagnostics, pub):
        e2e, resent = [], 0
        for i in range(frames + 5):  # 5 warm-up frames
            stamp = 1_000_000_000 + i
            msg = image_msg(images[i % len(images)], stamp)
            sent = time.monotonic()
            pub.publish(msg)
            while not ros.spin_until(
                lambda s=stamp: bool(matches) and stamp_of(matches[-1][1]) == s, 1.0, proc
            ):
                if proc.poll() is not None:
                    raise RuntimeError(f"the localizer exited: {LOG.read_text()[-2000:]}")
                sent = time.monotonic()
                pub.publish(msg)  # lost (best effort): send again, and count it
                resent += 1
            if i >= 5:
                e2e.append(matches[-1][0] - sent)
        ros.spin_until(lambda: False, 1.5)
        values = node_values(diagnostics)
    e2e_ms = np.array(e2e) * 1e3
    return {
        "resent": resent,
        "e2e_p50_ms": float(np.percentile(e2e_ms, 50)),
        "e2e_p99_ms": float(np.percentile(e2e_ms, 99)),
        "node_p50_ms": float(values["latency p50 ms"]),
        "node_p99_ms": float(values["latency p99 ms"]),
        "intake_p50_ms": float(values["intake delay p50 ms"]),
        "backend_p50_ms": float(values["backend latency p50 ms"]),
    }


def bare_backend_ms(bundle: Path, images: list[np.ndarray], cpu_threads: int, repeats: int = 60) -> float:
    """Resize + embed in this process, with the node's ONNX Runtime thread count."""
    from vpr_ros.backends import create_backend
    from vpr_ros.bundle import load_bundle

    backend = create_backend(load_bundle(bundle), "onnxruntime", cpu_threads=cpu_threads)
    for image in images[:5]:
        backend.embed([image])
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        backend.embed([images[i % len(images)]])
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def overload_run(bundle: Path, place_map: Path, images: list[np.ndarray], args) -> None:
    from ros_harness import image_msg, stamp_of

    with localizer_session(bundle, place_map, "overload_bench") as (proc, ros, matches, diagnostics, pub):
        sent: dict[int, float] = {}
        start, period, i = time.monotonic(), 1.0 / args.rate, 0
        next_sample, samples = start, []
        print("| t s | sent | answered | dropped (node) | latency p50 ms | p99 ms | node RSS MB |")
        print("|---|---|---|---|---|---|---|")
        while time.monotonic() - start < args.seconds:
            due = start + i * period
            ros.spin_until(lambda due=due: time.monotonic() >= due, 1.0)
            stamp = 1_000_000_000 + i
            sent[stamp] = time.monotonic()
            pub.publish(image_msg(images[i % len(images)], stamp))
            i += 1
            if time.monotonic() >= next_sample and diagnostics:
                window = [t - sent[stamp_of(m)] for t, m in matches[-100:]]
                values = node_values(diagnostics)
                row = (
                    time.monotonic() - start,
                    i,
                    len(matches),
                    values["frames dropped (newer frame arrived)"],
                )
                p50, p99 = (np.percentile(window, q) * 1e3 if window else float("nan") for q in (50, 99))
                samples.append(rss_mb(proc.pid))
                cells = [
                    f"{row[0]:.0f}",
                    *map(str, row[1:]),
                    f"{p50:.0f}",
                    f"{p99:.0f}",
                    f"{samples[-1]:.0f}",
                ]
                print("| " + " | ".join(cells) + " |", flush=True)
                next_sample += args.sample_s
        print(f"RSS first/last sample: {samples[0]:.0f} / {samples[-1]:.0f} MB; max {max(samples):.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="frames per latency run (200)")
    parser.add_argument("--overload", action="store_true", help="the too-fast-camera run instead")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate for --overload (Hz)")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of --overload (s)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="--overload sampling period (s)")
    parser.add_argument("--input-size", default="480x640", help="bundle input for --overload (HxW)")
    parser.add_argument("--child-timeout", type=float, default=180.0, help="limit of one latency run (s)")
    parser.add_argument(
        "--cpu-threads",
        type=int,
        nargs="+",
        default=[0],
        help="the node's model.cpu_threads, one table block each (0 = its default, every core but one)",
    )
    args = parser.parse_args()
    from vpr_ros.bundle import default_model_dir
    from vpr_ros.nodes.common import inference_threads

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bags = make_town(tmp / "town")
        if args.overload:
            size = tuple(int(v) for v in args.input_size.split("x"))
            bundle = make_slow_bundle(size, tmp / "bundle")
            overload_run(bundle, make_map(bags, bundle, tmp / "map"), query_images(bags, (480, 640)), args)
            return
        bundle = default_model_dir()
        make_map(bags, bundle, tmp / "map")  # the child processes read it from there
        print(
            "| image rgb8 | ORT threads | Fast DDS transports | bare backend ms | e2e p50 ms | e2e p99 ms "
            "| node p50 ms | node p99 ms | intake delay p50 ms | backend p50 ms | frames lost and re-sent |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for threads, size in itertools.product(args.cpu_threads, ((240, 320), (480, 640))):
            threads = threads or inference_threads()
            bare = bare_backend_ms(bundle, query_images(bags, size), threads)
            for transport in ("default", "shipped profile"):
                env = dict(os.environ)
                env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
                env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
                if transport == "shipped profile":
                    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
                argv = [
                    "--frames",
                    str(args.frames),
                    "--image-size",
                    f"{size[0]}x{size[1]}",
                    "--cpu-threads",
                    str(threads),
                ]
                command = [sys.executable, __file__, *argv, "--child", str(tmp)]
                row = run_child(command, env, args.child_timeout)
                print(f"| {size[1]}x{size[0]} | {threads} | {transport} | {bare:.1f} | {row} |", flush=True)


def run_child(command: list[str], env: dict, timeout_s: float) -> str:
    """One latency run's table row. The child runs in a session of its own, so that a run past
    ``timeout_s`` is stopped with everything it started (its localizer process too), not only the
    child itself."""
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"no result within {timeout_s:.0f} s (frames kept getting lost)"
    return out.strip() or f"failed: {err.strip()[-200:]}"


def child(argv: list[str]) -> None:
    """One latency run in a fresh process (the transport variable is read at DDS start)."""
    frames, tmp = int(argv[argv.index("--frames") + 1]), argv[-1]
    from vpr_ros.bundle import default_model_dir

    bags = Path(tmp) / "town" / "bags"
    size = tuple(int(v) for v in argv[argv.index("--image-size") + 1].split("x"))
    threads = int(argv[argv.index("--cpu-threads") + 1])
    result = latency_run(default_model_dir(), Path(tmp) / "map", query_images(bags, size), frames, threads)
    keys = ("e2e_p50_ms", "e2e_p99_ms", "node_p50_ms", "node_p99_ms", "intake_p50_ms", "backend_p50_ms")
    print(" | ".join(f"{result[k]:.1f}" for k in keys) + f" | {result['resent']}")


if __name__ == "__main__":
    if "--child" in sys.argv:
        child(sys.argv)
    else:
        main()
