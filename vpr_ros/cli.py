"""What the command-line tools share: argument types, the bag-topic arguments, and the exit protocol.

Every tool exits 0 on success, 2 with one ``error: ...`` line on stderr for bad input (an
:class:`~vpr_ros.errors.InputError`, or a :class:`~vpr_ros.errors.BackendError` when the hardware
or library a backend needs is missing), and 130 on Ctrl-C - never with a traceback for a user's
mistake.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from vpr_ros.errors import BackendError, InputError


def non_negative(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text}")
        return value

    return parse


def add_bag_topic_arguments(parser: argparse.ArgumentParser, pose_help: str, sync_tolerance_s: float) -> None:
    """``--image-topic``, ``--pose-topic`` and ``--sync-tolerance`` of a tool that reads camera
    frames with their poses from a bag (:func:`vpr_ros.io.rosbag_source.iter_frames`)."""
    parser.add_argument(
        "--image-topic", help="sensor_msgs Image or CompressedImage topic (default: the only one)"
    )
    parser.add_argument(
        "--pose-topic",
        help=f"{pose_help}: nav_msgs/Odometry, PoseStamped or PoseWithCovarianceStamped (default: the "
        "only one), or /tf for the pose of a base frame looked up in TF",
    )
    parser.add_argument(
        "--sync-tolerance",
        type=non_negative,
        default=sync_tolerance_s,
        metavar="S",
        help="largest image-to-pose stamp difference in seconds (default: %(default)s)",
    )


def run(work: Callable[[], str], interrupted: str = "interrupted") -> int:
    """Run ``work``, print what it returns, and map failures to the exit protocol above."""
    try:
        print(work())
    except (InputError, BackendError) as exc:  # BundleError and MapError are InputErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    return 0
