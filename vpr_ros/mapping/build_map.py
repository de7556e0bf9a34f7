"""``vpr-build-map``: build a place map offline from a rosbag2 recording (images + odometry).

The same code path as the mapping node (:class:`~vpr_ros.io.pose_sync.ImagePosePairer` for stamp
matching, :class:`~vpr_ros.mapping.map_builder.MapBuilder` for keyframes and embedding), fed from the bag
by :mod:`vpr_ros.io.rosbag_source`, so it runs on a laptop without ROS. Inputs are checked before any
work (an existing ``--out``, the bundle, the bag's topics), and the map is written once, atomically,
at the end: an error or Ctrl-C leaves ``--out`` as it was.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vpr_ros.backends import BACKENDS, create_backend
from vpr_ros.bundle import ModelBundle, load_bundle
from vpr_ros.cli import add_bag_topic_arguments, non_negative, run
from vpr_ros.errors import InputError
from vpr_ros.io.rosbag_source import BagInfo, FrameStream, bag_info, iter_frames
from vpr_ros.mapping.keyframes import KeyframeSelector
from vpr_ros.mapping.map_builder import MapBuilder
from vpr_ros.mapping.map_files import check_target
from vpr_ros.mapping.map_index import INDEX_TYPES
from vpr_ros.mapping.place_map import IDENTITY_EXTRINSIC, PlaceMap, Session, odometry_frame_warning
from vpr_ros.nodes.params import MAPPER

DESCRIPTION = """\
Build a place map from a rosbag2 recording (mcap or sqlite3) of a camera and the robot's poses
(odometry, a pose topic, or TF). Every image is paired with the robot's pose at its header stamp;
a frame becomes a keyframe when the robot has moved --min-distance metres or turned --min-rotation
degrees since the last one; keyframes are embedded with the model bundle and saved with the robot's
(base) poses, in the poses' frame, as one session with the camera's --extrinsic. With --append the
recording becomes a new session of the map at --out."""

EPILOG = """\
examples:
  vpr-build-map --bag bags/site_day --model bundles/resnet18-gcl --out maps/site
  vpr-build-map --bag bags/site_night --model bundles/resnet18-gcl --out maps/site --append
  vpr-build-map --bag run1 --model m --out maps/run1 --image-topic /cam/image_raw/compressed \\
      --pose-topic /amcl_pose --extrinsic "0.2 0 1.1 -0.5 0.5 -0.5 0.5"
  vpr-build-map --bag run2 --model m --out maps/run2 --pose-topic /tf --frame-id map --base-frame base_link
