"""From a config's data section to places and labels: reader dispatch, query filters, label cache.

Several datasets (MSLS cities) are trained together by concatenating their database and query
sides; labels are block-diagonal, so a pair never spans two cities.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from training.config import DataSource
from training.datasets.base import PlaceDataset, PlaceSet
from training.errors import UserError
from training.similarity import binary_positives, graded_labels

log = logging.getLogger(__name__)


def load_sources(sources: list[DataSource], cache_dir: Path) -> list[PlaceDataset]:
    """Every dataset of several sources, in order (``data.train`` then ``data.extra_train``)."""
    return [dataset for src in sources for dataset in load_source(src, cache_dir)]


def load_source(src: DataSource, cache_dir: Path) -> list[PlaceDataset]:
    """Read the datasets a ``DataSource`` names and apply its query filters."""
    if src.format == "msls":
        from training.datasets.msls import read_msls

        datasets = read_msls(Path(src.root), cities=src.cities, split=src.split)
    elif src.format == "pittsburgh":
        from training.datasets.pittsburgh import read_pittsburgh

        datasets = [read_pittsburgh(Path(src.root), split=src.split, variant=src.variant)]
    elif src.format == "tbplaces":
        from training.datasets.tbplaces import read_tbplaces

        datasets = [read_tbplaces(Path(src.root), src.database_set, src.query_set)]
    elif src.format == "vpr_folder":
        from training.datasets.vpr_folders import read_vpr_folder

        span = None if src.index_range is None else (src.index_range[0], src.index_range[1])
        datasets = [read_vpr_folder(Path(src.root), src.layout, src.frame_spacing_m, src.tolerance, span)]
    else:
        from training.datasets.trajectory import read_bag_trajectory, trajectory_dataset

        def side(bags: list[str]) -> PlaceSet:
            return concat_sets([read_bag_trajectory(Path(b), cache_dir / "bags") for b in bags])

        datasets = [trajectory_dataset(side(src.database or []), side(src.queries or []), name="trajectory")]
    keep = _wanted_tags(src)
    if keep is not None:
        datasets = [_filter_queries(d, keep) for d in datasets]
    if not any(len(d.queries) for d in datasets):
        raise UserError(
            f"data source {src.format} at {src.root or src.database}: no queries left after filtering"
        )
    return datasets


def _wanted_tags(src: DataSource) -> set[str] | None:
    if src.query_conditions is None:
        return None if src.query_tags is None else set(src.query_tags)
    world = Path(src.root).parent / "world.json"
    if not world.is_file():
        raise UserError(
            f"query_conditions needs the synthetic world's {world} (it maps conditions to sequences)"
        )
    traverses = json.loads(world.read_text())["traverses"]
    known = {t["condition"] for t in traverses}
    unknown = set(src.query_conditions) - known
    if unknown:
        raise UserError(f"query_conditions {sorted(unknown)} not in {world} (has {sorted(known)})")
    tags = {t["msls_sequence_key"] for t in traverses if t["condition"] in src.query_conditions}
    tags |= {t["name"] for t in traverses if t["condition"] in src.query_conditions}
    return tags | set(src.query_tags or ())


def tag_names(src: DataSource) -> dict[str, str]:
    """Readable names for query tags: a synthetic world's MSLS sequence keys -> traverse names."""
    world = Path(src.root).parent / "world.json" if src.root else None
    if world is None or not world.is_file():
        return {}
    return {t["msls_sequence_key"]: t["name"] for t in json.loads(world.read_text())["traverses"]}


def _filter_queries(dataset: PlaceDataset, keep: set[str]) -> PlaceDataset:
    index = np.array(
        [i for i in range(len(dataset.queries)) if dataset.queries.tag(i) in keep], dtype=np.int64
    )
    return dataset.subset(queries=index)


def concat_sets(sets: list[PlaceSet]) -> PlaceSet:
    if not sets:
        return PlaceSet((), np.zeros((0, 2)), np.zeros(0))
    return PlaceSet(
        tuple(p for s in sets for p in s.paths),
        np.concatenate([s.xy for s in sets]),
        np.concatenate([s.yaw for s in sets]),
        tuple(s.tag(i) for s in sets for i in range(len(s))),
    )


@dataclass(frozen=True)
class TrainingPlaces:
    """All training datasets side by side: global database and query index spaces."""

    database: PlaceSet
    queries: PlaceSet
    parts: tuple[PlaceDataset, ...]

    @classmethod
    def of(cls, datasets: list[PlaceDataset]) -> TrainingPlaces:
        return cls(
            concat_sets([d.database for d in datasets]),
            concat_sets([d.queries for d in datasets]),
            tuple(datasets),
        )

    def _offsets(self) -> list[tuple[int, int]]:
        out, db, q = [], 0, 0
        for d in self.parts:
            out.append((db, q))
            db, q = db + len(d.database), q + len(d.queries)
        return out

    def graded_labels(
        self, radius_m: float | None, fov_deg: float | None, cache_dir: Path
    ) -> sparse.csr_matrix:
        """Block-diagonal FoV overlaps, cached on disk by a hash of the poses and parameters."""
        blocks = []
        for d in self.parts:
            r = radius_m if radius_m is not None else d.radius_m
            fov = np.radians(fov_deg if fov_deg is not None else d.fov_deg)
            blocks.append(_cached(d, r, fov, cache_dir))
        return sparse.block_diag(blocks, format="csr") if blocks else sparse.csr_matrix((0, 0))

    def binary(self, which: str) -> list[np.ndarray]:
        """Per global query, global database indices within the training ("train": non-trivial,
        10 m for Pittsburgh) or evaluation ("potential": 25 m) positive distance."""
        out = []
        for d, (db0, _) in zip(self.parts, self._offsets()):
            dist = d.train_positive_m if which == "train" else d.positive_m
            out += [p + db0 for p in binary_positives(d.database, d.queries, dist)]
        return out


def _cached(d: PlaceDataset, radius: float, fov: float, cache_dir: Path) -> sparse.csr_matrix:
    digest = hashlib.sha256()
    for arr in (d.database.xy, d.database.yaw, d.queries.xy, d.queries.yaw):
        digest.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    digest.update(f"{radius:.6f}/{fov:.9f}/v1".encode())
    path = Path(cache_dir) / "labels" / f"fov-{digest.hexdigest()[:20]}.npz"
    if path.is_file():
        return sparse.load_npz(path).tocsr()
    log.info(
        "computing graded FoV labels for %s (%d queries x %d database)",
        d.name,
        len(d.queries),
        len(d.database),
    )
    labels = graded_labels(d.database, d.queries, radius, fov)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    sparse.save_npz(tmp, labels)
    tmp.replace(path)
    return labels
