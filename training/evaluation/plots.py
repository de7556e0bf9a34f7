"""Figures for training reports: recall@N, localization accuracy, PCA sweep, loss curves.

Figures are drawn on a bare ``matplotlib.figure.Figure`` (the Agg renderer, no pyplot), so
plotting works headless and never changes the process-wide backend of whoever imports this.
Every PNG is written to a temporary file in the target folder and then renamed over the
target, so a crash or a concurrent reader never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from vpr_ros.evaluation.plots import axes


def _save(figure: Figure, png: str | Path) -> Path:
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{png.name}.", suffix=".tmp", dir=png.parent)
    os.close(handle)
    try:
        figure.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, png)
    except BaseException:
        os.unlink(tmp)
        raise
    return png


def _recall_table(result: Mapping) -> dict[str, float | None]:
    """The ``{"N": recall}`` table of a recall_at_n result or of an evaluate_retrieval result."""
    return result["recall"] if "recall" in result else result["protocol"]["recall"]


def plot_recall_at_n(results: Mapping[str, Mapping], png: str | Path, title: str = "Recall@N") -> Path:
    """One line per method or condition, recall against N.

    Each value is a :func:`~training.evaluation.metrics.recall_at_n` result or a whole
    :func:`~training.evaluation.metrics.evaluate_retrieval` result (its protocol recall is drawn).
    """
    figure, ax = axes(title, "N (number of retrieved images)", "recall@N")
    for label, result in results.items():
        table = {int(n): r for n, r in _recall_table(result).items() if r is not None}
        ns = sorted(table)
        ax.plot(ns, [table[n] for n in ns], marker="o", label=label)
    ax.set_ylim(0.0, 1.02)
    ax.legend()
    return _save(figure, png)


def plot_localization_curve(
    curves: Mapping[str, Sequence | Mapping], png: str | Path, title: str = "Top-1 localization accuracy"
) -> Path:
    """One line per method or condition, accuracy against the distance threshold.

    Each value is a ``(thresholds, accuracy)`` pair, as localization_accuracy_curve returns, or
    the ``localization`` entry of an evaluate_retrieval result.
    """
    figure, ax = axes(title, "distance threshold d [m]", "share of queries localized within d")
    for label, curve in curves.items():
        thresholds, accuracy = (
            (curve["thresholds_m"], curve["accuracy"]) if isinstance(curve, Mapping) else curve
        )
        ax.plot(np.asarray(thresholds), np.asarray(accuracy), label=label)
    ax.set_ylim(0.0, 1.02)
    ax.legend()
    return _save(figure, png)


def plot_pca_sweep(sweep: Mapping, png: str | Path, title: str = "Recall after PCA-whitening") -> Path:
    """recall@N against the PCA-whitened dimension; dashed lines mark the unprojected recall."""
    figure, ax = axes(title, "dimension after PCA-whitening", "recall@N")
    for n, values in sweep["recall"].items():
        (line,) = ax.plot(sweep["dims"], values, marker="o", label=f"recall@{n}")
        raw = sweep.get("raw", {}).get(n)
        if raw is not None:
            ax.axhline(raw, linestyle="--", color=line.get_color(), label=f"recall@{n}, no PCA")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sweep["dims"], [str(d) for d in sweep["dims"]])
    ax.minorticks_off()
    ax.set_ylim(0.0, 1.02)
    ax.legend()
    return _save(figure, png)


def plot_loss_curve(
    steps: Sequence[float],
    losses: Sequence[float],
    png: str | Path,
    val: tuple[Sequence[float], Sequence[float]] | None = None,
    title: str = "Training loss",
) -> Path:
    """Training loss against step; ``val`` is an optional (steps, losses) pair for validation."""
    if len(steps) != len(losses):
        raise ValueError(f"{len(steps)} steps but {len(losses)} losses")
    figure, ax = axes(title, "step", "loss")
    ax.plot(steps, losses, label="training")
    if val is not None:
        val_steps, val_losses = val
        if len(val_steps) != len(val_losses):
            raise ValueError(f"{len(val_steps)} validation steps but {len(val_losses)} losses")
        ax.plot(val_steps, val_losses, marker="o", label="validation")
    ax.legend()
    return _save(figure, png)
