"""Real image-folder VPR sets (``query/`` + ``ref/``, the VPR-Bench layout) as training places.

The real images this project may train on (SPED, Essex3in1, Nordland) come as folders of query and
reference images with correspondences, not with metric poses, while labelling, sampling and
validation all work on camera poses (:class:`~training.datasets.base.PlaceDataset`). The folders are
read by the runtime's own reader (:mod:`vpr_ros.evaluation.image_folders`, the one ``vpr-bench``
scores with) and given the poses their correspondences imply:

- ``layout: pairs`` (SPED, Essex3in1: every query shows one reference's place, and nothing relates
  two places): reference j stands at x = j * 1 km, its query on the same spot, all facing +x. The
  graded FoV label is then 1 for the true pair and 0 for every other pair, and validation counts
  only the true reference as correct.
- ``layout: route`` (Nordland: both folders follow one track in order): frame i stands at
  x = i * ``frame_spacing_m`` on a straight line, facing along it, so neighbouring frames get the
  graded FoV overlap their distance gives (the GCL labels of a forward-looking camera), and
  validation counts the references within ``tolerance`` frames as correct.

``index_range: [start, stop]`` keeps the queries and references ``start <= i < stop`` only, which is
how a held-out stretch stays out of training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.datasets.base import PlaceDataset, PlaceSet
from training.errors import UserError
from vpr_ros.errors import InputError
from vpr_ros.evaluation.image_folders import read_dataset

LAYOUTS = ("pairs", "route")
PAIR_SPACING_M = 1000.0  # far beyond any label radius: pairs of different places never overlap


def read_vpr_folder(
    root: Path,
    layout: str,
    frame_spacing_m: float = 10.0,
    tolerance: int = 0,
    index_range: tuple[int, int] | None = None,
) -> PlaceDataset:
    """The folder ``root`` as one :class:`PlaceDataset` (database = ``ref/``, queries = ``query/``)."""
    if layout not in LAYOUTS:
        raise UserError(f"vpr_folder {root}: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not frame_spacing_m > 0:
        raise UserError(f"vpr_folder {root}: frame_spacing_m must be > 0, got {frame_spacing_m}")
    try:
        data = read_dataset(root, tolerance)
    except InputError as exc:
        raise UserError(str(exc)) from None
    n_q, n_r = len(data.queries), len(data.refs)
    start, stop = (0, max(n_q, n_r)) if index_range is None else index_range
    if not 0 <= start < stop:
        raise UserError(f"vpr_folder {root}: index_range must be [start, stop] with 0 <= start < stop")
    keep_r = np.arange(start, min(stop, n_r))
    keep_q = np.arange(start, min(stop, n_q))
    if not len(keep_r) or not len(keep_q):
        raise UserError(f"vpr_folder {root}: index_range {[start, stop]} holds no query or no reference")
    if layout == "route":
        spacing = frame_spacing_m
        query_x = keep_q * spacing
        positive_m = (tolerance + 0.5) * spacing
    else:
        spacing = PAIR_SPACING_M
        query_x = np.array([_pair_position(data.matches[i], i, root) for i in keep_q])
        positive_m = 0.5 * spacing
    name = Path(root).resolve().name
    return PlaceDataset(
        name=name if index_range is None else f"{name}[{start}:{stop}]",
        database=_line([data.refs[i] for i in keep_r], keep_r * spacing, name),
        queries=_line([data.queries[i] for i in keep_q], query_x, name),
        positive_m=positive_m,
        positive_deg=None,
        train_positive_m=positive_m,
        radius_m=2.5 * frame_spacing_m if layout == "route" else 0.25 * spacing,
        meta={"layout": layout, "ground_truth": data.ground_truth},
    )


def _pair_position(matches: np.ndarray, query: int, root: Path) -> float:
    """Where a query of a pairs folder stands: on its one reference, or far before the first
    reference when its place is not among them (a distractor: no positive, only negatives)."""
    if matches.size > 1:
        raise UserError(
            f"vpr_folder {root}: query {query} matches {matches.size} references; layout pairs needs "
            "one reference per query (use layout route for an ordered sequence)"
        )
    return float(matches[0]) * PAIR_SPACING_M if matches.size else -(query + 1) * PAIR_SPACING_M


def _line(paths: list[Path], x: np.ndarray, tag: str) -> PlaceSet:
    """Images at (x, 0), all looking along +x."""
    x = np.asarray(x, dtype=np.float64)
    return PlaceSet(tuple(paths), np.stack([x, np.zeros_like(x)], axis=1), np.zeros(len(x)), (tag,) * len(x))
