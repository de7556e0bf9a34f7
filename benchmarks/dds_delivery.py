"""How many raw camera frames cross Fast DDS between two processes, and how late.

    python benchmarks/dds_delivery.py                     # the full table (about 6 min)
    python benchmarks/dds_delivery.py --frames 150 --sizes 640x480 --transports default profile

A publisher PROCESS sends ``--frames`` raw rgb8 frames at ``--rate`` Hz (the header stamp is the
wall-clock time of publishing, ``frame_id`` the frame's index, which is also written into the first
and last 4 bytes of the pixels) to a subscriber PROCESS: a plain rclpy subscription with the
localizer's camera QoS (best effort, keep last 1) or, for comparison, reliable keep last 1. The
subscriber counts the frames that arrive intact (right size, first and last bytes from the same
frame), the samples Fast DDS reports lost (``message_lost`` event) and the latency from publish to
the callback. Each row is one pair of fresh processes, because Fast DDS reads its transport
settings once, when the participant is created:

- ``default``: Fast DDS's builtin transports (shared memory with a 512 KiB segment, and UDPv4);
- ``LARGE_DATA``: ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` (UDP discovery, shared memory and
  TCP for data);
- ``profile``: ``FASTDDS_DEFAULT_PROFILES_FILE=config/fastdds_large_images.xml`` (or ``--profile``).

Both processes get the same environment. The runs use their own ``ROS_DOMAIN_ID`` (``--domain``,
91) and ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``; each child runs in a session of its own and
is killed with its process group when it overstays.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "config" / "fastdds_large_images.xml"
TOPIC = "/dds_bench/image"
# Environment variables that select Fast DDS transports; cleared before each run sets its own.
TRANSPORT_VARIABLES = (
    "FASTDDS_BUILTIN_TRANSPORTS",
    "FASTDDS_DEFAULT_PROFILES_FILE",
    "FASTRTPS_DEFAULT_PROFILES_FILE",
    "RMW_FASTRTPS_USE_QOS_FROM_XML",
)
SIDES = ("pub", "sub")
PUBLISHER_QOS = {  # name: (reliability, depth)
    "best_effort/1": ("best_effort", 1),
    "best_effort/5": ("best_effort", 5),  # rclpy's qos_profile_sensor_data
    "reliable/1": ("reliable", 1),
    "reliable/10": ("reliable", 10),  # SystemDefaults, what most camera drivers publish with
}


def qos(reliability: str, depth: int):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE
        if reliability == "reliable"
        else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )


# ---------------------------------------------------------------- child: publisher


def publisher(args) -> None:
    """Wait for the subscriber, send the frames on a fixed schedule, linger for retransmissions."""
    import array

    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image

    width, height = (int(v) for v in args.size.split("x"))
    rclpy.init()
    node = rclpy.create_node("dds_bench_publisher")
    pub = node.create_publisher(Image, args.topic, qos(args.reliability, args.depth))
    deadline = time.monotonic() + args.match_timeout
    while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    if pub.get_subscription_count() < 1:
        report(node, {"sent": 0, "error": "no subscriber matched"})
        return
    time.sleep(args.settle)  # the reader's side of the match (it drops data of unknown writers)
    pixels = np.random.default_rng(0).integers(0, 256, (height, width * 3), np.uint8)
    msg = Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=width * 3)
    publish_ms = []
    start, period = time.monotonic() + 0.1, 1.0 / args.rate
    for i in range(args.frames):
        flat = pixels.reshape(-1)
        flat[:4] = np.frombuffer(np.uint32(i).tobytes(), np.uint8)
        flat[-4:] = flat[:4]
        msg.data = array.array("B", pixels.tobytes())
        msg.header.frame_id = str(i)
        delay = start + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
        t0 = time.perf_counter()
        pub.publish(msg)
        publish_ms.append((time.perf_counter() - t0) * 1e3)
    late = time.monotonic() - (start + (args.frames - 1) * period)
    time.sleep(args.linger)  # reliable: repairs of the last frames
    report(
        node,
        {
            "sent": args.frames,
            "publish_ms_p50": float(np.percentile(publish_ms, 50)),
            "publish_ms_max": float(np.max(publish_ms)),
            "behind_schedule_s": late,
        },
    )


def report(node, result: dict) -> None:
    """A child's one JSON line for the parent, then ROS left cleanly: destroying the participant
    also frees its /dev/shm segment (a child that just returned left it behind)."""
    import rclpy

    print(json.dumps(result), flush=True)
    node.destroy_node()
    rclpy.shutdown()


# ---------------------------------------------------------------- child: subscriber


def subscriber(args) -> None:
    """Count intact frames until the publisher has left (or the time limit); print one JSON line."""
    import numpy as np
    import rclpy
    from rclpy.event_handler import SubscriptionEventCallbacks
    from sensor_msgs.msg import Image

    width, height = (int(v) for v in args.size.split("x"))
    expected = height * width * 3
    got: dict[int, float] = {}
    broken, lost_events = [0], [0]

    def on_image(msg) -> None:
        arrived = time.time_ns()
        index = int(msg.header.frame_id)
        data = msg.data
        head, tail = bytes(data[:4]), bytes(data[-4:])
        if len(data) != expected or head != tail or int.from_bytes(head, "little") != index:
            broken[0] += 1
            return
        sent = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        got[index] = (arrived - sent) / 1e6

    def on_lost(status) -> None:
        lost_events[0] = status.total_count

    rclpy.init()
    node = rclpy.create_node("dds_bench_subscriber")
    node.create_subscription(
        Image,
        args.topic,
        on_image,
        qos(args.reliability, args.depth),
        event_callbacks=SubscriptionEventCallbacks(message_lost=on_lost),
    )
    deadline, seen, gone_since = time.monotonic() + args.time_limit, False, None
    while time.monotonic() < deadline and len(got) < args.frames:
        rclpy.spin_once(node, timeout_sec=0.05)
        count = node.count_publishers(args.topic)
        seen = seen or count > 0
        if seen and count == 0:
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > 0.5:
                break
    latency = np.array(list(got.values())) if got else np.array([float("nan")])
    first_missing = sorted(set(range(args.frames)) - set(got))[:10]
    report(
        node,
        {
            "received": len(got),
            "broken": broken[0],
            "lost_events": lost_events[0],
            "latency_ms_p50": float(np.percentile(latency, 50)),
            "latency_ms_p99": float(np.percentile(latency, 99)),
            "latency_ms_max": float(np.max(latency)),
            "first_missing": first_missing,
        },
    )


# ---------------------------------------------------------------- parent


def transport_env(transport: str, side: str, profile: Path, domain: int, discovery: str) -> dict[str, str]:
    """The environment of one side (``pub`` or ``sub``) of a run. ``transport`` is ``default``,
    ``LARGE_DATA``, ``profile`` (both sides) or ``profile:pub`` / ``profile:sub`` (one side only)."""
    env = {k: v for k, v in os.environ.items() if k not in TRANSPORT_VARIABLES}
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE=discovery)
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    kind, _, only = transport.partition(":")
    if kind == "LARGE_DATA":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"
    elif kind == "profile":
        if only in ("", side):
            env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    elif kind != "default":
        raise ValueError(transport)
    return env


def start(role: str, argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, *argv],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(log, "w"),  # noqa: SIM115 -- kept for a failure message
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout_s: float) -> dict:
    """The child's JSON line; a child past ``timeout_s`` is killed with its whole process group."""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"killed after {timeout_s:.0f} s"}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": f"exit code {proc.returncode}, no result"}


