"""The place map: keyframe descriptors in a FAISS index plus each keyframe's pose (DESIGN.md, "Place map").

A map is a directory (schema :data:`SCHEMA`)::

    map.json         schema, frame_id, descriptor_dim, model {content_hash, summary}, index {type, params},
                     keyframes, travelled_m, created (UTC), files {name: {sha256, bytes}}
    index.faiss      faiss.write_index of an inner-product index (flat | hnsw | ivfpq)
    descriptors.npy  float32 [N, D], the source of truth: any index type can be rebuilt from it
    keyframes.csv    id,stamp_ns,x,y,z,qx,qy,qz,qw,source - one row per keyframe, plain numbers

Nothing is pickled, so a map is safe to read from an untrusted disk and readable by other tools.
Descriptors are L2-normalised, so the inner product the index ranks by is the cosine similarity
the pose estimator thresholds on. ``model.content_hash`` is the model bundle's: descriptors of two
networks live in unrelated spaces, so a map refuses to be loaded for another model.

Index types. ``flat`` (exact, the default) and ``hnsw`` grow in place, so a mapper can load a map
and keep adding. ``ivfpq`` must be trained on the descriptors it indexes; keeping it simple, it is
(re)built from all descriptors - trained and filled - whenever it is needed (``search``,
``save``, ``build_index``) after keyframes were added, and its candidates are re-ranked with the
exact descriptors (``rerank`` of them), so the similarities it returns are true cosines, not PQ
approximations. Real descriptors are all alike (nearest neighbours at cosine 0.99), so PQ codes
alone rank them poorly: on a 1M map of 1280-D descriptors (``benchmarks/map_search.py``) 64-byte
codes put the true nearest keyframe among their top 10 for 24 % of the queries and among their top
256 for 79 %; 160-byte codes among their top 256 for 99 %. Hence the defaults: ``m``
is the largest divisor of D up to D / 8 (8 or more dimensions per one-byte sub-quantizer),
``rerank`` 256; ``nlist`` is the largest power of two <= min(2 sqrt(N), N / 39) (half FAISS's
4 sqrt(N) rule of thumb, and its 39 training points per list), and k-means trains on at most 64
points per centroid. Building a 1M-keyframe ivfpq map took 100 s on one core (about 35 s of it PQ
training, which is the same for any map of more than ~16k keyframes), so ivfpq is for maps whose
memory matters (175 MB instead of 5 GB at 1M x 1280-D); flat or hnsw serve small ones better.

Loading checks every file's size and sha256 *before* parsing it; the index bytes are hashed in
memory and the same bytes are handed to ``faiss.deserialize_index``, so a corrupt or swapped file
never reaches FAISS (whose readers can abort the process on bad input). ``descriptors.npy`` is
memory-mapped, so a loaded flat or HNSW map holds its vectors once (inside the index); a map
built in memory holds them twice (its own copy and the index's).

Saving is atomic (:mod:`vpr_ros.io.fileio`): the files are written and fsynced in a hidden sibling
directory, which then replaces the map in one step (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere
the old map is renamed aside, the new one renamed in, and the old one deleted - a kill between those
two renames leaves the old map whole in the aside directory, which the next save restores).
Leftovers of killed saves are swept by the next save to the same directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from vpr_ros.bundle import sha256_file
from vpr_ros.errors import InputError
from vpr_ros.geometry import quat_normalize
from vpr_ros.io.fileio import (
    check_replaceable,
    has_schema,
    interrupted_replacement,
    replace_directory,
    require,
    staging_directory,
    sweep_leftovers,
)

SCHEMA = "vpr_ros.place_map/1"
META_FILE = "map.json"
INDEX_FILE = "index.faiss"
DESCRIPTORS_FILE = "descriptors.npy"
KEYFRAMES_FILE = "keyframes.csv"
DATA_FILES = (INDEX_FILE, DESCRIPTORS_FILE, KEYFRAMES_FILE)
CSV_HEADER = "id,stamp_ns,x,y,z,qx,qy,qz,qw,source"
INDEX_TYPES = ("flat", "hnsw", "ivfpq")
# None = chosen from the data at build time (ivfpq nlist) or from the dimension (ivfpq m).
INDEX_DEFAULTS: dict[str, dict[str, int | None]] = {
    "flat": {},
    "hnsw": {"M": 32, "efConstruction": 40, "efSearch": 64},
    "ivfpq": {"nlist": None, "m": None, "nbits": 8, "nprobe": 32, "rerank": 256},
}
_TRAIN_POINTS_PER_CENTROID = 64
_RERANK_BLOCK = 32
UNIT_NORM_TOLERANCE = 1e-2  # fp16 engines normalise to ~1e-3; anything further off is not L2-normalised
_FAISS_CLASS = {"flat": "IndexFlatIP", "hnsw": "IndexHNSWFlat", "ivfpq": "IndexIVFPQ"}
_SOURCE_UNSAFE = re.compile(r"[,\x00-\x1f\x7f]")


class MapError(InputError):
    """A place map directory is missing, incomplete, corrupt, of another schema or another model."""


def _field(mapping: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    return require(mapping, key, kind, f"{where}: {META_FILE}", MapError)


class _Rows:
    """An array grown in batches and concatenated only when read: a mapper adds one keyframe at a
    time, and re-concatenating on every add would be quadratic."""

    def __init__(self, initial: np.ndarray) -> None:
        self._parts = [initial]

    def append(self, rows: np.ndarray) -> None:
        self._parts.append(rows)

    @property
    def array(self) -> np.ndarray:
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
        view = self._parts[0].view()
        view.flags.writeable = False
        return view


class PlaceMap:
    """Keyframe descriptors, their poses and a FAISS index over the descriptors; see the module doc."""

    def __init__(
        self,
        descriptor_dim: int,
        model_hash: str,
        frame_id: str = "map",
        index: str = "flat",
        index_params: dict[str, Any] | None = None,
        model_summary: str = "",
    ) -> None:
        if isinstance(descriptor_dim, bool) or not isinstance(descriptor_dim, int) or descriptor_dim < 1:
            raise InputError(f"place map: descriptor_dim must be an integer >= 1, got {descriptor_dim!r}")
        for name, value in (("model_hash", model_hash), ("frame_id", frame_id)):
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"place map: {name} must be a non-empty string, got {value!r}")
        if index not in INDEX_TYPES:
            known = ", ".join(INDEX_TYPES)
            raise InputError(f"place map: index type {index!r} is unknown; choose one of {known}")
        self.descriptor_dim = descriptor_dim
        self.model_hash = model_hash
        self.model_summary = str(model_summary)
        self.frame_id = frame_id
        self.index_type = index
        self._index_params = _index_params(index, index_params or {}, descriptor_dim)
        self._descriptors = _Rows(np.zeros((0, descriptor_dim), np.float32))
        self._stamps = _Rows(np.zeros(0, np.int64))
        self._positions = _Rows(np.zeros((0, 3)))
        self._orientations = _Rows(np.zeros((0, 4)))
        self._sources: list[str] = []
        self._index: faiss.Index | None = None if index == "ivfpq" else self._growable_index()

    # ------------------------------------------------------------------ contents

    def __len__(self) -> int:
        return len(self._sources)

    @property
    def index_params(self) -> dict[str, int | None]:
        """The index's parameters, defaults filled in (None: chosen at build time), a copy."""
        return dict(self._index_params)

    @property
    def descriptors(self) -> np.ndarray:
        """float32 [N, D], read-only."""
        return self._descriptors.array

    @property
    def stamps_ns(self) -> np.ndarray:
        """int64 [N] keyframe stamps in nanoseconds, read-only."""
        return self._stamps.array

    @property
    def positions(self) -> np.ndarray:
        """float64 [N, 3] in ``frame_id``, read-only."""
        return self._positions.array

    @property
    def orientations(self) -> np.ndarray:
        """float64 [N, 4] unit quaternions (x, y, z, w) in ``frame_id``, read-only."""
        return self._orientations.array

    @property
    def sources(self) -> list[str]:
        """Where each keyframe came from (``bag#frame``), a copy."""
        return list(self._sources)

    @property
    def travelled_m(self) -> float:
        """Path length through the keyframes in insertion order (a sanity number for map.json)."""
        steps = np.diff(self.positions, axis=0)
        return float(np.linalg.norm(steps, axis=1).sum())

    def add(
        self,
        descriptors: np.ndarray,
        stamps_ns: np.ndarray | list[int] | int,
        positions: np.ndarray,
        orientations: np.ndarray,
        sources: list[str] | None = None,
    ) -> np.ndarray:
        """Append keyframes; returns their ids (int64, consecutive from ``len(self)``).

        One keyframe may be passed unbatched ([D], stamp, [3], [4]). Everything is checked before
        anything changes, so a rejected batch leaves the map as it was. Orientations are normalised.
        """
        desc = _unit_rows(descriptors, self.descriptor_dim, "descriptors", copy=True)
        n = len(desc)
        stamps = _stamps(stamps_ns, n)
        pos = _float_rows(positions, 3, n, "positions")
        ori = quat_normalize(_float_rows(orientations, 4, n, "orientations"))
        src = _sources(sources, n)
        ids = np.arange(len(self), len(self) + n, dtype=np.int64)
        if self.index_type == "ivfpq":
            self._index = None  # retrained from all descriptors when next needed
        else:
            self._index.add(desc)
        self._descriptors.append(desc)
        self._stamps.append(stamps)
        self._positions.append(pos)
        self._orientations.append(ori)
        self._sources.extend(src)
        return ids

    # ------------------------------------------------------------------ search

    def build_index(self) -> None:
        """Make the index current (only ivfpq ever lags behind ``add``). ``search`` and ``save`` call
        it; call it yourself to pay the training cost before the first query."""
        if self._index is not None or len(self) == 0:
            return
        self._index = _train_ivfpq(self.descriptors, self._index_params)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar keyframes of each query [m, D] (one [D] query counts as m = 1):
        (sims [m, k] float32, ids [m, k] int64), best first. Columns beyond the map's size (or that
        an approximate index did not fill) have id -1 and similarity -inf."""
        q = _unit_rows(queries, self.descriptor_dim, "queries", copy=False, model=self.model_hash)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"place map search: k must be an integer >= 1, got {k!r}")
        sims = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        found = min(int(k), len(self))
        if found == 0 or len(q) == 0:
            return sims, ids
        self.build_index()
        if self.index_type == "ivfpq":
            s, i = self._reranked(q, found)
        else:
            s, i = self._index.search(q, found)
        sims[:, :found], ids[:, :found] = s, i
        sims[ids < 0] = -np.inf
        return sims, ids

    def _reranked(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """IVF-PQ candidates re-scored with the exact descriptors, so sims are true cosines."""
        fetch = min(len(self), max(k, self._index_params["rerank"]))
        _, cand = self._index.search(q, fetch)
        exact = np.empty(cand.shape, np.float32)
        descriptors = self.descriptors
        for start in range(0, len(q), _RERANK_BLOCK):  # bounds the gathered rows to ~40 MB
            block = slice(start, start + _RERANK_BLOCK)
            rows = descriptors[np.maximum(cand[block], 0)]  # [b, fetch, D]
            exact[block] = np.einsum("bfd,bd->bf", rows, q[block])
        exact[cand < 0] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, 1), np.take_along_axis(cand, order, 1)

    def _growable_index(self) -> faiss.Index:
        d = self.descriptor_dim
        if self.index_type == "flat":
            return faiss.IndexFlatIP(d)
        p = self._index_params
        index = faiss.IndexHNSWFlat(d, p["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p["efConstruction"]
        index.hnsw.efSearch = p["efSearch"]
        return index

    # ------------------------------------------------------------------ disk

    def save(self, directory: Path | str, overwrite: bool = False) -> None:
        """Write the map to ``directory`` atomically (see the module doc). An existing map there is
        replaced only with ``overwrite=True``; a directory that is not a place map never is. Missing
        parent directories are made."""
        directory = Path(directory).expanduser().absolute()
        where = f"place map {directory}"
        if len(self) == 0:
            raise MapError(f"{where}: the map has no keyframes; nothing to save")
        check_target(directory, overwrite)
        try:
            self.build_index()
        except InputError as exc:
            raise MapError(f"{where}: {exc}") from None
        directory.parent.mkdir(parents=True, exist_ok=True)
        with staging_directory(directory) as staging:
            self._write(staging)
            replace_directory(staging, directory)

    def _write(self, staging: Path) -> None:
        faiss.write_index(self._index, str(staging / INDEX_FILE))
        with open(staging / DESCRIPTORS_FILE, "wb") as f:
            np.save(f, np.ascontiguousarray(self.descriptors), allow_pickle=False)
        _write_csv(staging / KEYFRAMES_FILE, self)
        files = {name: _seal(staging / name) for name in DATA_FILES}
        meta = {
            "schema": SCHEMA,
            "frame_id": self.frame_id,
            "descriptor_dim": self.descriptor_dim,
            "model": {"content_hash": self.model_hash, "summary": self.model_summary},
            "index": {"type": self.index_type, **self.index_params},
            "keyframes": len(self),
            "travelled_m": self.travelled_m,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "files": files,
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(
        cls,
        directory: Path | str,
        expected_model_hash: str | None = None,
        expected_dim: int | None = None,
    ) -> PlaceMap:
        """Read and check a map (see the module doc). ``expected_model_hash`` / ``expected_dim``
        are the loaded model bundle's: a map built with another model is refused."""
        directory = Path(directory).expanduser()
        where = f"place map {directory}"
        meta = _read_meta(directory)
        place_map = _from_meta(meta, where)
        _check_model(place_map, directory, expected_model_hash, expected_dim)
        files = _field(meta, "files", dict, where)
        n = _field(meta, "keyframes", int, where)
        _check_listing(directory, files)
        stamps, positions, orientations, sources = _parse_csv(
            _verified_bytes(directory, KEYFRAMES_FILE, files), n, where
        )
        descriptors = _load_descriptors(directory, files, n, place_map.descriptor_dim)
        index = _load_index(directory, files, place_map, n)
        place_map._descriptors = _Rows(descriptors)
        place_map._stamps = _Rows(stamps)
        place_map._positions = _Rows(positions)
        place_map._orientations = _Rows(orientations)
        place_map._sources = sources
        place_map._index = index
        return place_map


