"""``vpr-eval``: evaluate a place map and a model on a recorded query run, without ROS or DDS.

Each frame goes through the localizer's own steps in the localizer's order: decode
(:func:`vpr_ros.io.image_codec.message_to_rgb`), embed ONE frame (as the node does, so descriptors
are bit-identical to the node's; batching can change the last float bits and with them the
order of near-ties), search the map's top-k, and the answer is recorded with its wall time. The
metrics are then those of the replay through the node (:mod:`vpr_ros.evaluation.metrics`).

``--baseline raw-pixels`` replaces the network by SeqSLAM-style patch-normalised thumbnails
compared by sum of absolute differences (:mod:`vpr_ros.evaluation.raw_pixels`): the map's
keyframes are re-read from the bag the map was built from (``--map-bag``; keyframes.csv names
each keyframe's source message), so the baseline searches exactly the same keyframes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vpr_ros.backends import BACKENDS, create_backend
from vpr_ros.cli import add_bag_topic_arguments, integer_at_least, non_negative, run
from vpr_ros.errors import InputError
from vpr_ros.evaluation import raw_pixels
from vpr_ros.evaluation.answers import AnswerLog
from vpr_ros.evaluation.ground_truth import TruthRecorder, check_same_frame, open_query_bag
from vpr_ros.evaluation.metrics import EvalSettings
from vpr_ros.evaluation.session import EvalInputs, finish, prepare
from vpr_ros.io.image_codec import ImageConversionError
from vpr_ros.io.pose_sync import DEFAULT_TOLERANCE_S
from vpr_ros.io.rosbag_source import Frame, FrameStream, bag_info, iter_frames, parse_frame_source
from vpr_ros.localization.sequence_filter import (
    Scorer,
    SequenceSettings,
    SequenceTracker,
    cosine_scorer,
)

DESCRIPTION = """\
Localize every frame of a recorded query run (rosbag2: camera images + ground-truth poses) against a
place map with a model bundle, exactly as the vpr_localizer node does, and write a report:
report.json (every number), report.md, queries.csv and PNG plots (recall@N, accuracy vs distance,
precision-recall of the unknown-place decision, trajectory coloured by error, ...)."""

EPILOG = """\
examples:
  vpr-eval --map maps/site --bag bags/site_dusk --model bundles/gcl --out reports/dusk
  vpr-eval --map maps/site --bag bags/dusk --baseline raw-pixels --map-bag bags/day --out reports/raw
exit status: 0 report written, 2 bad input (one line on stderr, nothing written), 130 interrupted."""

TOP_K = 20  # recall@20 needs 20 results


def settings_arguments(parser: argparse.ArgumentParser) -> None:
    """The metric settings, shared with ``vpr-replay``."""
    defaults = EvalSettings()
    parser.add_argument(
        "--distance",
        type=float,
        default=defaults.distance_m,
        metavar="M",
        help="a keyframe within this many metres is a correct match (default: %(default)s)",
    )
    parser.add_argument(
        "--angle",
        type=float,
        default=defaults.angle_deg,
        metavar="DEG",
        help="... and within this heading difference; 0 = distance only (default: %(default)s)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        metavar="SIM",
        help="unknown-place similarity threshold; 0 = the model's suggestion (default: %(default)s)",
    )


def sequence_arguments(parser: argparse.ArgumentParser) -> None:
    """The sequence filter's options, shared with ``vpr-replay``."""
    parser.add_argument(
        "--sequence-length",
        type=integer_at_least(1),
        metavar="L",
        help="also run the sequence filter over the last L frames and report it beside single frames",
    )
    parser.add_argument(
        "--sequence-motion",
        choices=("pose", "time"),
        default="time",
        help="the filter's motion: increments of the bag's pose topic (as odometry; with ground-truth "
        "poses that is perfect odometry) or the time between frames with the speed range (default: time)",
    )
    parser.add_argument(
        "--sequence-speeds",
        type=non_negative,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=(SequenceSettings.min_speed, SequenceSettings.max_speed),
        help="with --sequence-motion time: the speed range in m/s the filter's trajectories assume "
        "(default: the localizer's, %(default)s)",
    )