def trial(transport: str, size: str, pub_qos: str, sub_qos: str, args, tmp: Path) -> dict:
    env = {side: transport_env(transport, side, args.profile, args.domain, args.discovery) for side in SIDES}
    common = ["--size", size, "--frames", str(args.frames), "--rate", str(args.rate), "--topic", TOPIC]
    sub_rel, sub_depth = sub_qos.split("/")
    pub_rel, pub_depth = PUBLISHER_QOS[pub_qos]
    limit = 20 + args.frames / args.rate + 10
    sub_argv = [*common, "--reliability", sub_rel, "--depth", sub_depth, "--time-limit", str(limit)]
    sub = start("sub", sub_argv, env["sub"], tmp / "sub.log")
    try:
        time.sleep(0.3)
        pub_argv = [*common, "--reliability", pub_rel, "--depth", str(pub_depth)]
        pub = start("pub", pub_argv, env["pub"], tmp / "pub.log")
        try:
            sent = finish(pub, limit + 10)
        finally:
            if pub.poll() is None:
                os.killpg(pub.pid, signal.SIGKILL)
        received = finish(sub, 15)
    finally:
        if sub.poll() is None:
            os.killpg(sub.pid, signal.SIGKILL)
    for name in ("pub", "sub"):
        text = (tmp / f"{name}.log").read_text()
        errors = [line for line in text.splitlines() if "Error" in line or "error" in line]
        if errors:
            received.setdefault("stderr", []).append(f"{name}: {errors[0][:200]}")
    return {**sent, **received}