# ---------------------------------------------------------------------- parameters


def _index_params(index: str, given: dict[str, Any], dim: int) -> dict[str, int | None]:
    defaults = INDEX_DEFAULTS[index]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        known = ", ".join(defaults) or "none"
        raise InputError(f"place map: {index} index has no parameter {', '.join(unknown)} (known: {known})")
    params = {**defaults, **given}
    for key, value in params.items():
        if value is None and defaults[key] is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"place map: {index} parameter {key} must be an integer >= 1, got {value!r}")
    if index == "ivfpq":
        _check_pq(params, dim)
    return params


def _check_pq(params: dict[str, int | None], dim: int) -> None:
    if params["m"] is not None and dim % params["m"]:
        raise InputError(f"place map: ivfpq m={params['m']} must divide the descriptor dim {dim}")
    if params["nbits"] > 16:
        raise InputError(f"place map: ivfpq nbits must be <= 16, got {params['nbits']}")


def ivfpq_shape(n: int, dim: int, params: dict[str, int | None]) -> tuple[int, int]:
    """(nlist, m) an ivfpq index over n keyframes gets: the given values, or the automatic ones."""
    m = params["m"] or max(c for c in range(1, max(1, dim // 8) + 1) if dim % c == 0)
    nlist = params["nlist"] or 1 << int(math.log2(max(1.0, min(2 * math.sqrt(n), n / 39))))
    return nlist, m


def _train_ivfpq(x: np.ndarray, params: dict[str, int | None]) -> faiss.Index:
    n, dim = x.shape
    nlist, m = ivfpq_shape(n, dim, params)
    needed = max(nlist, 1 << params["nbits"])
    if n < needed:
        raise InputError(
            f"an ivfpq index with nlist={nlist}, nbits={params['nbits']} needs at least {needed} keyframes "
            f"to train, the map has {n}; use index 'flat' for a map this small, or lower nlist/nbits"
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, params["nbits"], faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = index.pq.cp.max_points_per_centroid = _TRAIN_POINTS_PER_CENTROID
    index.train(x)
    index.add(x)
    index.nprobe = params["nprobe"]
    return index


# ---------------------------------------------------------------------- input checks


def _float_rows(value: Any, width: int, n: int | None, name: str) -> np.ndarray:
    """float64 [n, width]; a single row may be given as [width]."""
    arr = np.asarray(value)
    if arr.ndim == 1 and arr.shape[0] == width:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != width or (n is not None and len(arr) != n):
        want = f"[{n if n is not None else 'N'}, {width}]"
        raise InputError(f"place map: {name} must have shape {want}, got {list(arr.shape)}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"place map: {name} must be numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(arr), axis=1))[0])
        raise InputError(f"place map: {name} row {bad} holds NaN or infinite values")
    return arr


def _unit_rows(value: Any, dim: int, name: str, copy: bool, model: str = "") -> np.ndarray:
    """float32 [n, dim], finite and L2-normalised (the inner product is then the cosine)."""
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"place map: {name} must be floating point, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != dim:
        whose = f" (model {model[:15]}…)" if model else ""
        raise InputError(
            f"place map: {name} must have shape [N, {dim}] - the map holds {dim}-D descriptors{whose} - "
            f"got {list(arr.shape)}"
        )
    arr = np.array(arr, dtype=np.float32, order="C") if copy else np.ascontiguousarray(arr, np.float32)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"place map: {name} hold NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1)
    off = np.flatnonzero(np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE)
    if off.size:
        raise InputError(
            f"place map: {name} row {off[0]} has L2 norm {norms[off[0]]:.4g}; the map needs L2-normalised "
            "descriptors (the model's output), so that inner product = cosine similarity"
        )
    return arr


def _stamps(value: Any, n: int) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value))
    if arr.shape != (n,):
        raise InputError(f"place map: stamps_ns must have shape [{n}], got {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(
            f"place map: stamps_ns must be integer nanoseconds (floats lose them), got {arr.dtype}"
        )
    if np.any(arr < 0) or (arr.dtype == np.uint64 and np.any(arr > np.iinfo(np.int64).max)):
        raise InputError("place map: stamps_ns must be >= 0 and fit in int64")
    return arr.astype(np.int64)


