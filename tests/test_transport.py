"""Raw 640x480 camera frames reach the localizer over real DDS, from a separate process.

- With the shipped Fast DDS profile (``config/fastdds_large_images.xml``, loaded by the publisher
  and the node through ``FASTDDS_DEFAULT_PROFILES_FILE``) a best-effort 640x480 rgb8 stream at
  15 Hz arrives whole: at least 99 % of the frames sent once each are received by the node
  (answered, or dropped by the node itself for a newer frame, both counted in its diagnostics).
  That holds because the node leaves a core to DDS and its executor (``model.cpu_threads``
  default): with ONNX Runtime on both cores of a 2-vCPU machine, bursts of 5-17 frames were lost
  in 4 of 12 runs; with one thread none in 20 (10 of them beside a 2-process busy loop).
  Without the profile, Fast DDS's 512 KiB shared-memory segment lost most of them
  (``benchmarks/dds_delivery.py``).
- A reliable publisher that starts after the node is heard with a reliable subscription: the node
  re-subscribes with the reliability offered (``vpr_ros.nodes.transport``). (With Fast DDS's
  default transports that alone lifted delivery from 0-16 % to 99-100 % in the benchmark, but only
  to 84-100 % into a busy localizer on 2 cores, so the profile is what the goal rests on.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO_ROOT, requires_rclpy
from ros_harness import RosHarness, localizer_args, node_args, output_of

PROFILE = REPO_ROOT / "config" / "fastdds_large_images.xml"
RATE_HZ = 15.0
TRANSPORT_VARIABLES = (
    "FASTDDS_BUILTIN_TRANSPORTS",
    "FASTDDS_DEFAULT_PROFILES_FILE",
    "FASTRTPS_DEFAULT_PROFILES_FILE",
)

# The camera: a separate interpreter (cwd = repository root). Waits for the node's subscription
# (reliable, with --wait-reliable), then sends each frame once on a fixed 15 Hz schedule.
PUBLISHER = """
import array, json, sys, time
import numpy as np
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

topic, reliability, depth, rate, frames, wait_reliable = sys.argv[1:]
depth, rate, frames = int(depth), float(rate), int(frames)
policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
rclpy.init()
node = rclpy.create_node("test_camera")
qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=policy)
pub = node.create_publisher(Image, topic, qos)


def ready():
    subs = node.get_subscriptions_info_by_topic(topic)
    if wait_reliable == "1":
        subs = [s for s in subs if s.qos_profile.reliability == ReliabilityPolicy.RELIABLE]
    return bool(subs) and pub.get_subscription_count() >= 1


deadline = time.monotonic() + 60
while not ready() and time.monotonic() < deadline:
    time.sleep(0.05)
if not ready():
    print(json.dumps({"sent": 0, "error": "the node did not subscribe"}), flush=True)
    sys.exit(1)
time.sleep(1.0)  # the node's side of the match (a reader drops data of writers it does not know yet)
rgb = np.random.default_rng(1).integers(0, 256, (480, 640 * 3), np.uint8)
msg = Image(height=480, width=640, encoding="rgb8", is_bigendian=0, step=640 * 3)
msg.data = array.array("B", rgb.tobytes())
msg.header.frame_id = "camera"
start = time.monotonic()
for i in range(frames):
    delay = start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + i // 15, (i % 15) * 66_000_000
    pub.publish(msg)
print(json.dumps({"sent": frames, "seconds": time.monotonic() - start}), flush=True)
time.sleep(1.0)  # reliable: repairs of the last frames
node.destroy_node()
rclpy.shutdown()
"""


def transport_env(profile: Path | None) -> dict[str, str]:
    """This test run's environment (domain, discovery range) with only ``profile`` as transport setting."""
    env = {k: v for k, v in os.environ.items() if k not in TRANSPORT_VARIABLES}
    if profile is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    return env


def diagnostics_values(msg) -> dict[str, str]:
    values = {kv.key: kv.value for status in msg.status for kv in status.values}
    values["hardware id"] = msg.status[0].hardware_id
    return values


def stream_to_localizer(ros_process, bundle, day_map, env, reliability: str, depth: int, frames: int) -> dict:
    """Start the localizer, then the camera process; the node's final counters, frames sent, answers."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import PointCloud2

    node = ros_process(localizer_args(bundle, day_map, "diagnostics.period_s:=0.5"), env=env)
    with RosHarness("transport_test") as ros:
        matches = ros.record(PointCloud2, "/vpr/vpr_localizer/matches")
        diagnostics = ros.record(DiagnosticArray, "/diagnostics")
        # The node is up (configured, subscribed) once it publishes its first diagnostics.
        assert ros.spin_until(lambda: bool(diagnostics), 60.0, node), output_of(node)
        wait_reliable = "1" if reliability == "reliable" else "0"
        camera = ros_process(
            [
                "-c",
                PUBLISHER,
                "/cam/image",
                reliability,
                str(depth),
                str(RATE_HZ),
                str(frames),
                wait_reliable,
            ],
            env=env,
        )
        assert ros.spin_until(lambda: camera.poll() is not None, 60.0 + frames / RATE_HZ, node), output_of(
            camera
        )
        camera_out = output_of(camera)
        lines = [line for line in camera_out.splitlines() if line.startswith("{")]
        assert lines and json.loads(lines[-1]).get("sent") == frames, camera_out
        # The node's counters once they stopped moving (the last frames processed, then one more report).
        ros.spin_until(lambda: False, 1.5)
        seen = len(diagnostics)
        assert ros.spin_until(lambda: len(diagnostics) > seen, 5.0, node), output_of(node)
        values = diagnostics_values(diagnostics[-1][1])
        answered = {frame_index(msg.header.stamp) for _, msg in matches}
        values["frames not answered"] = str(sorted(set(range(frames)) - answered))
    return {"values": values, "sent": frames, "answered": len(matches), "node": node}


def frame_index(stamp) -> int:
    """The camera's frame number from the stamp it gave the frame (15 per second from t = 1000 s)."""
    return (stamp.sec - 1000) * 15 + round(stamp.nanosec / 66_000_000)