def row(transport: str, size: str, pub_qos: str, sub_qos: str, result: dict, frames: int) -> str:
    if "received" not in result or "sent" not in result or not result.get("sent"):
        return f"| {transport} | {size} | {pub_qos} | {sub_qos} | failed: {result} |"
    share = 100.0 * result["received"] / result["sent"]
    cells = [
        transport,
        size,
        pub_qos,
        sub_qos,
        f"{result['received']}/{result['sent']}",
        f"{share:.1f}",
        str(result["lost_events"]),
        str(result["broken"]),
        f"{result['latency_ms_p50']:.1f}",
        f"{result['latency_ms_p99']:.1f}",
        f"{result['publish_ms_p50']:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=150, help="frames per row (150 = 10 s at 15 Hz)")
    parser.add_argument("--rate", type=float, default=15.0, help="publishing rate (Hz)")
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1280x720"], help="WxH, rgb8")
    parser.add_argument("--transports", nargs="+", default=["default", "LARGE_DATA", "profile"])
    parser.add_argument(
        "--publisher-qos", nargs="+", default=["best_effort/1", "reliable/10"], choices=list(PUBLISHER_QOS)
    )
    parser.add_argument(
        "--subscriber-qos", nargs="+", default=["best_effort/1"], help="reliability/depth, e.g. reliable/1"
    )
    parser.add_argument("--profile", type=Path, default=PROFILE, help="Fast DDS XML for the 'profile' rows")
    parser.add_argument("--domain", type=int, default=91, help="ROS_DOMAIN_ID of the runs")
    parser.add_argument(
        "--discovery",
        default="LOCALHOST",
        choices=("LOCALHOST", "SUBNET"),
        help="ROS_AUTOMATIC_DISCOVERY_RANGE (LOCALHOST: rmw_fastrtps adds its own default transports)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per row")
    parser.add_argument("--role", choices=("pub", "sub"), help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default=TOPIC, help=argparse.SUPPRESS)
    parser.add_argument("--reliability", help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--time-limit", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--match-timeout", type=float, default=20.0, help=argparse.SUPPRESS)
    parser.add_argument("--settle", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--linger", type=float, default=2.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "pub":
        return publisher(args)
    if args.role == "sub":
        return subscriber(args)
    rmem = Path("/proc/sys/net/core/rmem_max").read_text().strip()
    print(
        f"net.core.rmem_max = {rmem}; {args.frames} frames at {args.rate:g} Hz per row; "
        f"ROS_AUTOMATIC_DISCOVERY_RANGE={args.discovery}; profile {args.profile}"
    )
    print(
        "| transports | image rgb8 | publisher QoS | subscriber QoS | received intact / sent | % "
        "| reported lost | broken | latency p50 ms | p99 ms | publish() p50 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for transport in args.transports:
                for pub_qos in args.publisher_qos:
                    for sub_qos in args.subscriber_qos:
                        if pub_qos.startswith("best_effort") and sub_qos.startswith("reliable"):
                            continue  # incompatible: they never match
                        for _ in range(args.repeat):
                            result = trial(transport, size, pub_qos, sub_qos, args, Path(tmp))
                            print(row(transport, size, pub_qos, sub_qos, result, args.frames), flush=True)
                            for line in result.get("stderr", []):
                                print(f"    {line}", flush=True)


if __name__ == "__main__":
    main()