def _sources(value: list[str] | None, n: int) -> list[str]:
    """Source labels with commas and control characters replaced, so the CSV stays one row each."""
    if value is None:
        return [""] * n
    if isinstance(value, str) or len(value) != n:
        raise InputError(f"place map: sources must be a list of {n} strings")
    return [_SOURCE_UNSAFE.sub("_", str(s)) for s in value]


# ---------------------------------------------------------------------- writing


def _write_csv(path: Path, place_map: PlaceMap) -> None:
    """One row per keyframe; floats as Python repr (shortest text that reads back bit-exact)."""
    rows = zip(
        place_map.stamps_ns.tolist(),
        place_map.positions.tolist(),
        place_map.orientations.tolist(),
        place_map.sources,
    )
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(CSV_HEADER + "\n")
        for i, (stamp, p, q, src) in enumerate(rows):
            f.write(f"{i},{stamp},{p[0]!r},{p[1]!r},{p[2]!r},{q[0]!r},{q[1]!r},{q[2]!r},{q[3]!r},{src}\n")


def _seal(path: Path) -> dict[str, Any]:
    """Describe a written file for map.json (replace_directory makes it durable before installing)."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def check_target(
    directory: Path, overwrite: bool, where: str | None = None, hint: str = "pass overwrite=True"
) -> None:
    """The checks :meth:`PlaceMap.save` makes of ``directory``, for callers to make before a run
    spends minutes building the map: leftovers of killed saves swept, then
    :func:`~vpr_ros.io.fileio.check_replaceable` (``where`` names the input in errors)."""
    directory = Path(directory).expanduser()
    sweep_leftovers(directory.absolute())
    where = where or f"place map {directory}"
    check_replaceable(directory, overwrite, is_place_map, where, "place map", hint, MapError)


def is_place_map(directory: Path) -> bool:
    """Does ``directory`` hold a place map (a map.json of this schema family)?"""
    return has_schema(directory, META_FILE, SCHEMA.split("/")[0])


# ---------------------------------------------------------------------- reading


def _read_meta(directory: Path) -> dict[str, Any]:
    where = f"place map {directory}"
    if not directory.is_dir():
        hint = _interrupted_save_hint(directory)
        raise MapError(f"{where}: not a directory{hint}")
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except FileNotFoundError:
        raise MapError(f"{where}: {META_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MapError(f"{where}: {META_FILE} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise MapError(f"{where}: {META_FILE} must hold a JSON object")
    if meta.get("schema") != SCHEMA:
        raise MapError(
            f"{where}: {META_FILE} has schema {meta.get('schema')!r}; this vpr_ros reads {SCHEMA!r} "
            "(rebuild the map with this version's mapper)"
        )
    return meta


def _interrupted_save_hint(directory: Path) -> str:
    aside = interrupted_replacement(directory)
    if aside is None:
        return ""
    return f" (an interrupted save left the previous map at {aside}; rename it back or save again)"


def _from_meta(meta: dict[str, Any], where: str) -> PlaceMap:
    model = _field(meta, "model", dict, where)
    index = dict(_field(meta, "index", dict, where))
    try:
        return PlaceMap(
            descriptor_dim=_field(meta, "descriptor_dim", int, where),
            model_hash=_field(model, "content_hash", str, where),
            frame_id=_field(meta, "frame_id", str, where),
            index=index.pop("type", None),
            index_params=index,
            model_summary=model.get("summary", ""),
        )
    except MapError:
        raise
    except InputError as exc:
        raise MapError(f"{where}: {META_FILE}: {str(exc).removeprefix('place map: ')}") from None


def _check_model(place_map: PlaceMap, directory: Path, model_hash: str | None, dim: int | None) -> None:
    if model_hash is not None and model_hash != place_map.model_hash:
        raise MapError(
            f"map {directory} was built with model {place_map.model_hash[:15]}… but the loaded model is "
            f"{model_hash[:15]}…; rebuild the map with this model"
        )
    if dim is not None and dim != place_map.descriptor_dim:
        raise MapError(
            f"place map {directory}: holds {place_map.descriptor_dim}-D descriptors but the loaded model "
            f"outputs {dim}-D; rebuild the map with this model"
        )


def _check_listing(directory: Path, files: dict[str, Any]) -> None:
    """Every data file listed, present and of the recorded size, before any is read."""
    where = f"place map {directory}"
    if sorted(files) != sorted(DATA_FILES):
        raise MapError(f"{where}: {META_FILE} lists files {sorted(files)}, expected {sorted(DATA_FILES)}")
    for name in DATA_FILES:
        entry = files[name]
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and type(entry.get("bytes")) is int
        ):
            raise MapError(f"{where}: {META_FILE} files.{name} needs 'sha256' (string) and 'bytes' (integer)")
        size = entry["bytes"]
        path = directory / name
        if not path.is_file():
            raise MapError(f"{where}: {name} is missing")
        if path.stat().st_size != size:
            actual = path.stat().st_size
            raise MapError(
                f"{where}: {name} is {actual} bytes, {META_FILE} says {size} (truncated or replaced)"
            )


def _corrupt(directory: Path, name: str) -> MapError:
    return MapError(f"place map {directory}: {name} is corrupt (sha256 differs from {META_FILE}); rebuild it")


def _verified_bytes(directory: Path, name: str, files: dict[str, Any]) -> bytes:
    """The file's bytes, hashed in memory: exactly the bytes checked are the bytes parsed."""
    data = (directory / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != files[name]["sha256"]:
        raise _corrupt(directory, name)
    return data


def _parse_csv(data: bytes, n: int, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise MapError(f"{where}: {KEYFRAMES_FILE} is not UTF-8 text") from None
    if lines[0] != CSV_HEADER:
        raise MapError(f"{where}: {KEYFRAMES_FILE} header is {lines[0][:80]!r}, expected {CSV_HEADER!r}")
    rows = lines[1:-1] if lines[-1] == "" else lines[1:]
    if len(rows) != n:
        raise MapError(f"{where}: {KEYFRAMES_FILE} has {len(rows)} keyframes, {META_FILE} says {n}")
    stamps = np.zeros(n, np.int64)
    poses = np.zeros((n, 7))
    sources = []
    for i, line in enumerate(rows):
        fields = line.split(",")
        try:
            if len(fields) != 10 or int(fields[0]) != i:
                raise ValueError(f"expected 10 fields starting with id {i}")
            stamps[i] = int(fields[1])
            poses[i] = [float(v) for v in fields[2:9]]
        except (ValueError, OverflowError) as exc:
            raise MapError(f"{where}: {KEYFRAMES_FILE} line {i + 2} is malformed ({exc})") from None
        sources.append(fields[9])
    if not np.all(np.isfinite(poses)):
        raise MapError(f"{where}: {KEYFRAMES_FILE} holds NaN or infinite poses")
    if np.any(np.abs(np.linalg.norm(poses[:, 3:], axis=1) - 1.0) > 1e-6):
        raise MapError(f"{where}: {KEYFRAMES_FILE} holds a quaternion that is not unit length")
    return stamps, poses[:, :3].copy(), poses[:, 3:].copy(), sources


def _load_descriptors(directory: Path, files: dict[str, Any], n: int, dim: int) -> np.ndarray:
    where = f"place map {directory}"
    path = directory / DESCRIPTORS_FILE
    if sha256_file(path) != files[DESCRIPTORS_FILE]["sha256"]:
        raise _corrupt(directory, DESCRIPTORS_FILE)
    try:
        descriptors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MapError(f"{where}: {DESCRIPTORS_FILE} is not a readable .npy file ({exc})") from None
    if descriptors.dtype != np.float32 or descriptors.shape != (n, dim):
        raise MapError(
            f"{where}: {DESCRIPTORS_FILE} is {descriptors.dtype} {list(descriptors.shape)}, expected "
            f"float32 [{n}, {dim}]"
        )
    return descriptors


def _load_index(directory: Path, files: dict[str, Any], place_map: PlaceMap, n: int) -> faiss.Index:
    where = f"place map {directory}"
    data = _verified_bytes(directory, INDEX_FILE, files)
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise MapError(f"{where}: {INDEX_FILE} is not a FAISS index ({str(exc).splitlines()[0]})") from None
    expected = _FAISS_CLASS[place_map.index_type]
    found = (type(index).__name__, index.metric_type, index.d, index.ntotal)
    if found != (expected, faiss.METRIC_INNER_PRODUCT, place_map.descriptor_dim, n):
        raise MapError(
            f"{where}: {INDEX_FILE} is a {found[0]} (metric {found[1]}, d={found[2]}, {found[3]} vectors), "
            f"expected an inner-product {expected} with d={place_map.descriptor_dim} and {n} vectors"
        )
    if place_map.index_type == "hnsw":
        index.hnsw.efSearch = place_map.index_params["efSearch"]
    elif place_map.index_type == "ivfpq":
        index.nprobe = place_map.index_params["nprobe"]
    return index
