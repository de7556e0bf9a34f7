"""Command line of the training stack: ``python -m training <verb> [options]``.

Verbs:
  synth     generate a synthetic world in the real dataset and rosbag2 formats
  inspect   read a generated world back with independent readers, summarise it, plot it
  label     compute and cache the graded FoV labels of a config's training data
  train     train a model from a YAML recipe (``torchrun`` for several processes)
  evaluate  recall@N, localization accuracy and PCA sweeps of a checkpoint or a baseline
  export    a checkpoint (ours or an official GCL release) -> a parity-checked model bundle

User mistakes (bad paths, presets, values) end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from training.errors import UserError
from vpr_ros.cli import integer_at_least


def _synth(args: argparse.Namespace) -> None:
    from training.synth.generate import generate
    from training.synth.presets import get_preset

    preset = get_preset(args.preset)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    summary = generate(
        args.out, preset, args.seed, formats, args.bag_storage, args.overwrite, not args.quiet, args.workers
    )
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


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 480x640, got {text!r}") from None
    if min(h, w) < 32:
        raise argparse.ArgumentTypeError(f"input size {text} is below 32 px")
    return h, w


def _export(args: argparse.Namespace) -> None:
    from training.config import load_config
    from training.export import (
        check_out,
        export_bundle,
        from_checkpoint,
        from_gcl,
        image_folder,
        interpolate_with_start,
        procedural_images,
        recipe_images,
        sample_images,
        untrained,
    )

    check_out(args.out, args.overwrite)
    if args.parity_count < 2:
        raise UserError(f"--parity-count must be >= 2, got {args.parity_count}")
    if args.pca_dim is not None and args.pca_dim < 1:
        raise UserError(f"--pca-dim must be >= 1, got {args.pca_dim}")
    if args.similarity_threshold is not None and not -1.0 <= args.similarity_threshold <= 1.0:
        raise UserError(f"--similarity-threshold is a cosine in [-1, 1], got {args.similarity_threshold}")
    if (args.checkpoint is not None) + (args.gcl_checkpoint is not None) + args.untrained != 1:
        raise UserError("give exactly one of --checkpoint, --gcl-checkpoint and --untrained")
    if args.untrained != (args.config is not None):
        raise UserError("--untrained exports a recipe's network as it starts: pass it with --config RECIPE")
    if args.threshold_set is not None and args.similarity_threshold is not None:
        raise UserError("give --similarity-threshold or --threshold-set, not both")
    if args.threshold_origin is not None and args.similarity_threshold is None:
        raise UserError("--threshold-origin says where --similarity-threshold came from: pass both")
    if (args.guard_set or args.force) and args.guard_against is None:
        raise UserError("--guard-set and --force belong to the export guard: pass --guard-against BUNDLE")
    if args.pca_from is not None and args.pca_images is not None:
        raise UserError("give --pca-images or --pca-from, not both")
    if args.interpolate is not None and args.checkpoint is None:
        raise UserError("--interpolate mixes a fine-tuned --checkpoint with its starting weights")
    if args.checkpoint is not None:
        source = from_checkpoint(args.checkpoint)
        if args.interpolate is not None:
            interpolate_with_start(source, args.interpolate)
    elif args.untrained:
        source = untrained(load_config(args.config))
    else:
        source = from_gcl(args.gcl_checkpoint, args.backbone, args.pooling)
    if args.input_size is not None:
        if args.input_size != source.input_size:
            logging.getLogger("training").warning(
                "exporting at %dx%d; the network was trained at %dx%d",
                *args.input_size,
                *source.input_size,
            )
        source.input_size = args.input_size

    pca_recipe = source  # whose training images the PCA is fitted on, unless --pca-images
    if args.pca_from is not None:
        pca_recipe = recipe_images(load_config(args.pca_from))
        if not pca_recipe.data_roots["train"]:
            raise UserError(f"--pca-from {args.pca_from}: none of the recipe's training images are here")

    def images(folder, default_key, count, what):
        if folder is not None:
            return sample_images(image_folder(folder), count), f"{folder} ({what})"
        owner = pca_recipe if default_key == "train" else source
        paths = owner.data_roots.get(default_key) or []
        if paths:
            part = "training images" if default_key == "train" else "data.val database"
            return sample_images(paths, count), f"the recipe's {part}: {owner.data_description[default_key]}"
        return None, None

    pca = None
    if args.pca_dim is not None:
        pca_images, origin = images(args.pca_images, "train", args.pca_samples, "PCA")
        if pca_images is None:
            raise UserError("--pca-dim needs --pca-images DIR (the checkpoint names no training images here)")
        pca = (args.pca_dim, pca_images, origin)
    guard = None
    if args.guard_against is not None:
        from training.guard import GuardSet, compare, guard_datasets

        guard_sets = guard_datasets(source.recipe, [GuardSet.parse(text) for text in args.guard_set])

        def guard(bundle_dir: Path) -> dict:
            return compare(bundle_dir, args.guard_against, guard_sets, args.force)

    parity, parity_origin = images(args.parity_images, "val", args.parity_count, "parity")
    if parity is None:
        parity, parity_origin = procedural_images(args.parity_count), "procedural noise images (seed 0)"
    meta = export_bundle(
        source,
        args.out,
        parity,
        parity_origin,
        pca,
        args.similarity_threshold,
        args.overwrite,
        torch_program=not args.no_torch_program,
        threshold_origin=args.threshold_origin,
        guard=guard,
        threshold_set=args.threshold_set,
    )
    out = meta["output"]
    checks = ", ".join(
        f"{name} min cosine {result['min_cosine']:.6f} top-5 {result['top_k_identical']}"
        for name, result in meta["parity"].items()
        if isinstance(result, dict)
    )
    print(
        f"bundle {args.out}: {meta['architecture']['backbone']}-{meta['architecture']['pooling']} "
        f"{out['dim']}-D at {meta['input']['height']}x{meta['input']['width']}, {meta['content_hash'][:19]}"
    )
    print(f"parity on {meta['parity']['images']} images ({parity_origin}): {checks}")
    if args.threshold_set is not None:
        localization = meta["localization"]
        print(f"unknown-place threshold {localization['similarity_threshold']}: {localization['chosen_on']}")
    if "guard" in meta:
        guard = meta["guard"]
        print(f"guard: mean recall@1 {guard['mean']:.3f} vs {guard['start_mean']:.3f} for {guard['start']}")


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
    synth.add_argument(
        "--workers",
        type=integer_at_least(1),
        default=os.cpu_count() or 1,
        help="rendering processes; the bytes are the same for any number (default: the CPU count)",
    )
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

    export = verbs.add_parser("export", help="export a checkpoint to a model bundle (ONNX + torch program)")
    export.add_argument("--checkpoint", type=Path, help="a vpr_ros training checkpoint (best.pt / last.pt)")
    export.add_argument(
        "--gcl-checkpoint", type=Path, help="an official GCL release, e.g. MSLS_resnet50_GeM_480_GCL.pth"
    )
    export.add_argument(
        "--untrained",
        action="store_true",
        help="the --config recipe's network with its pre-trained (ImageNet) weights, not fine-tuned",
    )
    export.add_argument("--config", type=Path, help="the recipe --untrained reads (model and training data)")
    export.add_argument(
        "--interpolate",
        type=float,
        metavar="ALPHA",
        help="export (1 - ALPHA) * starting weights + ALPHA * the checkpoint's (WiSE-FT); 1 = as trained",
    )
    export.add_argument("--backbone", help="GCL checkpoint backbone (default: read from the file name)")
    export.add_argument("--pooling", choices=("gem", "avg", "netvlad"), help="GCL checkpoint pooling")
    export.add_argument("--out", type=Path, required=True, help="bundle directory (must be new or empty)")
    export.add_argument("--input-size", type=_size, help="HxW the bundle resizes to (default: training's)")
    export.add_argument(
        "--pca-dim", type=int, help="fit PCA-whitening to this many dimensions into the graph"
    )
    export.add_argument(
        "--pca-images", type=Path, help="images to fit PCA on (default: the recipe's train data)"
    )
    export.add_argument(
        "--pca-from", type=Path, metavar="RECIPE", help="fit PCA on another recipe's training images"
    )
    export.add_argument("--pca-samples", type=int, default=1000, help="images used for the PCA fit (1000)")
    export.add_argument("--parity-images", type=Path, help="images for the parity check (default: val data)")
    export.add_argument("--parity-count", type=int, default=32, help="images in the parity check (32)")
    export.add_argument(
        "--similarity-threshold", type=float, help="suggested 'unknown place' cosine threshold for model.json"
    )
    export.add_argument(
        "--threshold-origin", help="where --similarity-threshold comes from (recorded in model.json)"
    )
    export.add_argument(
        "--threshold-set",
        type=Path,
        metavar="DIR",
        help="set the threshold to the bundle's best-F1 on this image-folder set with distractors",
    )
    export.add_argument(
        "--no-torch-program",
        action="store_true",
        help="leave out model.pt2 (halves the bundle; no PyTorch backend for it)",
    )
    export.add_argument(
        "--guard-against",
        metavar="BUNDLE",
        help="refuse to export unless the new bundle's mean recall@1 on the recipe's data.val and the "
        "--guard-set folders is at least this bundle's ('default': the shipped one)",
    )
    export.add_argument(
        "--guard-set",
        action="append",
        default=[],
        metavar="DIR[:N]",
        help="an image-folder set (query/ + ref/) the guard also scores; :N = an ordered route, +-N frames",
    )
    export.add_argument("--force", action="store_true", help="export even when the guard finds it worse")
    export.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    export.set_defaults(run=_export)
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
