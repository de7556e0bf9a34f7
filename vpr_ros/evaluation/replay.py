"""``vpr-replay``: replay a recorded query run through the real localization node over DDS, and report.

What ``launch/replay_eval.launch.py`` does on a robot, for machines without ``ros2 launch`` (a venv
with the PyPI ROS 2 wheels): it checks the inputs, then starts three processes in one ROS domain:

- ``vpr_localizer`` with the model and the map (``search.top_k`` 20, for recall@20),
- ``vpr_replay_evaluator``, which pairs the answers with the bag's ground truth and writes the
  report,
- ``vpr_bag_player``, flow-controlled by default (the next frame goes out when the previous one
  was answered: the same answers on any machine) or at a multiple of the recorded rate
  (``--rate``: what a robot sees, frames dropped included),

waits for the evaluator, stops the others and exits with the evaluator's status. The nodes' logs go
to ``<out>.logs/`` and are printed when something fails.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vpr_ros.backends import BACKENDS
from vpr_ros.cli import add_bag_topic_arguments
from vpr_ros.errors import BackendError, InputError
from vpr_ros.evaluation.ground_truth import check_same_frame
from vpr_ros.evaluation.offline import (
    TOP_K,
    sequence_arguments,
    sequence_settings,
    settings_arguments,
    settings_from,
)
from vpr_ros.evaluation.session import prepare
from vpr_ros.io.pose_sync import DEFAULT_TOLERANCE_S
from vpr_ros.io.rosbag_source import BagInfo, bag_info
from vpr_ros.nodes import params as P

NAMESPACE = "/vpr"
ANSWERS = f"{NAMESPACE}/vpr_localizer/matches"
STOP_WAIT_S = 15.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpr-replay",
        description="Replay a recorded query run through the localization node over DDS, and report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  vpr-replay --map maps/site --bag bags/dusk --model bundle --out reports/dusk",
    )
    parser.add_argument("--map", required=True, type=Path, help="place map directory")
    parser.add_argument("--bag", required=True, type=Path, help="query rosbag2 directory (images + poses)")
    parser.add_argument("--model", required=True, type=Path, help="model bundle the map was built with")
    parser.add_argument("--out", required=True, type=Path, help="report directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report at --out")
    parser.add_argument(
        "--rate",
        type=float,
        metavar="X",
        help="play at X times the recorded rate instead of flow-controlled (frames may be dropped)",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="the localizer's model.backend (default: auto)"
    )
    add_bag_topic_arguments(parser, "ground-truth poses", DEFAULT_TOLERANCE_S)
    settings_arguments(parser)
    sequence_arguments(parser)
    parser.add_argument(
        "--timeout", type=float, default=3600.0, metavar="S", help="give up after S seconds (default: 3600)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.rate is not None and not args.rate > 0:
            raise InputError(f"--rate must be > 0, got {args.rate}")
        inputs = prepare(args.map, args.model, args.out, args.overwrite, settings_from(args), args.threshold)
        info = bag_info(args.bag, args.image_topic, args.pose_topic)
        check_same_frame(info, inputs.place_map, inputs.map_dir)
        commands = _commands(args, info)
    except (InputError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _run(commands, args.out.expanduser(), args.timeout)


def _ros_args(
    module: str, table: tuple[P.Param, ...], remaps: dict[str, str], params: dict[str, P.Value]
) -> list[str]:
    """The node's command line; values its parameter ``table`` would refuse are refused here,
    before any process starts."""
    by_name = {p.name: p for p in table}
    reasons = [reason for name, value in params.items() if (reason := by_name[name].check(value))]
    if reasons:
        raise InputError(f"{module.rsplit('.', 1)[-1]}: " + "; ".join(reasons))
    command = [sys.executable, "-m", module, "--ros-args", "-r", f"__ns:={NAMESPACE}"]
    for name, target in remaps.items():
        command += ["-r", f"{name}:={target}"]
    for name, value in params.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        command += ["-p", f"{name}:={text}"]
    return command


def _sequence_params(args: argparse.Namespace, info: BagInfo) -> dict[str, P.Value]:
    """The localizer's sequence.* parameters for --sequence-length / --sequence-motion / --sequence-speeds."""
    if args.sequence_length is None:
        return {}
    sequence_settings(args)  # refuse a bad --sequence-speeds before any node starts
    params: dict[str, P.Value] = {"sequence.enabled": True, "sequence.length": args.sequence_length}
    if args.sequence_motion == "time":
        params["sequence.min_speed_mps"], params["sequence.max_speed_mps"] = args.sequence_speeds
    if args.sequence_motion == "pose":
        if not info.pose_type.endswith("Odometry"):
            raise InputError(
                f"--sequence-motion pose needs nav_msgs/Odometry on {info.pose_topic}, "
                f"the bag has {info.pose_type}"
            )
        params["odometry.source"], params["odometry.topic"] = "topic", info.pose_topic
    return params


