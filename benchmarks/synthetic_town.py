"""Recall@1 per traverse of the synthetic demo town, for the shipped default bundle and any bundles
passed in: the README's synthetic-world table.

    .venv/bin/python benchmarks/synthetic_town.py [--bundle DIR ...] [--world DIR] [--out DIR]

The protocol is the demo's (``scripts/demo.sh``): a place map of the day traverse ``t00_day`` built
by ``vpr-build-map`` with each bundle, then ``vpr-eval`` on every other traverse (recall@1 within
10 m and 40 deg, one frame at a time as the node does). The world is the demo preset with seed 0,
generated into ``--world`` when that folder does not hold it yet (about a minute); training recipes
use seed 1, a different town. Reports stay under ``--out`` (one folder per bundle content hash and
traverse), so a rerun only evaluates what is missing.
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


def recall_at_1(report_dir: Path) -> float:
    report = json.loads((report_dir / "report.json").read_text())
    return report["recall"][recall_kind(report)[0]]["at"]["1"]


def evaluate_bundle(bundle: Path, bags: Path, out: Path) -> dict[str, float]:
    """Recall@1 per query traverse, evaluating only the traverses without a report under ``out``."""
    map_dir = out / "map"
    model = ("--model", bundle, "--overwrite", "--quiet")
    if not (map_dir / "map.json").is_file():
        _run(BIN / "vpr-build-map", "--bag", bags / MAP_TRAVERSE, "--out", map_dir, *model)
    recalls = {}
    for bag in sorted(path for path in bags.iterdir() if path.name != MAP_TRAVERSE):
        report = out / bag.name
        if not (report / "report.json").is_file():
            _run(BIN / "vpr-eval", "--map", map_dir, "--bag", bag, "--out", report, *model)
        recalls[bag.name] = recall_at_1(report)
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
    args = parser.parse_args()
    bags = ensure_world(args.world)
    rows, header = [], None
    for bundle in [DEFAULT_BUNDLE, *args.bundle]:
        name = "default" if bundle == DEFAULT_BUNDLE else bundle.name
        print(f"evaluating {name} ({bundle})", flush=True)
        recalls = evaluate_bundle(bundle, bags, args.out / content_key(bundle))
        header = header or ["recall@1", *(traverse.split("_", 1)[1] for traverse in recalls), "mean"]
        mean = sum(recalls.values()) / len(recalls)
        rows.append([name, *(f"{value:.3f}" for value in recalls.values()), f"{mean:.3f}"])
    print("\n".join(markdown_table(header, rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
