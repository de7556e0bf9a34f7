"""Shared test fixtures.

ROS 2 isolation: every test run gets its own ``ROS_DOMAIN_ID`` and keeps discovery on this
host, so parallel runs (and other robots on the network) never see each other. The variables
are set at import time, before any test imports rclpy, and are inherited by the processes the
tests start. Processes started through ``ros_process`` are killed with their whole process
group when the test ends, whatever its outcome.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Domain ids 1..100 are safe for Fast DDS port arithmetic on Linux; 0 is the shared default.
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _rclpy_available() -> bool:
    try:
        import rclpy  # noqa: F401
    except ImportError:
        return False
    return True


HAVE_RCLPY = _rclpy_available()
requires_rclpy = pytest.mark.skipif(
    not HAVE_RCLPY, reason="rclpy is not installed (pip install -e '.[ros]' or source a ROS 2 install)"
)


@pytest.fixture
def ros_process() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start Python processes that talk ROS 2; all of them are stopped at teardown."""
    started: list[subprocess.Popen] = []

    def start(args: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, *args],
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO_ROOT,
            **kwargs,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGINT, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """The `small` synthetic world (seed 0), generated once per test session (~6 s). Read-only:
    tests that damage a world copy it first."""
    from training.synth.generate import generate
    from training.synth.presets import get_preset

    out = tmp_path_factory.mktemp("small_world") / "world"
    generate(out, get_preset("small"), seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, small_world) -> Path:
    """A model bundle of MobileNetV2-GeM (packaged ImageNet weights) at 64x96, exported once per
    session by the real exporter (~6 s). Read-only: tests that damage a bundle copy it first."""
    pytest.importorskip("onnx", reason="bundle export needs the 'train' extra")
    from training.export import Source, export_bundle, image_folder, sample_images
    from training.models import ModelConfig, build_model

    model, _ = build_model(ModelConfig(backbone="mobilenet_v2", weights="imagenet"))
    source = Source(model, (64, 96), {"backbone": "mobilenet_v2", "pooling": "gem"}, {"source": "tests"}, {})
    images = sample_images(image_folder(small_world / "msls" / "train_val" / "synthtown" / "database"), 8)
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    export_bundle(source, out, images, "small world")
    return out


# The node-level town: the mapped route by day, the same route at dusk (another condition, other lane)
# and a day detour that leaves the route; the nodes, the replay and the evaluation tests share it.
@pytest.fixture(scope="session")
def town(tmp_path_factory) -> Path:
    from training.synth.generate import generate
    from training.synth.presets import Drive, TraverseSpec, get_preset

    small = get_preset("small")

    def drive(spacing: float, offset: float) -> Drive:
        return Drive(spacing_m=spacing, lateral_offset_m=offset, heading_jitter_deg=2.0, speed_mps=8.0)

    preset = dataclasses.replace(
        small,
        name="nodes",
        routes={
            **small.routes,
            "detour": [(1, 1), (2, 1), (2, 2), (2, 3)],
            # leaves the mapped route at its start, loops through unmapped streets, rejoins it
            "rejoin": [(1, 1), (1, 2), (2, 2), (2, 1), (3, 1), (3, 2)],
        },
        traverses=(
            TraverseSpec("day", "database", "main", drive(1.0, 1.5)),
            TraverseSpec("dusk", "query", "main", drive(4.0, 0.5)),
            TraverseSpec("day", "query", "detour", drive(4.0, 1.0)),
            TraverseSpec("night", "query", "main", drive(2.0, 0.5)),
            TraverseSpec("day", "query", "rejoin", drive(4.0, 1.0)),
        ),
    )
    out = tmp_path_factory.mktemp("town") / "world"
    generate(out, preset, seed=3, formats=("bag",), progress=False)
    return out / "bags"


# The unknown-place threshold the node tests run the shipped model with in the test town. The
# model.json threshold is calibrated on real photographs, where similarities run lower; in the
# synthetic town the shipped model scores most frames above it, so these tests calibrate for the
# town as a site would. There, single on-route dusk frames and off-route detour frames overlap
# (0.65-0.81 vs 0.25-0.82): at 0.77 12 of the 39 dusk frames are accepted and 20 of the 26
# off-route frames refused (measured with vpr-eval; README, "Accuracy on real images").
TOWN_THRESHOLD = 0.77


@pytest.fixture(scope="session")
def bundle() -> Path:
    """The shipped default model (PCA-whitened): its model.json suggests the threshold."""
    from vpr_ros.bundle import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def day_map(tmp_path_factory, town, bundle) -> Path:
    from vpr_ros.mapping.build_map import main as build_map

    out = tmp_path_factory.mktemp("nodes_map") / "map"
    argv = [
        "--bag",
        str(town / "t00_day"),
        "--model",
        str(bundle),
        "--out",
        str(out),
        "--min-distance",
        "2.0",
    ]
    assert build_map([*argv, "--backend", "onnxruntime", "--quiet"]) == 0
    return out
