"""A place map's directory: written atomically, read back with every check before parsing.

Layout (schema :data:`SCHEMA`)::

    map.json         schema, frame_id, descriptor_dim, model {content_hash, summary}, index {type, params},
                     keyframes, travelled_m, created (UTC),
                     sessions [{name, camera_extrinsic [x y z qx qy qz qw], created, keyframes}],
                     files {name: {sha256, bytes}}
    index.faiss      faiss.write_index of an inner-product index (flat | hnsw | ivfpq)
    descriptors.npy  float32 [N, D], the source of truth: any index type can be rebuilt from it
    keyframes.csv    id,stamp_ns,x,y,z,qx,qy,qz,qw,session,source - one row per keyframe, plain numbers

Nothing is pickled, so a map is safe to read from an untrusted disk and readable by other tools.
Loading checks every file's size and sha256 *before* parsing it; the index bytes are hashed in
memory and the same bytes are handed to ``faiss.deserialize_index``, so a corrupt or swapped file
never reaches FAISS (whose readers can abort the process on bad input). ``descriptors.npy`` is
memory-mapped, so a loaded flat or HNSW map holds its vectors once (inside the index).

Saving is atomic (:mod:`vpr_ros.io.fileio`): the files are written and fsynced in a hidden sibling
directory, which then replaces the map in one step (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere
the old map is renamed aside, the new one renamed in, and the old one deleted - a kill between those
two renames leaves the old map whole in the aside directory, which the next save restores).
Leftovers of killed saves are swept by the next save to the same directory.

Schema 2 added the sessions (the camera extrinsic of each recording, and each keyframe's session)
and made keyframe poses the robot base's rather than the camera's; a schema 1 map is refused with
the advice to rebuild it, since its poses cannot be told apart from base poses.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from vpr_ros.bundle import sha256_file
from vpr_ros.errors import InputError
from vpr_ros.io.fileio import (
    check_replaceable,
    has_schema,
    interrupted_replacement,
    replace_directory,
    require,
    staging_directory,
    sweep_leftovers,
)

SCHEMA = "vpr_ros.place_map/2"
META_FILE = "map.json"
INDEX_FILE = "index.faiss"
DESCRIPTORS_FILE = "descriptors.npy"
KEYFRAMES_FILE = "keyframes.csv"
DATA_FILES = (INDEX_FILE, DESCRIPTORS_FILE, KEYFRAMES_FILE)
CSV_HEADER = "id,stamp_ns,x,y,z,qx,qy,qz,qw,session,source"
_CSV_FIELDS = len(CSV_HEADER.split(","))
FAISS_CLASS = {"flat": "IndexFlatIP", "hnsw": "IndexHNSWFlat", "ivfpq": "IndexIVFPQ"}


class MapError(InputError):
    """A place map directory is missing, incomplete, corrupt, of another schema or another model."""


@dataclass(frozen=True)
class MapContents:
    """What a map directory holds: map.json's fields (``meta``, without ``schema`` and ``files``) and
    the keyframes, one row each."""

    meta: dict[str, Any]
    stamps_ns: np.ndarray
    positions: np.ndarray
    orientations: np.ndarray
    session_ids: np.ndarray
    sources: list[str]
    descriptors: np.ndarray
    index: faiss.Index


def field(mapping: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``mapping[key]`` of ``kind`` from map.json, or a MapError naming it."""
    return require(mapping, key, kind, f"{where}: {META_FILE}", MapError)


# ---------------------------------------------------------------------- writing


def write_map_directory(directory: Path, contents: MapContents) -> None:
    """Write ``contents`` to ``directory`` atomically (the caller checked it may be replaced)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with staging_directory(directory) as staging:
        faiss.write_index(contents.index, str(staging / INDEX_FILE))
        with open(staging / DESCRIPTORS_FILE, "wb") as f:
            np.save(f, np.ascontiguousarray(contents.descriptors), allow_pickle=False)
        _write_csv(staging / KEYFRAMES_FILE, contents)
        files = {name: _seal(staging / name) for name in DATA_FILES}
        meta = {"schema": SCHEMA, **contents.meta, "files": files}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        replace_directory(staging, directory)


def _write_csv(path: Path, contents: MapContents) -> None:
    """One row per keyframe; floats as Python repr (shortest text that reads back bit-exact)."""
    rows = zip(
        contents.stamps_ns.tolist(),
        contents.positions.tolist(),
        contents.orientations.tolist(),
        contents.session_ids.tolist(),
        contents.sources,
    )
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(CSV_HEADER + "\n")
        for i, (stamp, p, q, session, src) in enumerate(rows):
            f.write(
                f"{i},{stamp},{p[0]!r},{p[1]!r},{p[2]!r},{q[0]!r},{q[1]!r},{q[2]!r},{q[3]!r},{session},{src}\n"
            )


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


def size_on_disk(directory: Path) -> int:
    """Bytes of the map's files (what ``vpr-map info`` reports)."""
    return sum(path.stat().st_size for path in Path(directory).iterdir() if path.is_file())