exit status: 0 map written, 2 bad input (one line on stderr, nothing written), 130 interrupted."""

log = logging.getLogger(__name__)

EMBED_BATCH = 8
# The mapping node's defaults (config/mapper.yaml), so a map built live and one built offline agree.
DEFAULTS = {p.name: p.default for p in MAPPER}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpr-build-map",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bag", required=True, type=Path, help="rosbag2 directory (holds metadata.yaml)")
    parser.add_argument("--model", required=True, type=Path, help="model bundle directory")
    parser.add_argument("--out", required=True, type=Path, help="place map directory to write")
    add_bag_topic_arguments(parser, "poses", DEFAULTS["mapper.sync_tolerance_s"])
    parser.add_argument(
        "--min-distance",
        type=non_negative,
        default=DEFAULTS["mapper.keyframe_min_distance_m"],
        metavar="M",
        help="metres between keyframes (default: %(default)s)",
    )
    parser.add_argument(
        "--min-rotation",
        type=non_negative,
        default=DEFAULTS["mapper.keyframe_min_rotation_deg"],
        metavar="DEG",
        help="degrees of turn that also make a keyframe (default: %(default)s)",
    )
    parser.add_argument(
        "--index",
        choices=INDEX_TYPES,
        default=DEFAULTS["map.index"],
        help="FAISS index type (default: %(default)s)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULTS["model.backend"],
        help="inference backend (default: %(default)s)",
    )
    parser.add_argument(
        "--frame-id",
        help="frame of the map (default: the frame_id of the poses; required with --pose-topic /tf)",
    )
    parser.add_argument(
        "--base-frame",
        default="base_link",
        help="with --pose-topic /tf: the robot frame looked up in --frame-id (default: %(default)s)",
    )
    parser.add_argument(
        "--extrinsic",
        metavar='"X Y Z QX QY QZ QW"',
        default=" ".join(map(str, IDENTITY_EXTRINSIC)),
        help="base-to-camera transform of the camera, stored with the session (default: identity)",
    )
    parser.add_argument("--session-name", help="name of the new session (default: the bag directory's name)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing place map at --out")
    mode.add_argument(
        "--append",
        action="store_true",
        help="add the recording to the map at --out as a new session (same model and frame)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log lines, only the summary")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    return run(lambda: _build(args), f"interrupted; nothing written to {args.out}")


def _build(args: argparse.Namespace) -> str:
    """Check every input, read the bag through the builder, save; returns the summary line."""
    started = time.perf_counter()
    out = args.out.expanduser()
    if not args.append:
        check_target(out, args.overwrite, f"--out {out}", "pass --overwrite")
    try:
        session = Session(args.session_name or args.bag.expanduser().absolute().name, args.extrinsic)
    except InputError as exc:
        raise InputError(f"--extrinsic: {exc}") from None
    bundle = load_bundle(args.model)
    info = bag_info(args.bag, args.image_topic, args.pose_topic, map_frame=args.frame_id)
    stream = iter_frames(
        info.path,
        info.image_topic,
        info.pose_topic,
        args.sync_tolerance,
        map_frame=args.frame_id,
        base_frame=args.base_frame,
    )
    frame_id = args.frame_id or info.pose_frame_id
    if not frame_id:
        raise InputError(
            f"bag {args.bag}: poses on {info.pose_topic} have an empty frame_id; pass --frame-id"
        )
    place_map = _target_map(args, out, bundle, frame_id)
    if (warning := odometry_frame_warning(frame_id)) is not None:
        log.warning("warning: %s", warning)
    place_map.add_session(session)
    selector = KeyframeSelector(args.min_distance, args.min_rotation)
    backend = create_backend(bundle, args.backend, max_batch=EMBED_BATCH)
    builder = MapBuilder(backend, place_map, selector, batch_size=EMBED_BATCH)
    _run(builder, stream, info, args.quiet)
    if len(place_map) == 0:
        if stream.poses_read and stream.bad_poses == stream.poses_read:
            raise InputError(
                f"bag {args.bag}: no keyframes: every one of the {stream.poses_read} poses on "
                f"{info.pose_topic} is invalid (non-finite or a zero quaternion); record poses from a "
                "running localization or odometry source"
            )
        raise InputError(
            f"bag {args.bag}: no keyframes: none of the {stream.images_read} images on {info.image_topic} "
            f"had a pose on {info.pose_topic} within {args.sync_tolerance} s (or none could be decoded)"
        )
    try:
        place_map.save(out, overwrite=args.overwrite or args.append)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write the map ({exc})") from None
    return _summary_line(builder, stream, out, time.perf_counter() - started)


def _target_map(args: argparse.Namespace, out: Path, bundle: ModelBundle, frame_id: str) -> PlaceMap:
    """A new map, or with --append the map at --out, checked to be of this model and frame."""
    if not args.append:
        return PlaceMap(
            bundle.descriptor_dim,
            bundle.content_hash,
            frame_id,
            index=args.index,
            model_summary=bundle.summary(),
        )
    place_map = PlaceMap.load(
        out, expected_model_hash=bundle.content_hash, expected_dim=bundle.descriptor_dim
    )
    if place_map.frame_id != frame_id:
        raise InputError(
            f"--append: the map at {out} is in frame '{place_map.frame_id}' but the poses of {args.bag} are "
            f"in '{frame_id}'; sessions of one map share its frame (record in '{place_map.frame_id}', or "
            "pass --frame-id if the frames are the same)"
        )
    return place_map


def _run(builder: MapBuilder, stream: FrameStream, info: BagInfo, quiet: bool) -> None:
    """Offer every frame to the builder, with a progress bar over the image messages."""
    with (
        logging_redirect_tqdm(),
        tqdm(total=info.image_count, unit="img", desc="mapping", disable=quiet, dynamic_ncols=True) as bar,
    ):
        keyframes = 0
        for frame in stream:
            keyframes += builder.offer(
                frame.stamp_ns, frame.rgb, frame.position, frame.orientation, frame.source
            )
            bar.update(stream.images_read - bar.n)
            bar.set_postfix(keyframes=keyframes, refresh=False)
        builder.flush()
        bar.update(stream.images_read - bar.n)


def _summary_line(builder: MapBuilder, stream: FrameStream, out: Path, seconds: float) -> str:
    s = builder.summary()
    pairer = stream.pairer
    skipped = {
        "without a pose in tolerance": pairer.dropped_no_pose,
        "dropped waiting for a pose": pairer.dropped_overflow,
        "undecodable": s["undecodable"],
        "bad poses": stream.bad_poses,
    }
    notes = "".join(f", {n} {what}" for what, n in skipped.items() if n)
    sessions = builder.place_map.sessions
    kept = f"session '{sessions[-1].name}': {s['added']} keyframes" if len(sessions) > 1 else "map:"
    whole = f"{s['keyframes']} keyframes over {s['travelled_m']:.1f} m"
    whole = f"; map: {whole} in {len(sessions)} sessions" if len(sessions) > 1 else f" {whole}"
    return (
        f"{kept}{whole} from {s['frames_seen']} of {stream.images_read} frames{notes}, {seconds:.1f} s "
        f"({s['frames_per_s']:.0f} frames/s) -> {out}"
    )


if __name__ == "__main__":
    sys.exit(main())