@requires_rclpy
def test_raw_640x480_at_15_hz_arrives_with_the_shipped_profile(ros_process, bundle, day_map) -> None:
    """Best-effort camera (the hard case: nothing is repaired), each frame sent once."""
    assert PROFILE.is_file()
    frames = int(7 * RATE_HZ)  # 105: the 99 % goal allows one lost frame
    run = stream_to_localizer(ros_process, bundle, day_map, transport_env(PROFILE), "best_effort", 1, frames)
    values = run["values"]
    received = int(values["frames received"])
    processed = int(values["frames processed"])
    dropped = int(values["frames dropped (newer frame arrived)"])
    report = f"sent {frames}, node received {received}, processed {processed}, dropped {dropped}: {values}"
    assert received <= frames, report
    assert abs(received - processed - dropped) <= 1, report  # every received frame is answered or counted
    assert run["answered"] == processed, report
    assert values["frames invalid"] == "0" and values["frames failed (node errors)"] == "0", report
    from vpr_ros.nodes.common import inference_threads

    threads = inference_threads()  # every core but one: the other is left to DDS and the executor
    assert values["hardware id"] == f"onnxruntime/cpu ({threads} thread{'s' if threads > 1 else ''})", report
    assert 0.0 <= float(values["intake delay p50 ms"]) < 1000.0, report
    assert received >= 0.99 * frames, report


@requires_rclpy
def test_a_reliable_camera_started_later_is_heard_reliably(ros_process, bundle, day_map) -> None:
    """A reliable camera (SystemDefaults, what most drivers publish with) that starts after the node:
    the node re-subscribes reliable (the camera waits for that) and hears every frame."""
    frames = int(3 * RATE_HZ)
    run = stream_to_localizer(ros_process, bundle, day_map, transport_env(PROFILE), "reliable", 10, frames)
    values = run["values"]
    received = int(values["frames received"])
    report = f"sent {frames}, node received {received}: {values}"
    assert received >= 0.99 * frames and received <= frames, report
    assert int(values["frames processed"]) >= 1, report
    log = output_of(run["node"])
    assert "/cam/image: the publishers offer reliable, depth 1: re-subscribed" in log, log


def test_the_subscription_takes_the_reliability_every_publisher_offers() -> None:
    pytest.importorskip("rclpy")
    from rclpy.qos import ReliabilityPolicy

    from vpr_ros.nodes.common import CAMERA_QOS
    from vpr_ros.nodes.transport import adapted_qos, offered_reliability

    def publisher(reliability):
        return SimpleNamespace(qos_profile=SimpleNamespace(reliability=reliability))

    reliable, best_effort = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT
    assert offered_reliability([]) is None
    assert offered_reliability([publisher(reliable), publisher(reliable)]) == reliable
    assert offered_reliability([publisher(reliable), publisher(best_effort)]) == best_effort
    for offered, wanted in ((None, best_effort), (best_effort, best_effort), (reliable, reliable)):
        qos = adapted_qos(CAMERA_QOS, offered)
        assert qos.reliability == wanted
        assert (qos.depth, qos.history, qos.durability) == (1, CAMERA_QOS.history, CAMERA_QOS.durability)


def test_inference_leaves_one_core_to_dds_and_the_executor(monkeypatch) -> None:
    pytest.importorskip("rclpy")
    from vpr_ros.nodes import common

    for cores, threads in (({0}, 1), ({0, 1}, 1), ({0, 1, 2, 3, 4, 5, 6, 7}, 7)):
        monkeypatch.setattr(common.os, "sched_getaffinity", lambda pid, cores=cores: cores)
        assert common.inference_threads() == threads


def fastdds_segments() -> set[str]:
    """Fast DDS's shared-memory data segments on this host (one per participant using SHM)."""
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("fastdds_*") if not p.name.endswith("_el") and "port" not in p.name}


@requires_rclpy
@pytest.mark.parametrize("node", ["localizer", "mapper"])
def test_a_node_stopped_with_sigint_leaves_no_shared_memory_behind(
    ros_process, bundle, day_map, tmp_path, node
) -> None:
    """With the shipped profile every participant maps a 16 MiB /dev/shm segment. A node that exited
    with its worker thread still running left it behind (rclpy did not destroy the participant):
    a few dozen test runs or robot restarts filled a container's 64 MiB /dev/shm."""
    import signal

    if node == "localizer":
        args = localizer_args(bundle, day_map)
    else:
        mapper = "vpr_ros.nodes.mapper"
        args = node_args(mapper, f"model.bundle_dir:={bundle}", f"map.dir:={tmp_path / 'map'}")
    before = fastdds_segments()
    proc = ros_process(args, env=transport_env(PROFILE))
    with RosHarness("shm_test") as ros:
        # Active once it subscribes to the camera (its worker thread is running then).
        subscribed = ros.spin_until(lambda: ros.node.count_subscribers("/cam/image") >= 1, 60.0, proc)
        assert subscribed, output_of(proc)
    started = fastdds_segments() - before
    assert started, "the node mapped no shared-memory segment (is the profile loaded?)"
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=20) == 0, output_of(proc)
    assert not started & fastdds_segments(), f"left in /dev/shm: {sorted(started & fastdds_segments())}"
