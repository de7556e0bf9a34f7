"""Mapillary Street-level Sequences (MSLS) from its real CSVs, one ``PlaceDataset`` per city.

Layout (mapillary/mapillary_sls README and ``datasets/msls.py``)::

    root/train_val/<city>/{query,database}/images/<key>.jpg
    root/train_val/<city>/{query,database}/{raw,postprocessed,seq_info,subtask_index}.csv
    root/test/<city>/{query,database}/images/<key>.jpg, seq_info.csv, subtask_index.csv

The protocol follows the official loader, so numbers compare with published ones:

- panoramas (``raw.csv`` ``pano``) are excluded on both sides;
- for ``val`` and ``test`` only the rows of the ``subtask`` column of subtask_index.csv are kept
  ("all" gives the official 740-query cph + sf validation set);
- queries without a database image within the positive radius are dropped (10 m for ``train``,
  the loader's ``posDistThr`` default, 25 m otherwise, its evaluation threshold); their count is
  ``meta["dropped_queries"]``.

Rows are joined on ``key`` rather than on position, so files whose rows were reordered still read
right; the row order of postprocessed.csv (seq_info.csv for test) is the image order. Positions are
UTM (easting, northing) of the city's zone, yaw = radians(90 - compass angle ``ca``), wrapped to
[-pi, pi). The test split has no positions: xy and yaw are NaN, ``night`` and ``sideways`` are
False (unknown) and no query is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from training.datasets.base import PlaceDataset, PlaceSet
from training.datasets.common import CsvTable, read_csv_table, require_dir, wrap_angle
from training.errors import UserError

DEFAULT_CITIES = {
    "train": (
        "trondheim", "london", "boston", "melbourne", "amsterdam", "helsinki", "tokyo", "toronto",
        "saopaulo", "moscow", "zurich", "paris", "bangkok", "budapest", "austin", "berlin", "ottawa",
        "phoenix", "goa", "amman", "nairobi", "manila",
    ),
    "val": ("cph", "sf"),
    "test": ("miami", "athens", "buenosaires", "stockholm", "bengaluru", "kampala"),
}  # fmt: skip
SUBTASKS = ("all", "s2w", "w2s", "o2n", "n2o", "d2n", "n2d")
SIDES = ("database", "query")

POSITIVE_M = 25.0  # evaluate.py --threshold 25
POSITIVE_DEG = 40.0  # MSLS paper (Warburg et al. 2020), adopted by GCL; the official loader has none
TRAIN_POSITIVE_M = 10.0  # MSLS(posDistThr=10)
RADIUS_M = 50.0  # GCL field-of-view labels for MSLS: r = 50 m, theta = 90 degrees
FOV_DEG = 90.0


@dataclass(frozen=True)
class _Side:
    """One side (query or database) of a city after filtering, in image order."""

    places: PlaceSet
    night: np.ndarray  # bool [N]; False where unknown (test)
    sideways: np.ndarray  # bool [N]; view_direction == "Sideways"
    panoramas: int  # rows removed as panoramas


def read_msls(
    root: Path,
    cities: Sequence[str] | None = None,
    split: str = "train",
    exclude_panos: bool = True,
    subtask: str = "all",
) -> list[PlaceDataset]:
    """Read the cities of one split (default: the official list of the split), one dataset each.

    ``cities`` overrides the list (e.g. ``["synthtown"]``); ``subtask`` selects rows for ``val``
    and ``test`` and must stay "all" for ``train``, where the official loader ignores it.
    """
    if split not in DEFAULT_CITIES:
        raise UserError(f"MSLS split must be one of {', '.join(DEFAULT_CITIES)}, got {split!r}")
    if subtask not in SUBTASKS:
        raise UserError(f"MSLS subtask must be one of {', '.join(SUBTASKS)}, got {subtask!r}")
    if subtask != "all" and split == "train":
        raise UserError(f"MSLS subtask {subtask!r} applies to val and test only (the train split uses all)")
    root = require_dir(root, "MSLS root")
    names = DEFAULT_CITIES[split] if cities is None else tuple(cities)
    return [_read_city(root, city, split, exclude_panos, subtask) for city in names]


def _read_city(root: Path, city: str, split: str, exclude_panos: bool, subtask: str) -> PlaceDataset:
    city_dir = root / ("test" if split == "test" else "train_val") / city
    if not city_dir.is_dir():
        raise UserError(f"MSLS city {city!r}: folder {city_dir} not found")
    database, query = (
        _read_side(require_dir(city_dir / side, f"MSLS city {city!r}"), split, exclude_panos, subtask)
        for side in SIDES
    )
    threshold = TRAIN_POSITIVE_M if split == "train" else POSITIVE_M
    matched = _has_positive(query.places.xy, database.places.xy, threshold)
    return PlaceDataset(
        name=f"msls_{city}",
        database=database.places,
        queries=query.places.subset(np.flatnonzero(matched)),
        positive_m=POSITIVE_M,
        positive_deg=POSITIVE_DEG,
        train_positive_m=TRAIN_POSITIVE_M,
        radius_m=RADIUS_M,
        fov_deg=FOV_DEG,
        meta={
            "city": city,
            "split": split,
            "subtask": subtask,
            "night": query.night[matched],
            "sideways": query.sideways[matched],
            "dropped_queries": int(np.count_nonzero(~matched)),
            "panoramas": database.panoramas + query.panoramas,
        },
    )


def _read_side(side_dir: Path, split: str, exclude_panos: bool, subtask: str) -> _Side:
    """Join the side's CSVs on key, filter panoramas and subtask, and build its PlaceSet."""
    images = require_dir(side_dir / "images", "MSLS")
    seq = read_csv_table(side_dir / "seq_info.csv", ("key", "sequence_key"), "MSLS")
    if split == "test":
        order, keep, panoramas = seq, np.ones(len(seq), dtype=bool), 0
        xy, yaw = np.full((len(seq), 2), np.nan), np.full(len(seq), np.nan)
        night = sideways = np.zeros(len(seq), dtype=bool)
    else:
        order = read_csv_table(
            side_dir / "postprocessed.csv", ("key", "easting", "northing", "night", "view_direction"), "MSLS"
        )
        raw = read_csv_table(side_dir / "raw.csv", ("key", "ca", "pano"), "MSLS")
        raw_rows = _align(raw, order)
        pano = raw.bools("pano")[raw_rows]
        keep = ~pano if exclude_panos else np.ones(len(order), dtype=bool)
        panoramas = int(np.count_nonzero(pano & ~keep))
        xy = np.stack([order.floats("easting"), order.floats("northing")], axis=1).reshape(-1, 2)
        yaw = wrap_angle(np.radians(90.0 - raw.floats("ca")[raw_rows]))
        night = order.bools("night")
        sideways = np.array([v == "Sideways" for v in order.column("view_direction")], dtype=bool)
    if split != "train":
        index = read_csv_table(side_dir / "subtask_index.csv", ("key", subtask), "MSLS")
        keep &= index.bools(subtask)[_align(index, order)]
    keys = order.column("key")
    tags = np.asarray(seq.column("sequence_key"), dtype=object)[_align(seq, order)]
    rows = np.flatnonzero(keep)
    places = PlaceSet(
        tuple(images / f"{keys[r]}.jpg" for r in rows), xy[rows], yaw[rows], tuple(tags[rows].tolist())
    )
    return _Side(places, night[rows], sideways[rows], panoramas)


