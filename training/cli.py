"""Command line of the training stack: ``python -m training <verb> [options]``.

Verbs:
  synth     generate a synthetic world in the real dataset and rosbag2 formats
  inspect   read a generated world back with independent readers, summarise it, plot it

User mistakes (bad paths, presets, values) end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.errors import UserError


def _synth(args: argparse.Namespace) -> None:
    from training.synth.generate import generate
    from training.synth.presets import get_preset

    preset = get_preset(args.preset)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    summary = generate(args.out, preset, args.seed, formats, args.bag_storage, args.overwrite, not args.quiet)
    frames = sum(t["frames"] for t in summary["traverses"])
    print(
        f"wrote {len(summary['traverses'])} traverses, {frames} frames ({', '.join(formats)}) to {args.out}"
    )


def _inspect(args: argparse.Namespace) -> None:
    from training.synth.inspect import inspect_world

    report = inspect_world(args.world, args.out)
    print(report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    synth = verbs.add_parser("synth", help="generate a synthetic world (bags, MSLS, Pittsburgh, TB-Places)")
    synth.add_argument("--out", type=Path, required=True, help="output directory (must be new or empty)")
    synth.add_argument("--preset", default="small", help="small | demo | benchmark (default: small)")
    synth.add_argument("--seed", type=int, default=0, help="world seed; same seed, same bytes (default: 0)")
    synth.add_argument(
        "--formats",
        default="bag,msls,pittsburgh,tbplaces",
        help="comma-separated subset of bag,msls,pittsburgh,tbplaces (default: all)",
    )
    synth.add_argument(
        "--bag-storage", default="mcap", help="rosbag2 storage: mcap | sqlite3 (default: mcap)"
    )
    synth.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(run=_synth)

    inspect = verbs.add_parser("inspect", help="read a synthetic world back, summarise and plot it")
    inspect.add_argument("--world", type=Path, required=True, help="directory written by 'synth'")
    inspect.add_argument(
        "--out", type=Path, default=None, help="where to write the PNGs (default: WORLD/preview)"
    )
    inspect.set_defaults(run=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(
            f"error: python -m training needs the 'train' extra (pip install -e '.[train]'): {exc}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
