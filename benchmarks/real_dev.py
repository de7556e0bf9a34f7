"""real_dev recall@1 of the shipped default model beside its starting point and raw pixels.

    .venv/bin/python benchmarks/real_dev.py [--bundle DIR] [--json real_dev.json]

Rows: the bundle run by ONNX Runtime (``vpr_ros/models/default`` unless ``--bundle``), the same
network with the ImageNet weights it was fine-tuned from (same input size and resize), and the
raw-pixel baseline; leave-one-out recall@1 on the real photographs of ``shared/data/real_dev``
(``$VPR_REAL_DEV``), which no model was trained on. Measured on a 2-core CPU (7 s):

    bundle vpr_ros/models/default: mobilenet_v2-gem 256-D at 192x256 (sha256:bcd921bb)

| method | R@1 MatchingPairs (20 images) | R@1 MatchingTriplets (30 images) |
|---|---|---|
| shipped default bundle, 256-D, onnxruntime cpu | 0.900 | 0.900 |
| mobilenet_v2-gem, ImageNet weights, not fine-tuned, 192x256 | 0.950 | 0.733 |
| raw pixels (32x24 grey, patch-normalised, SAD) | 0.450 | 0.567 |

One query is 0.05 of the pairs and 0.033 of the triplets. The checkpoint this bundle was exported
from (``runs/gcl/best.pt``, 1280-D, no whitening) scores 0.950 / 0.967 on the same pixels, and the
ONNX graph matches the whitened torch network (export parity: cosine 0.9999999), so the loss is
the 256-D PCA-whitening fitted on 282 synthetic images: with it the Gardens Point images of p2
and p3 become each other's nearest image in both subsets, which puts the bundle one query below
the ImageNet network on the pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.evaluation.real_dev import SUBSETS, real_dev_table  # noqa: E402


def markdown(table: dict) -> str:
    header = [f"R@1 {subset} ({table['images'][subset]} images)" for subset in SUBSETS]
    lines = ["| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(SUBSETS)]
    for method in table["methods"].values():
        scores = " | ".join(f"{method['recall@1'][subset]:.3f}" for subset in SUBSETS)
        lines.append(f"| {method['label']} | {scores} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="real_dev folder (default: $VPR_REAL_DEV or shared/data)")
    parser.add_argument("--bundle", type=Path, help="model bundle (default: vpr_ros/models/default)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON")
    args = parser.parse_args()
    table = real_dev_table(args.root, args.bundle)
    print(f"bundle {table['bundle']['path']}: {table['bundle']['summary']}")
    print(markdown(table))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
