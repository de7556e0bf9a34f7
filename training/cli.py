"""Command line of the training stack: ``python -m training <verb> [options]``.

Verbs:
  synth     generate a synthetic world in the real dataset and rosbag2 formats
  inspect   read a generated world back with independent readers, summarise it, plot it
  label     compute and cache the graded FoV labels of a config's training data
  train     train a model from a YAML recipe (``torchrun`` for several processes)
  evaluate  recall@N, localization accuracy and PCA sweeps of a checkpoint or a baseline

User mistakes (bad paths, presets, values) end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
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


def _label(args: argparse.Namespace) -> None:
    from training.config import load_config
    from training.data import TrainingPlaces, load_source

    cfg = load_config(args.config, args.overrides)
    places = TrainingPlaces.of(load_source(cfg.data.train, Path(cfg.data.cache_dir)))
    labels = places.graded_labels(cfg.labels.radius_m, cfg.labels.fov_deg, Path(cfg.data.cache_dir))
    psi = labels.data
    print(
        f"labels: {labels.shape[0]} queries x {labels.shape[1]} database, {labels.nnz} overlapping pairs "
        f"({(psi >= 0.5).sum()} with psi >= 0.5, {(psi < 0.5).sum()} soft), in {cfg.data.cache_dir}"
    )


def _train(args: argparse.Namespace) -> None:
    import os

    from training.config import load_config, with_overrides
    from training.engine import Trainer, load_checkpoint, setup_logging

    main = int(os.environ.get("RANK", "0")) == 0
    setup_logging(args.out, main)
    if args.resume and args.config is None:  # the run's own config, plus any overrides
        cfg = with_overrides(
            load_checkpoint(args.out / "last.pt")["config"], args.overrides, "checkpoint config"
        )
    else:
        cfg = load_config(args.config, args.overrides)
    logging.getLogger("training").info("command: %s", " ".join(sys.argv))
    summary = Trainer(cfg, args.out, resume=args.resume, progress=not args.quiet).run()
    if main:
        print(f"trained {summary['steps']} steps; best {summary['best']}; run folder {args.out}")


def _evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import run_evaluation

    report = run_evaluation(args)
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

    def add_config(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument("--config", type=Path, required=required, help="YAML recipe (config/training/*.yaml)")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. train.steps=500")

    label = verbs.add_parser("label", help="compute and cache graded FoV labels for a config's training data")
    add_config(label, required=True)
    label.set_defaults(run=_label)

    train = verbs.add_parser("train", help="train a model from a YAML recipe")
    add_config(train, required=False)
    train.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, logs, plots")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(run=_train)

    evaluate = verbs.add_parser("evaluate", help="evaluate a checkpoint or a baseline on a config's val data")
    evaluate.add_argument("--checkpoint", type=Path, help="a training checkpoint (best.pt / last.pt)")
    evaluate.add_argument(
        "--baseline", choices=("untrained", "raw-pixels"), help="evaluate a baseline instead of a checkpoint"
    )
    evaluate.add_argument("--config", type=Path, help="recipe giving data.val (default: the checkpoint's)")
    evaluate.add_argument("--out", type=Path, required=True, help="report folder (JSON + PNG)")
    evaluate.add_argument("--real-dev", action="store_true", help="also score the real_dev photographs")
    evaluate.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    evaluate.set_defaults(run=_evaluate)
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
