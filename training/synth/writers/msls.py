"""The synthetic world in the Mapillary Street-level Sequences (MSLS) layout, as the official loader
(mapillary_sls ``datasets/msls.py``, pandas ``read_csv(index_col=0)``) and GCL's tools read it.

Layout (``<side>`` is ``database`` for traverses with role "database", ``query`` for role "query";
several traverses on one side are concatenated in traverse order; a side without traverses gets
header-only CSVs)::

    root/msls/train_val/<city>/<side>/images/<key>.jpg     the generator's JPEG bytes
    root/msls/train_val/<city>/<side>/raw.csv
    root/msls/train_val/<city>/<side>/postprocessed.csv
    root/msls/train_val/<city>/<side>/seq_info.csv
    root/msls/train_val/<city>/<side>/subtask_index.csv

Every CSV starts with an unnamed index column 0..n-1 (rows in the same order in all four files):

- raw.csv ``,key,lon,lat,ca,captured_at,pano``: WGS84 degrees from the UTM position with pyproj
  (zone and hemisphere of ``world.geo``); ``ca`` compass angle in degrees clockwise from north,
  (90 - yaw in degrees) mod 360; ``captured_at`` Unix milliseconds, floor(stamp_ns / 1e6); ``pano``
  ``False`` (the loader keeps rows with ``pano == False``).
- postprocessed.csv ``,key,easting,northing,unique_cluster,control_panel,night,view_direction``:
  UTM metres; ``unique_cluster`` = place id of the 25 m x 25 m UTM grid cell that holds the frame,
  numbered 0, 1, ... in order of first visit over all traverses (traverse order), so the same place
  gets the same id on the database and query sides whatever the route direction (arc-length bins
  would give different ids to a route driven backwards); ``control_panel`` ``False``; ``night``
  ``True`` when the condition is "night"; ``view_direction`` ``Forward`` (the camera looks ahead).
- seq_info.csv ``,key,sequence_key,frame_number``: one sequence per traverse, frame_number 0, 1, ...
- subtask_index.csv ``,key,all,s2w,w2s,o2n,n2o,d2n,n2d``: ``x2y`` marks a query taken under x and a
  database image taken under y, the reading GCL's day/night sampler relies on (it treats query rows
  with ``n2d`` as night queries). Query rows: n2d = night, d2n = not night, w2s = winter,
  s2w = not winter. Database rows: n2d = not night, d2n = night, w2s = not winter, s2w = winter.
  ``all`` is True; ``o2n``/``n2o`` are False (all traverses belong to one synthetic epoch).

Values are Python literals (``True``/``False``, shortest round-trip floats), so pandas parses the
booleans as bool and the floats exactly. Keys and sequence keys are 22-character base64url strings
(the shape of Mapillary keys) hashed from (world seed, traverse name, frame index) and (world seed,
traverse name), so they are stable between runs and unique within the world.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.synth.traverse import ROLES, Traverse, WorldInfo
from training.synth.writers.common import (
    FrameWriter,
    compass_deg,
    stable_id,
    traverses_with_role,
    write_bytes,
)

if TYPE_CHECKING:
    from pyproj import Transformer

CLUSTER_CELL_M = 25.0
NIGHT = "night"
WINTER = "winter"

TABLES = {
    "raw.csv": ("key", "lon", "lat", "ca", "captured_at", "pano"),
    "postprocessed.csv": (
        "key",
        "easting",
        "northing",
        "unique_cluster",
        "control_panel",
        "night",
        "view_direction",
    ),
    "seq_info.csv": ("key", "sequence_key", "frame_number"),
    "subtask_index.csv": ("key", "all", "s2w", "w2s", "o2n", "n2o", "d2n", "n2d"),
}


class MslsWriter(FrameWriter):
    """Writes images as they arrive and the four CSVs per side at close."""

    subdir = "msls"
    requires = ("pyproj",)

    def __init__(self, root: Path, world: WorldInfo) -> None:
        super().__init__(root, world)
        self.city_dir = self.root / "train_val" / world.city
        self.keys = [
            [stable_id(world.seed, trav.name, i) for i in range(len(trav))] for trav in world.traverses
        ]
        all_keys = [key for keys in self.keys for key in keys]
        if len(set(all_keys)) != len(all_keys):
            raise ValueError("MslsWriter: image keys collide; traverse names must be unique")

    def _write_frame(self, t: int, i: int, rgb: np.ndarray, jpeg: bytes) -> None:
        side = self.world.traverses[t].role
        write_bytes(self.city_dir / side / "images" / f"{self.keys[t][i]}.jpg", jpeg)

    def _finish(self) -> None:
        clusters = place_clusters(self.world)
        to_lonlat = _lonlat_transformer(self.world)
        for side in ROLES:
            columns = [
                self._columns(t, clusters[t], to_lonlat) for t in traverses_with_role(self.world, side)
            ]
            for filename, header in TABLES.items():
                rows = (row for cols in columns for row in zip(*(cols[name] for name in header), strict=True))
                write_csv(self.city_dir / side / filename, header, rows)

    def _columns(self, t: int, clusters: np.ndarray, to_lonlat: Transformer) -> dict[str, list]:
        """Every CSV column of one traverse's rows, by column name."""
        trav = self.world.traverses[t]
        n = len(trav)
        utm = self.world.geo.to_utm(trav.xy)
        lon, lat = to_lonlat.transform(utm[:, 0], utm[:, 1])
        sequence_key = msls_sequence_key(self.world.seed, trav.name)
        columns = {
            "key": self.keys[t],
            "lon": np.asarray(lon, dtype=np.float64).tolist(),
            "lat": np.asarray(lat, dtype=np.float64).tolist(),
            "ca": compass_deg(trav.yaw).tolist(),
            "captured_at": (np.asarray(trav.stamps_ns, dtype=np.int64) // 1_000_000).tolist(),
            "pano": [False] * n,
            "easting": utm[:, 0].tolist(),
            "northing": utm[:, 1].tolist(),
            "unique_cluster": clusters.tolist(),
            "control_panel": [False] * n,
            "night": [trav.condition == NIGHT] * n,
            "view_direction": ["Forward"] * n,
            "sequence_key": [sequence_key] * n,
            "frame_number": list(range(n)),
        }
        columns.update({name: [flag] * n for name, flag in subtask_flags(trav).items()})
        return columns


def msls_sequence_key(seed: int, traverse_name: str) -> str:
    """The ``sequence_key`` of a traverse in seq_info.csv (also listed in world.json)."""
    return stable_id(seed, "sequence", traverse_name)


def subtask_flags(traverse: Traverse) -> dict[str, bool]:
    """Subtask membership of a traverse's rows ("x2y": query under x against a database under y)."""
    night = traverse.condition == NIGHT
    winter = traverse.condition == WINTER
    is_query = traverse.role == "query"

    def pair(as_query: bool, as_database: bool) -> bool:
        return as_query if is_query else as_database

    return {
        "all": True,
        "s2w": pair(not winter, winter),
        "w2s": pair(winter, not winter),
        "o2n": False,
        "n2o": False,
        "d2n": pair(not night, night),
        "n2d": pair(night, not night),
    }


def place_clusters(world: WorldInfo) -> list[np.ndarray]:
    """Per traverse, the dense id of the 25 m UTM grid cell of each frame (ids in first-visit order)."""
    cells = [
        np.floor(world.geo.to_utm(trav.xy) / CLUSTER_CELL_M).astype(np.int64) for trav in world.traverses
    ]
    stacked = np.concatenate(cells) if cells else np.zeros((0, 2), dtype=np.int64)
    _, first, inverse = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    ids = rank[inverse.reshape(-1)]
    return np.split(ids, np.cumsum([len(c) for c in cells])[:-1])


def write_csv(path: Path, header: tuple[str, ...], rows: Iterable[tuple]) -> None:
    """Write a CSV the way pandas ``to_csv`` does: unnamed index column first, ``\\n`` line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["", *header])
        writer.writerows([index, *row] for index, row in enumerate(rows))


def _lonlat_transformer(world: WorldInfo) -> Transformer:
    """UTM (zone and hemisphere of the world) to WGS84 lon/lat."""
    from pyproj import Transformer  # the 'train' extra: only this writer needs it

    epsg = (32600 if world.geo.northern else 32700) + world.geo.utm_zone
    return Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
