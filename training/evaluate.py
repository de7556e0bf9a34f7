"""``python -m training evaluate``: score a checkpoint, the untrained network or raw pixels.

Writes ``report.json`` (every number) and PNG plots (recall@N, top-1 localization accuracy vs
distance threshold, PCA-whitening dimension sweep) to ``--out``; prints a short table. With
``--real-dev`` it also scores the real photographs of ``shared/data/real_dev`` (evaluation only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from training.config import Config, load_config, with_overrides
from training.data import load_source, tag_names
from training.datasets.base import PlaceDataset
from training.engine import (
    embed_dataset,
    embed_paths,
    load_checkpoint,
    model_config,
    model_from_checkpoint,
    setup_distributed,
)
from training.errors import UserError
from training.evaluation import metrics, plots
from training.evaluation.baselines import raw_pixel_descriptors, sad_search
from training.models import build_model


def _config(args: argparse.Namespace, checkpoint: dict | None) -> Config:
    if args.config is not None:
        return load_config(args.config, args.overrides)
    if checkpoint is None:
        raise UserError("--config is required with --baseline (it names the model and the data)")
    return with_overrides(checkpoint["config"], args.overrides, f"config of {args.checkpoint}")


def _describer(args: argparse.Namespace, cfg: Config, checkpoint: dict | None):
    """A function paths -> (descriptors, ok mask), and a label for the report."""
    if args.baseline == "raw-pixels":

        def raw(paths):
            return raw_pixel_descriptors(paths), np.ones(len(paths), bool)

        return raw, "raw pixels (32x24 grey, patch-normalised, SAD)"
    device = setup_distributed(cfg.train.device).device
    if checkpoint is not None:
        model, _ = model_from_checkpoint(checkpoint)
        label = f"checkpoint {args.checkpoint} (step {checkpoint['step']})"
    else:
        model, info = build_model(model_config(cfg))
        label = f"untrained {cfg.model.backbone}-{cfg.model.pooling} ({info.get('weights', '?')})"
    model.to(device).eval()
    size = (int(cfg.model.input_size[0]), int(cfg.model.input_size[1]))

    def describe(paths):
        with torch.no_grad():
            return embed_paths(model, paths, size, device, cfg.eval.batch_size, progress=True)

    return describe, label


def _score(dataset: PlaceDataset, describe, raw: bool, cfg: Config) -> dict:
    dataset, db, q = embed_dataset(describe, dataset)
    if raw:  # SAD ranking: the retrieval metrics take the ranking, not descriptors
        _, idx = sad_search(db, q, max(cfg.eval.recall_ns))
        return _from_ranking(dataset, idx, cfg)
    result = metrics.evaluate_retrieval(dataset, db, q, ns=tuple(cfg.eval.recall_ns))
    if cfg.eval.pca_dims:
        dims = [d for d in cfg.eval.pca_dims if d <= min(db.shape)]
        result["pca_sweep"] = metrics.pca_dim_sweep(db, q, dataset, dims)
    return result


def _from_ranking(dataset: PlaceDataset, idx: np.ndarray, cfg: Config) -> dict:
    ns = tuple(cfg.eval.recall_ns)
    pos = metrics.positives(dataset, angle_deg=dataset.positive_deg)
    protocol = metrics.recall_at_n(idx, pos, ns)
    per_tag = {}
    tags = np.array([dataset.queries.tag(i) for i in range(len(dataset.queries))])
    for tag in sorted(set(tags)):
        sel = np.flatnonzero(tags == tag)
        r = metrics.recall_at_n(idx[sel], [pos[i] for i in sel], (1,))
        per_tag[tag] = {
            "recall@1": r["recall"]["1"],
            "n_evaluated": r["n_evaluated"],
            "n_dropped": r["n_dropped"],
        }
    thresholds, accuracy = metrics.localization_accuracy_curve(dataset, idx[:, 0])
    return {
        "protocol": protocol,
        "per_tag": per_tag,
        "localization": {
            "thresholds_m": list(map(float, thresholds)),
            "accuracy": list(map(float, accuracy)),
        },
        "n_queries": len(dataset.queries),
        "n_database": len(dataset.database),
    }


def _real_dev(describe, raw: bool) -> dict:
    from training.evaluation.real_dev import read_real_dev, real_dev_recall_at_1, real_dev_recall_at_1_sad

    out = {}
    for subset in ("MatchingPairs", "MatchingTriplets"):
        paths, ids = read_real_dev(subset=subset)
        desc, _ = describe(paths)
        out[subset] = (real_dev_recall_at_1_sad if raw else real_dev_recall_at_1)(desc, ids)
    return out


def run_evaluation(args: argparse.Namespace) -> str:
    if (args.checkpoint is None) == (args.baseline is None):
        raise UserError("give exactly one of --checkpoint or --baseline")
    checkpoint = load_checkpoint(args.checkpoint) if args.checkpoint else None
    cfg = _config(args, checkpoint)
    if cfg.data.val is None:
        raise UserError("the config has no data.val section: nothing to evaluate on")
    raw = args.baseline == "raw-pixels"
    describe, label = _describer(args, cfg, checkpoint)
    names = tag_names(cfg.data.val)
    report: dict = {"method": label, "datasets": {}}
    for dataset in load_source(cfg.data.val, Path(cfg.data.cache_dir)):
        result = _score(dataset, describe, raw, cfg)
        result["per_tag"] = {names.get(t, t): v for t, v in result["per_tag"].items()}
        report["datasets"][dataset.name] = result
    if args.real_dev:
        report["real_dev_recall@1"] = _real_dev(describe, raw)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _plots(report, out)
    return _table(report, out)


def _plots(report: dict, out: Path) -> None:
    sets = report["datasets"]
    plots.plot_recall_at_n(
        {name: r["protocol"] for name, r in sets.items()}, out / "recall_at_n.png", title=report["method"]
    )
    curves = {
        name: (r["localization"]["thresholds_m"], r["localization"]["accuracy"]) for name, r in sets.items()
    }
    plots.plot_localization_curve(curves, out / "localization_accuracy.png")
    for name, r in sets.items():
        if "pca_sweep" in r:
            plots.plot_pca_sweep(r["pca_sweep"], out / f"pca_sweep_{name}.png")


def _table(report: dict, out: Path) -> str:
    lines = [f"{report['method']}"]
    for name, r in report["datasets"].items():
        rec = r["protocol"]["recall"]
        lines.append(f"  {name}: " + "  ".join(f"R@{n} {v:.3f}" for n, v in rec.items() if v is not None))
        for tag, t in r["per_tag"].items():
            value = "n/a" if t["recall@1"] is None else f"{t['recall@1']:.3f}"
            lines.append(f"    {tag:<24} R@1 {value} ({t['n_evaluated']} queries)")
    if "real_dev_recall@1" in report:
        lines.append(
            "  real_dev R@1: " + ", ".join(f"{k} {v:.3f}" for k, v in report["real_dev_recall@1"].items())
        )
    lines.append(f"  report: {out / 'report.json'}")
    return "\n".join(lines)
