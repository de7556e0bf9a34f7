"""Recall@1 on every real image set in ``shared/data``, for raw pixels, the off-the-shelf ImageNet
network, the shipped default bundle and any bundles passed in: one table.

    .venv/bin/python benchmarks/real_images.py [--bundle DIR ...] [--only-bundles] [--data DIR]
                                               [--json OUT.json]

The sets (each folder's README gives its source and ground truth):

- ``sped`` (607 webcam pairs across seasons and times of day; query i matches reference i),
- ``essex3in1`` (210 look-alike campus pairs),
- ``nordland_a`` (1,788 winter frames against the summer traverse of one train route; +-1 frame),
- ``real_dev`` (50 photos: ``MatchingPairs`` i0 against i1, ``MatchingTriplets`` i0 against i1 + i2).

Which parts were used for which choice is what makes a number evidence, so the held-out parts are
reported on their own too: SPED queries 400-606 and Nordland queries 1410-1787 (each against all
references) were never trained on, tuned on or selected on (``config/training/real_gcl_cpu.yaml``
trains on SPED 0-399 and Nordland 0-1399; Essex3in1 is the selection set), and ``real_dev`` is
evaluation only.

The unknown-place threshold is chosen on real images with distractors: ``essex3in1`` with the
references of every odd-numbered pair removed, so 105 queries are in the map and 105 are not; the
table's last column is each method's best-F1 threshold there (``vpr-bench``'s precision-recall of
the top-1).

"imagenet" is ``python -m training export --untrained --config config/training/real_gcl_cpu.yaml``
(MobileNetV2 + GeM p=3 at 240x320, ImageNet weights, no whitening); it is exported to
``--imagenet-bundle`` (default ``runs/bundles/imagenet``) when that folder does not exist yet, which
needs the ``train`` extra. Every image is embedded once per method (descriptors are cached by pixel
content across the subsets).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.evaluation.real_dev import real_dev_query_sets  # noqa: E402
from vpr_ros.errors import InputError  # noqa: E402
from vpr_ros.evaluation.bench import Method, evaluate, model_method, raw_pixel_method  # noqa: E402
from vpr_ros.evaluation.image_folders import Dataset, read_dataset  # noqa: E402
from vpr_ros.evaluation.report import markdown_table  # noqa: E402

RECIPE = ROOT / "config" / "training" / "real_gcl_cpu.yaml"
HELD_OUT = {"sped": (400, 607), "nordland_a": (1410, 1788)}
TOLERANCE = {"nordland_a": 1}


def default_data_root() -> Path:
    return ROOT.parent / "shared" / "data"


def datasets(data: Path) -> tuple[list[Dataset], list[Dataset], Dataset]:
    """(whole sets, held-out parts, Essex3in1 with distractors)."""
    whole = [
        read_dataset(data / name, TOLERANCE.get(name, 0)) for name in ("sped", "essex3in1", "nordland_a")
    ]
    whole += real_dev_query_sets(data / "real_dev")
    held_out = [
        d.subset(
            np.arange(*HELD_OUT[d.name]), f"{d.name} queries {HELD_OUT[d.name][0]}-{HELD_OUT[d.name][1] - 1}"
        )
        for d in whole
        if d.name in HELD_OUT
    ]
    essex = whole[1]
    kept = list(range(0, len(essex.refs), 2))
    renumber = {old: new for new, old in enumerate(kept)}
    distractors = Dataset.from_lists(
        "essex3in1 with distractors",
        essex.queries,
        [essex.refs[i] for i in kept],
        [[renumber[m] for m in matches if m in renumber] for matches in essex.matches],
        "references of odd-numbered pairs removed",
        essex.path,
    )
    return whole, held_out, distractors


def write_folder(dataset: Dataset, out: Path) -> None:
    """``dataset`` as a VPR-Bench folder: ``query/`` and ``ref/`` (links to the images, renamed to
    their index) and ``ground_truth.npy`` (object array of ``[query, [refs]]`` rows), for
    ``python -m training export --threshold-set``."""
    if out.exists():
        raise SystemExit(f"--write-threshold-set {out}: already exists")
    for sub, paths in (("query", dataset.queries), ("ref", dataset.refs)):
        (out / sub).mkdir(parents=True)
        for i, path in enumerate(paths):
            (out / sub / f"{i:04d}{path.suffix}").symlink_to(path.resolve())
    rows = np.empty((len(dataset.queries), 2), dtype=object)
    for i, matches in enumerate(dataset.matches):
        rows[i, 0], rows[i, 1] = i, [int(m) for m in matches]
    np.save(out / "ground_truth.npy", rows, allow_pickle=True)


def cached(method: Method) -> Method:
    """The same method, embedding each distinct image once (keyed by its pixels)."""
    memory: dict[bytes, np.ndarray] = {}

    def embed(images: list[np.ndarray]) -> np.ndarray:
        keys = [hashlib.sha1(image.tobytes() + bytes(str(image.shape), "ascii")).digest() for image in images]
        missing = [i for i, key in enumerate(keys) if key not in memory]
        if missing:
            for i, row in zip(missing, method.embed([images[i] for i in missing])):
                memory[keys[i]] = row
        return np.stack([memory[key] for key in keys])

    return replace(method, embed=embed)


def imagenet_bundle(path: Path) -> Path:
    if not path.exists():
        from training.cli import main as training_main

        print(f"exporting the off-the-shelf network to {path}", file=sys.stderr)
        argv = ["export", "--untrained", "--config", str(RECIPE), "--out", str(path), "--no-torch-program"]
        if training_main(argv) != 0:
            raise SystemExit(f"could not export the ImageNet network to {path}")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_root(), help="shared/data folder")
    parser.add_argument("--bundle", type=Path, action="append", default=[], help="another bundle to score")
    parser.add_argument("--imagenet-bundle", type=Path, default=ROOT / "runs" / "bundles" / "imagenet")
    parser.add_argument("--backend", default="onnxruntime", help="inference backend (default: onnxruntime)")
    parser.add_argument("--json", type=Path, help="also write every number as JSON")
    parser.add_argument(
        "--write-threshold-set",
        type=Path,
        metavar="DIR",
        help="only write Essex3in1 with distractors as a VPR-Bench folder (for export --threshold-set)",
    )
    parser.add_argument(
        "--only-bundles",
        action="store_true",
        help="score only the --bundle bundles (no raw-pixel, off-the-shelf and default rows)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    if args.only_bundles and not args.bundle:
        parser.error("--only-bundles needs at least one --bundle")
    try:
        whole, held_out, distractors = datasets(args.data)
        if args.write_threshold_set is not None:
            write_folder(distractors, args.write_threshold_set)
            return 0
        methods: dict[str, Method] = {}
        bundles: dict[str, Path | str] = {}
        if not args.only_bundles:
            methods["raw pixels (32x24 grey, patch-normalised, SAD)"] = raw_pixel_method(quiet=args.quiet)
            bundles["ImageNet MobileNetV2 + GeM, 240x320 (off the shelf)"] = imagenet_bundle(
                args.imagenet_bundle
            )
            bundles["shipped default bundle"] = "default"
        bundles.update({f"bundle {path}": path for path in args.bundle})
        for label, path in bundles.items():
            methods[label] = model_method(path, args.backend, quiet=args.quiet)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, dict]] = {}
    for label, method in methods.items():
        method = cached(method)
        results[label] = {d.name: evaluate(d, method).report for d in [*whole, *held_out, distractors]}
    print(_tables(results, whole, held_out, distractors, methods))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _tables(results: dict, whole: list, held_out: list, distractors: Dataset, methods: dict) -> str:
    def r1(report: dict) -> float:
        return report["recall"]["at"]["1"]

    described = [f"{label}: {m.model['summary'] if m.model else 'no model'}" for label, m in methods.items()]
    lines = ["methods:", *(f"- {text}" for text in described), ""]
    header = [
        "recall@1",
        *(f"{d.name} ({len(d.queries)} q)" for d in whole),
        "mean",
        *(d.name for d in held_out),
    ]
    header.append("best-F1 threshold (Essex3in1 with distractors)")
    rows = []
    for label, per in results.items():
        best = per[distractors.name]["precision_recall"]["best"]
        threshold = (
            "–"
            if best is None or per[distractors.name]["settings"]["score"] != "cosine"
            else (f"{best['threshold']:.3f} (F1 {best['f1']:.3f})")
        )
        rows.append(
            [
                label,
                *(f"{r1(per[d.name]):.3f}" for d in whole),
                f"{np.mean([r1(per[d.name]) for d in whole]):.3f}",
                *(f"{r1(per[d.name]):.3f}" for d in held_out),
                threshold,
            ]
        )
    return "\n".join([*lines, *markdown_table(header, rows)])


if __name__ == "__main__":
    sys.exit(main())