def sequence_settings(args: argparse.Namespace) -> SequenceSettings | None:
    """The filter's settings from --sequence-*, checked (None without --sequence-length)."""
    if args.sequence_length is None:
        return None
    low, high = args.sequence_speeds
    if low > high:
        raise InputError(f"--sequence-speeds: MIN must not exceed MAX, got {low} {high}")
    return SequenceSettings(length=args.sequence_length, min_speed=low, max_speed=high)


def sequence_report_settings(args: argparse.Namespace) -> dict:
    """What the report records of the filter's settings."""
    settings: dict = {"length": args.sequence_length, "motion": args.sequence_motion}
    if args.sequence_motion == "time":
        settings["speeds_mps"] = list(args.sequence_speeds)
    return settings


def settings_from(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings(distance_m=args.distance, angle_deg=args.angle or None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpr-eval",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--map", required=True, type=Path, help="place map directory")
    parser.add_argument("--bag", required=True, type=Path, help="query rosbag2 directory (images + poses)")
    parser.add_argument("--model", type=Path, help="model bundle the map was built with")
    parser.add_argument("--out", required=True, type=Path, help="report directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report at --out")
    parser.add_argument(
        "--baseline", choices=("raw-pixels",), help="evaluate raw-pixel matching instead of a model"
    )
    parser.add_argument("--map-bag", type=Path, help="the bag the map was built from (--baseline only)")
    add_bag_topic_arguments(parser, "ground-truth poses", DEFAULT_TOLERANCE_S)
    settings_arguments(parser)
    sequence_arguments(parser)
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="inference backend (default: auto)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    return run(lambda: _evaluate(args), f"interrupted; nothing written to {args.out}")


def _evaluate(args: argparse.Namespace) -> str:
    baseline = args.baseline is not None
    if baseline == (args.model is not None):
        raise InputError("pass either --model (a model) or --baseline (raw pixels), not both or neither")
    if baseline and args.map_bag is None:
        raise InputError("--baseline raw-pixels needs --map-bag, the bag the map was built from")
    sequence_config = sequence_settings(args)
    inputs = prepare(args.map, args.model, args.out, args.overwrite, settings_from(args), args.threshold)
    info, stream = open_query_bag(args.bag, args.image_topic, args.pose_topic, args.sync_tolerance)
    check_same_frame(info, inputs.place_map, inputs.map_dir)
    truth = TruthRecorder(info)
    frames = _progress(stream, info.image_count, "evaluating", args.quiet)
    tracker = None
    if sequence_config is not None:
        place_map = inputs.place_map
        tracker = SequenceTracker(
            place_map.positions, place_map.orientations, sequence_config, place_map.session_ids
        )
    filtered = FilteredLog(tracker, args.sequence_motion, "negative_sad" if baseline else "cosine")
    if baseline:
        log = _raw_pixel_answers(inputs, args, frames, truth, filtered)
        mode = "offline, raw-pixel baseline (SAD of patch-normalised 24x32 thumbnails)"
    else:
        log = _model_answers(inputs, args.backend, frames, truth, filtered)
        mode = f"offline (vpr-eval, {args.backend} backend)"
    sequence = None
    if tracker is not None:
        sequence = (filtered.log.answers(), sequence_report_settings(args))
    return finish(inputs, truth.result(stream), log.answers(), mode, sequence)


class FilteredLog:
    """The sequence filter's answers beside the single-frame ones (nothing when ``tracker`` is
    None), as :meth:`SequenceFilter.ranked_answer` lists them."""

    def __init__(self, tracker: SequenceTracker | None, motion: str, score: str) -> None:
        self.tracker = tracker
        self.motion = motion
        self.log = AnswerLog(score)

    def add(self, frame: Frame, ids: np.ndarray, sims: np.ndarray, score: Scorer) -> None:
        if self.tracker is None:
            return
        odometry = (frame.position, frame.orientation) if self.motion == "pose" else None
        answer = self.tracker.step(frame.stamp_ns, ids, sims, score, odometry)
        self.log.add(frame.stamp_ns, *self.tracker.filter.ranked_answer(answer, ids, score))


def _progress(stream: FrameStream, total: int, what: str, quiet: bool) -> Iterator[Frame]:
    with tqdm(total=total, unit="img", desc=what, disable=quiet, dynamic_ncols=True) as bar:
        for frame in stream:
            yield frame
            bar.update(stream.images_read - bar.n)


def _model_answers(
    inputs: EvalInputs,
    backend_name: str,
    frames: Iterator[Frame],
    truth: TruthRecorder,
    filtered: FilteredLog,
) -> AnswerLog:
    backend = create_backend(inputs.bundle, backend_name, max_batch=1)
    log = AnswerLog("cosine")
    k = min(TOP_K, len(inputs.place_map))
    for frame in frames:
        truth.add(frame.stamp_ns, frame.position, frame.orientation)
        started = time.perf_counter()
        try:
            descriptor = backend.embed([frame.rgb()])
        except ImageConversionError as exc:
            logging.warning("%s: not evaluated: %s", frame.source, exc)
            continue
        sims, ids = inputs.place_map.search(descriptor, k)
        log.add(frame.stamp_ns, ids[0], sims[0], time.perf_counter() - started)
        filtered.add(frame, ids[0], sims[0], cosine_scorer(inputs.place_map.descriptors, descriptor[0]))
    return log


def _raw_pixel_answers(
    inputs: EvalInputs,
    args: argparse.Namespace,
    frames: Iterator[Frame],
    truth: TruthRecorder,
    filtered: FilteredLog,
) -> AnswerLog:
    database = _keyframe_thumbnails(inputs, args.map_bag, args.sync_tolerance)
    stamps, thumbnails, kept = [], [], []
    for frame in frames:
        truth.add(frame.stamp_ns, frame.position, frame.orientation)
        try:
            thumbnails.append(raw_pixels.thumbnail(frame.rgb()))
        except ImageConversionError as exc:
            logging.warning("%s: not evaluated: %s", frame.source, exc)
            continue
        stamps.append(frame.stamp_ns)
        kept.append(frame)
    log = AnswerLog("negative_sad")
    if not thumbnails:
        return log
    k = min(TOP_K, len(database))
    sad, ids = raw_pixels.sad_search(database, np.stack(thumbnails), k)
    rows = zip(stamps, sad, ids, kept, thumbnails, strict=True)
    for stamp, row_sad, row_ids, frame, thumbnail in rows:  # searched in one batch: no latency
        scores = -row_sad / database.shape[1]
        log.add(stamp, row_ids, scores)
        filtered.add(frame, row_ids, scores, raw_pixels.sad_scorer(database, thumbnail))
    return log


def _keyframe_thumbnails(inputs: EvalInputs, map_bag: Path, tolerance_s: float) -> np.ndarray:
    """Thumbnails of the map's keyframes, row = keyframe id, read back from the map's own bag."""
    wanted: dict[int, int] = {}  # image message index -> keyframe id
    topics = set()
    for keyframe, source in enumerate(inputs.place_map.sources):
        parsed = parse_frame_source(source)
        if parsed is None or parsed[0] != map_bag.name:
            raise InputError(
                f"--map-bag {map_bag}: keyframe {keyframe} of map {inputs.map_dir} comes from '{source}', "
                "not from this bag; pass the bag the map was built from"
            )
        wanted[parsed[2]] = keyframe
        topics.add(parsed[1])
    info = bag_info(map_bag, topics.pop() if len(topics) == 1 else None)
    database: list[np.ndarray | None] = [None] * len(inputs.place_map)
    for frame in iter_frames(info.path, info.image_topic, info.pose_topic, tolerance_s):
        if frame.index in wanted:
            database[wanted[frame.index]] = raw_pixels.thumbnail(frame.rgb())
    missing = [i for i, row in enumerate(database) if row is None]
    if missing:
        raise InputError(
            f"--map-bag {map_bag}: {len(missing)} keyframes (first: {missing[0]}) not found in it"
        )
    return np.stack(database)


if __name__ == "__main__":
    sys.exit(main())
