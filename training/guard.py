"""The export guard: refuse a fine-tuned bundle that is worse than the model it started from.

Fine-tuning on a user's own recordings is a few hundred steps on a few thousand images: it can
easily learn the recorded route and lose what made the starting model work elsewhere, or simply
not help. A bundle that replaces the shipped default on a robot must be at least as good, so the
guard scores both bundles the way the robot runs them (the runtime's own backend and
preprocessing, the exported ONNX graph) on sets that training never touched: the recipe's
``data.val`` (a held-apart recording) and any image-folder sets passed in. The candidate is
refused when its mean recall@1 over those sets is below the starting model's; the refusal is one
line that says by how much, set by set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.config import Config
from training.data import load_source
from training.datasets.base import PlaceDataset
from training.datasets.vpr_folders import read_vpr_folder
from training.errors import UserError
from training.evaluation.metrics import evaluate_retrieval
from vpr_ros.bundle import default_model_dir
from vpr_ros.errors import InputError
from vpr_ros.evaluation.bench import describe, model_method

BATCH = 32


@dataclass(frozen=True)
class GuardSet:
    """``DIR`` (image pairs: query i shows reference i, or the folder's ground truth) or
    ``DIR:N`` (an ordered route: query i matches references i-N..i+N)."""

    root: Path
    tolerance: int

    @classmethod
    def parse(cls, text: str) -> GuardSet:
        root, _, tolerance = text.rpartition(":") if ":" in text else (text, "", "0")
        if not tolerance.isdigit():
            raise UserError(f"--guard-set {text}: expected DIR or DIR:TOLERANCE (frames, an integer >= 0)")
        return cls(Path(root), int(tolerance))

    def read(self) -> PlaceDataset:
        layout = "route" if self.tolerance else "pairs"
        return read_vpr_folder(self.root, layout, tolerance=self.tolerance)


def guard_datasets(cfg: Config | None, sets: list[GuardSet]) -> list[PlaceDataset]:
    """The recipe's validation datasets (when it has data.val) and the image-folder sets."""
    datasets = []
    if cfg is not None and cfg.data.val is not None:
        datasets += load_source(cfg.data.val, Path(cfg.data.cache_dir))
    datasets += [s.read() for s in sets]
    if not datasets:
        raise UserError(
            "the export guard has nothing to compare on: the recipe has no data.val; pass --guard-set DIR"
        )
    return datasets


def bundle_recall(bundle_dir: Path, datasets: list[PlaceDataset]) -> dict[str, float]:
    """recall@1 of a bundle on each dataset, embedded as ``vpr-bench`` does (the runtime's ONNX
    Runtime backend and image reader)."""
    method = model_method(bundle_dir, "onnxruntime", BATCH, quiet=True)
    recall = {}
    for dataset in datasets:
        try:
            database, _ = describe(method, dataset.database.paths, "database")
            queries, _ = describe(method, dataset.queries.paths, "queries")
        except InputError as exc:
            raise UserError(f"export guard: {exc}") from None
        result = evaluate_retrieval(dataset, database, queries, (1,))
        recall[dataset.name] = float(result["protocol"]["recall"]["1"] or 0.0)
    return recall


def compare(candidate: Path, start: Path | str, datasets: list[PlaceDataset], force: bool) -> dict:
    """Score ``candidate`` and ``start`` (a bundle directory, or ``default``) on ``datasets``; raise a
    one-line UserError when the candidate's mean recall@1 is lower, unless ``force``. Returns what
    model.json records: both models' recall@1 per set and means, and whether it was forced."""
    start_dir = default_model_dir() if str(start) == "default" else Path(start)
    new, old = bundle_recall(candidate, datasets), bundle_recall(start_dir, datasets)
    new_mean, old_mean = float(np.mean(list(new.values()))), float(np.mean(list(old.values())))
    record = {
        "start": str(start_dir),
        "recall@1": new,
        "start_recall@1": old,
        "mean": new_mean,
        "start_mean": old_mean,
        "forced": False,
    }
    if new_mean < old_mean:
        per_set = ", ".join(f"{name} {new[name]:.3f} vs {old[name]:.3f}" for name in new)
        if not force:
            raise UserError(
                f"the fine-tuned model is worse than the model it started from ({start_dir}): mean "
                f"recall@1 {new_mean:.3f} vs {old_mean:.3f} ({new_mean - old_mean:+.3f}; {per_set}); "
                "nothing exported, pass --force to export it anyway"
            )
        record["forced"] = True
    return record