# ---------------------------------------------------------------------- reading


def read_map_directory(
    directory: Path, expected_model_hash: str | None = None, expected_dim: int | None = None
) -> MapContents:
    """Read and check a map directory; a map of another model (hash or dimension) is refused."""
    where = f"place map {directory}"
    meta = _read_meta(directory)
    model_hash = field(field(meta, "model", dict, where), "content_hash", str, where)
    dim = field(meta, "descriptor_dim", int, where)
    _check_model(directory, model_hash, dim, expected_model_hash, expected_dim)
    files = field(meta, "files", dict, where)
    n = field(meta, "keyframes", int, where)
    index_type = field(meta, "index", dict, where).get("type")
    if index_type not in FAISS_CLASS:
        raise MapError(f"{where}: {META_FILE}: index type {index_type!r} is unknown")
    _check_listing(directory, files)
    stamps, positions, orientations, sessions, sources = _parse_csv(
        _verified_bytes(directory, KEYFRAMES_FILE, files), n, where
    )
    descriptors = _load_descriptors(directory, files, n, dim)
    index = _load_index(directory, files, index_type, dim, n)
    meta = {key: value for key, value in meta.items() if key not in ("schema", "files")}
    return MapContents(meta, stamps, positions, orientations, sessions, sources, descriptors, index)


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


def _check_model(
    directory: Path, model_hash: str, dim: int, expected_hash: str | None, expected_dim: int | None
) -> None:
    if expected_hash is not None and expected_hash != model_hash:
        raise MapError(
            f"map {directory} was built with model {model_hash[:15]}… but the loaded model is "
            f"{expected_hash[:15]}…; rebuild the map with this model"
        )
    if expected_dim is not None and expected_dim != dim:
        raise MapError(
            f"place map {directory}: holds {dim}-D descriptors but the loaded model "
            f"outputs {expected_dim}-D; rebuild the map with this model"
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


def _parse_csv(
    data: bytes, n: int, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
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
    sessions = np.zeros(n, np.int64)
    sources = []
    for i, line in enumerate(rows):
        fields = line.split(",")
        try:
            if len(fields) != _CSV_FIELDS or int(fields[0]) != i:
                raise ValueError(f"expected {_CSV_FIELDS} fields starting with id {i}")
            stamps[i] = int(fields[1])
            poses[i] = [float(v) for v in fields[2:9]]
            sessions[i] = int(fields[9])
        except (ValueError, OverflowError) as exc:
            raise MapError(f"{where}: {KEYFRAMES_FILE} line {i + 2} is malformed ({exc})") from None
        sources.append(fields[10])
    if not np.all(np.isfinite(poses)):
        raise MapError(f"{where}: {KEYFRAMES_FILE} holds NaN or infinite poses")
    if np.any(np.abs(np.linalg.norm(poses[:, 3:], axis=1) - 1.0) > 1e-6):
        raise MapError(f"{where}: {KEYFRAMES_FILE} holds a quaternion that is not unit length")
    return stamps, poses[:, :3].copy(), poses[:, 3:].copy(), sessions, sources


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


def _load_index(directory: Path, files: dict[str, Any], index_type: str, dim: int, n: int) -> faiss.Index:
    where = f"place map {directory}"
    data = _verified_bytes(directory, INDEX_FILE, files)
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise MapError(f"{where}: {INDEX_FILE} is not a FAISS index ({str(exc).splitlines()[0]})") from None
    expected = FAISS_CLASS[index_type]
    found = (type(index).__name__, index.metric_type, index.d, index.ntotal)
    if found != (expected, faiss.METRIC_INNER_PRODUCT, dim, n):
        raise MapError(
            f"{where}: {INDEX_FILE} is a {found[0]} (metric {found[1]}, d={found[2]}, {found[3]} vectors), "
            f"expected an inner-product {expected} with d={dim} and {n} vectors"
        )
    return index