def _align(table: CsvTable, order: CsvTable) -> np.ndarray:
    """Row of ``table`` for every row of ``order``, matched on key; both must hold the same keys."""
    rows = _key_rows(table)
    missing = [key for key in order.column("key") if key not in rows]
    if missing:
        raise UserError(f"MSLS: key {missing[0]} of {order.path} is missing from {table.path}")
    extra = set(rows) - set(_key_rows(order))
    if extra:
        raise UserError(f"MSLS: key {min(extra)} of {table.path} is missing from {order.path}")
    return np.array([rows[key] for key in order.column("key")], dtype=np.int64)


def _key_rows(table: CsvTable) -> dict[str, int]:
    """Row index of every key; a key listed twice is an error naming its second line."""
    rows: dict[str, int] = {}
    for r, key in enumerate(table.column("key")):
        if rows.setdefault(key, r) != r:
            raise UserError(f"{table.where(r)}: key {key} listed twice")
    return rows


def _has_positive(query_xy: np.ndarray, database_xy: np.ndarray, radius_m: float) -> np.ndarray:
    """Which queries have a database image within ``radius_m`` (all True when positions are unknown)."""
    if np.isnan(query_xy).any() or np.isnan(database_xy).any():
        return np.ones(len(query_xy), dtype=bool)
    if len(database_xy) == 0:
        return np.zeros(len(query_xy), dtype=bool)
    distance, _ = cKDTree(database_xy).query(query_xy, distance_upper_bound=radius_m * (1 + 1e-12))
    return np.isfinite(distance)