def _image_input(info: BagInfo) -> tuple[str, str]:
    """The localizer's ``image`` remap and ``input.transport`` for the bag's image topic."""
    if not info.image_type.endswith("CompressedImage"):
        return info.image_topic, "raw"
    if not info.image_topic.endswith("/compressed"):
        raise InputError(
            f"bag {info.path}: compressed images on {info.image_topic}; the localizer expects them on "
            "'<image topic>/compressed' (image_transport's name)"
        )
    return info.image_topic.removesuffix("/compressed"), "compressed"


def _commands(args: argparse.Namespace, info: BagInfo) -> dict[str, list[str]]:
    image_topic, transport = _image_input(info)
    played = "flow-controlled" if args.rate is None else f"at {args.rate:g}x the recorded rate"
    common = {"map.dir": str(args.map.resolve()), "model.bundle_dir": str(args.model.resolve())}
    return {
        "localizer": _ros_args(
            "vpr_ros.nodes.localizer",
            P.LOCALIZER,
            {"image": image_topic},
            {
                **common,
                "model.backend": args.backend,
                "input.transport": transport,
                "search.top_k": TOP_K,
                "search.similarity_threshold": args.threshold,
                "output.publish_markers": False,
                **_sequence_params(args, info),
            },
        ),
        "evaluator": _ros_args(
            "vpr_ros.nodes.replay_evaluator",
            P.REPLAY_EVALUATOR,
            {"matches": ANSWERS},
            {
                **common,
                "bag": str(args.bag.resolve()),
                "input.image_topic": info.image_topic,
                "input.pose_topic": info.pose_topic,
                "input.sync_tolerance_s": args.sync_tolerance,
                "report.dir": str(args.out.expanduser().resolve()),
                "report.overwrite": args.overwrite,
                "eval.distance_m": args.distance,
                "eval.angle_deg": args.angle or 0.0,
                "search.similarity_threshold": args.threshold,
                "eval.idle_timeout_s": 30.0 if args.rate is None else 5.0,
                "run.description": f"ROS 2 replay through vpr_localizer over DDS, vpr_bag_player {played}",
            },
        ),
        "player": _ros_args(
            "vpr_ros.nodes.bag_player",
            P.BAG_PLAYER,
            {"answers": ANSWERS},
            {
                "bag": str(args.bag.resolve()),
                "image_topic": info.image_topic,
                "mode": "flow" if args.rate is None else "rate",
                "rate": args.rate or 1.0,
                "wait_for_subscribers": 2,  # the localizer and the evaluator
            },
        ),
    }


def _run(commands: dict[str, list[str]], out: Path, timeout_s: float) -> int:
    logs = out.with_name(out.name + ".logs")
    logs.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name in ("localizer", "evaluator", "player"):
            stdout = None if name == "evaluator" else (logs / f"{name}.log").open("w")
            processes[name] = subprocess.Popen(
                commands[name], stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True
            )
        status = _wait_for_evaluator(processes, timeout_s, logs)
    except KeyboardInterrupt:
        print("interrupted: stopping the replay", file=sys.stderr)
        _stop(processes.get("evaluator"))  # SIGINT: it reports what arrived so far
        status = 130
    finally:
        for proc in processes.values():
            _stop(proc)
    if status == 0:
        shutil.rmtree(logs, ignore_errors=True)
    return status


def _wait_for_evaluator(processes: dict[str, subprocess.Popen], timeout_s: float, logs: Path) -> int:
    deadline = time.monotonic() + timeout_s
    evaluator = processes["evaluator"]
    while evaluator.poll() is None:
        for name in ("localizer", "player"):
            code = processes[name].poll()
            if code not in (None, 0):
                return _failed(f"{name} exited with status {code}", logs)
        if time.monotonic() > deadline:
            return _failed(f"no report after {timeout_s:.0f} s", logs)
        time.sleep(0.2)
    if evaluator.returncode != 0:
        return _failed(f"evaluator exited with status {evaluator.returncode}", logs)
    return 0


def _failed(what: str, logs: Path) -> int:
    print(f"error: replay failed: {what}; logs in {logs}", file=sys.stderr)
    for log in sorted(logs.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"--- {log.name} (last lines)\n" + "\n".join(tail), file=sys.stderr)
    return 1


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
