"""``vpr-build-engine``: build (or check) the TensorRT engine of a model bundle on this device.

Building takes minutes, so a robot is best provisioned with this command once (nodes then
load the cached engine in seconds; they can also build on first start). The engine is cached
under ``<bundle>/engines`` keyed by this GPU, TensorRT version, precision, batch profile and
ONNX hash (:mod:`vpr_ros.trt.engine_cache`); a valid cached engine is reused unless ``--force``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from vpr_ros.bundle import load_bundle
from vpr_ros.cli import integer_at_least, run
from vpr_ros.errors import InputError
from vpr_ros.trt.builder import DEFAULT_WORKSPACE_MB, ensure_engine, import_tensorrt, supported_major
from vpr_ros.trt.calibration import DEFAULT_COUNT, calibration_set
from vpr_ros.trt.engine_cache import PRECISIONS, EngineKey, engine_key, gpu_identity

DESCRIPTION = """\
Build the TensorRT engine of a model bundle for this GPU and cache it in the bundle's engines/
directory (or --cache-dir). Run it on the target device: an engine only runs on the GPU model and
TensorRT version it was built with, so Jetson engines must be built on the Jetson. FP16 by default;
INT8 is optional and needs calibration images (--calibration: a folder of images or a rosbag2
recording from the area the robot will localize in)."""

EPILOG = """\
examples:
  vpr-build-engine --bundle bundles/resnet18-gcl
  vpr-build-engine --bundle bundles/resnet18-gcl --precision int8 --calibration bags/map_run
exit status: 0 engine ready, 2 bad input or TensorRT/GPU unavailable (one line on stderr)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpr-build-engine",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bundle", required=True, type=Path, help="model bundle directory (model.onnx + model.json)"
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp16", help="engine precision (default: fp16)"
    )
    parser.add_argument(
        "--calibration", type=Path, help="INT8 only: folder of images or rosbag2 directory to calibrate on"
    )
    parser.add_argument(
        "--calibration-count",
        type=integer_at_least(1),
        default=DEFAULT_COUNT,
        help=f"frames to calibrate on, spread evenly over the source (default: {DEFAULT_COUNT})",
    )
    parser.add_argument(
        "--calibration-topic", help="image topic of the calibration bag (default: its first one)"
    )
    parser.add_argument(
        "--max-batch",
        type=integer_at_least(1),
        default=16,
        help="largest batch the engine accepts (default: 16)",
    )
    parser.add_argument(
        "--workspace-mb",
        type=integer_at_least(1),
        default=DEFAULT_WORKSPACE_MB,
        help=f"TensorRT builder workspace limit in MiB (default: {DEFAULT_WORKSPACE_MB})",
    )
    parser.add_argument("--device-id", type=int, default=0, help="CUDA device to build for (default: 0)")
    parser.add_argument("--cache-dir", type=Path, help="engine cache directory (default: <bundle>/engines)")
    parser.add_argument(
        "--timing-cache",
        type=Path,
        help="TensorRT timing cache file (default: one per GPU and TensorRT version)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when a valid cached engine exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(lambda: _report(*_build(args)))


def _report(path: Path, key: EngineKey, built: bool) -> str:
    state = "built now" if built else "valid cached engine (use --force to rebuild)"
    return f"engine: {path}\nkey: {key.describe()}\n{state}"


def _build(args: argparse.Namespace) -> tuple[Path, EngineKey, bool]:
    """Check the inputs (bundle, calibration) before TensorRT and the GPU, then ensure the engine."""
    bundle = load_bundle(args.bundle)
    calibration = None
    if args.precision == "int8":
        if args.calibration is None:
            raise InputError(
                "--precision int8 needs --calibration (a folder of images or a rosbag2 directory)"
            )
        calibration = calibration_set(
            args.calibration, bundle.input, args.calibration_count, topic=args.calibration_topic
        )
        logging.getLogger(__name__).info("INT8 calibration on %s", calibration.describe())
    elif args.calibration is not None:
        raise InputError(f"--calibration is for --precision int8 only (this build is {args.precision})")
    trt = import_tensorrt()
    supported_major(trt)
    key = engine_key(bundle, gpu_identity(args.device_id), trt.__version__, args.precision, args.max_batch)
    path, built = ensure_engine(
        bundle,
        key,
        args.cache_dir,
        calibration=calibration,
        workspace_mb=args.workspace_mb,
        timing_cache=args.timing_cache,
        device_id=args.device_id,
        force=args.force,
    )
    return path, key, built


if __name__ == "__main__":
    sys.exit(main())
