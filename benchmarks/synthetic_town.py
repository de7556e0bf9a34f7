"""Recall@1 per traverse of the synthetic demo town, for the shipped default bundle and any bundles
passed in: the README's synthetic-world table.

    .venv/bin/python benchmarks/synthetic_town.py [--bundle DIR ...] [--world DIR] [--out DIR]
        [--sequence-lengths 10 20 60 [--sequence-motion pose|time] [--sequence-speeds MIN MAX]]

The protocol is the demo's (``scripts/demo.sh``): a place map of the day traverse ``t00_day`` built
by ``vpr-build-map`` with each bundle, then ``vpr-eval`` on every other traverse (recall@1 within
10 m and 40 deg, one frame at a time as the node does). The world is the demo preset with seed 0,
generated into ``--world`` when that folder does not hold it yet (about a minute); training recipes
use seed 1, a different town. Reports stay under ``--out`` (one folder per bundle content hash and
traverse), so a rerun only evaluates what is missing (delete them after changing the code).
With ``--sequence-lengths``, a row per length adds the sequence filter's recall@1 (``vpr-eval
--sequence-length L``; ``--sequence-motion pose``: the bag's poses as odometry, ``time``: a speed
range, the localizer's 0.3-2 m/s unless ``--sequence-speeds`` says otherwise, over the time between
frames; the town's car drives 8 m/s).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vpr_ros.evaluation.report import markdown_table, recall_kind  # noqa: E402
from vpr_ros.mapping.map_files import META_FILE, SCHEMA  # noqa: E402

BIN = Path(sys.executable).parent
DEFAULT_BUNDLE = ROOT / "vpr_ros" / "models" / "default"
MAP_TRAVERSE = "t00_day"


def _run(*command: str | Path) -> None:
    subprocess.run([str(part) for part in command], check=True, stdout=subprocess.DEVNULL)


def ensure_world(world: Path) -> Path:
    bags = world / "bags"
    if not (bags / MAP_TRAVERSE).is_dir():
        print(f"generating the demo world (seed 0) into {world}", flush=True)
        demo = ("--preset", "demo", "--seed", "0", "--formats", "bag", "--overwrite", "--quiet")
        _run(sys.executable, "-m", "training", "synth", *demo, "--out", world)
    return bags


def content_key(bundle: Path) -> str:
    """Reports are cached by what the bundle computes, not by its folder name."""
    content_hash = json.loads((bundle / "model.json").read_text())["content_hash"]
    return content_hash.split(":", 1)[1][:16]


def is_current_map(map_dir: Path) -> bool:
    """A map is reused when it exists in this version's schema (older ones are rebuilt)."""
    meta = map_dir / META_FILE
    return meta.is_file() and json.loads(meta.read_text()).get("schema") == SCHEMA


def recall_at_1(report_dir: Path, filtered: bool = False) -> float:
    report = json.loads((report_dir / "report.json").read_text())
    part = report["sequence"] if filtered else report
    return part["recall"][recall_kind(report)[0]]["at"]["1"]


def evaluate_bundle(
    bundle: Path, bags: Path, out: Path, sequence: tuple[str | int, ...] = ()
) -> dict[str, float]:
    """Recall@1 per query traverse, evaluating only the traverses without a report under ``out``
    (with ``sequence``, vpr-eval's --sequence-* options, the sequence filter's)."""
    map_dir = out / "map"
    model = ("--model", bundle, "--overwrite", "--quiet")
    if not is_current_map(map_dir):
        _run(BIN / "vpr-build-map", "--bag", bags / MAP_TRAVERSE, "--out", map_dir, *model)
    reports = out / "_".join(str(part).lstrip("-") for part in sequence) if sequence else out
    recalls = {}
    for bag in sorted(path for path in bags.iterdir() if path.name != MAP_TRAVERSE):
        report = reports / bag.name
        if not (report / "report.json").is_file():
            _run(BIN / "vpr-eval", "--map", map_dir, "--bag", bag, "--out", report, *model, *sequence)
        recalls[bag.name] = recall_at_1(report, filtered=bool(sequence))
    return recalls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bundle", type=Path, action="append", default=[], help="a bundle to add (repeatable)"
    )
    parser.add_argument(
        "--world",
        type=Path,
        default=ROOT / "runs" / "synth" / "val",
        help="the demo world, seed 0 (generated when missing; default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "runs" / "synthetic_town",
        help="reports, one folder per bundle (default: %(default)s)",
    )
    parser.add_argument(
        "--sequence-lengths", type=int, nargs="+", default=[], help="add the sequence filter at these lengths"
    )
    parser.add_argument("--sequence-motion", choices=("pose", "time"), default="pose")
    parser.add_argument("--sequence-speeds", nargs=2, metavar=("MIN", "MAX"), help="m/s, with time")
    args = parser.parse_args()
    if any(length < 1 for length in args.sequence_lengths):
        parser.error("--sequence-lengths: every length must be >= 1")
    bags = ensure_world(args.world)
    rows, header = [], None
    for bundle in [DEFAULT_BUNDLE, *args.bundle]:
        name = "default" if bundle == DEFAULT_BUNDLE else bundle.name
        print(f"evaluating {name} ({bundle})", flush=True)
        motion: tuple[str, ...] = ("--sequence-motion", args.sequence_motion)
        described = args.sequence_motion
        if args.sequence_motion == "time" and args.sequence_speeds:
            motion += ("--sequence-speeds", *args.sequence_speeds)
            described += ", {}-{} m/s".format(*args.sequence_speeds)
        variants = [(name, ())] + [
            (f"{name}, sequence of {length} ({described})", ("--sequence-length", length, *motion))
            for length in args.sequence_lengths
        ]
        for label, sequence in variants:
            recalls = evaluate_bundle(bundle, bags, args.out / content_key(bundle), sequence)
            header = header or ["recall@1", *(traverse.split("_", 1)[1] for traverse in recalls), "mean"]
            mean = sum(recalls.values()) / len(recalls)
            rows.append([label, *(f"{value:.3f}" for value in recalls.values()), f"{mean:.3f}"])
    print("\n".join(markdown_table(header, rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
