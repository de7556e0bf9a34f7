"""The place map: keyframe descriptors in a FAISS index, each keyframe's pose and session (DESIGN.md,
"Place map").

A keyframe's pose is the **robot base's** (REP 105 ``base_link``) in the map frame ``frame_id``, at
the keyframe image's stamp: what the odometry or localization source gave when mapping. The
camera that took the image is not at the base: each **session** (one recording added to the map:
a mapping drive, a bag) keeps its camera's base-to-camera extrinsic, so the camera's pose is
``pose o extrinsic`` (:meth:`PlaceMap.camera_poses`). Keeping base poses makes everything that
reasons about the robot's motion (keyframe spacing, the sequence filter's travel directions, a
pose for Nav2) independent of how the camera is mounted, and lets a map be queried by another
camera (:mod:`vpr_ros.localization.robot_pose`).

A map grows by sessions (``vpr-build-map --append``, the mapper's ``map.append``, ``vpr-map
merge``): all in one frame, embedded by one model. Sessions are recorded in order; each keyframe
knows its session, so the sequence filter follows each recording's travel direction and never
links the end of one session to the start of the next.

Descriptors are L2-normalised, so the inner product the index ranks by is the cosine similarity
the pose estimator thresholds on. ``model.content_hash`` is the model bundle's: descriptors of two
networks live in unrelated spaces, so a map refuses to be loaded for another model, and two maps of
different models are never merged. The index types are :mod:`vpr_ros.mapping.map_index`'s; the
directory layout, its checks and atomic saving are :mod:`vpr_ros.mapping.map_files`'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.geometry import compose, parse_extrinsic, quat_normalize
from vpr_ros.mapping import map_files
from vpr_ros.mapping.map_files import MapContents, MapError, check_target
from vpr_ros.mapping.map_index import (
    INDEX_TYPES,
    checked_params,
    growable_index,
    reranked_search,
    set_search_params,
    train_ivfpq,
)

IDENTITY_EXTRINSIC = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
UNIT_NORM_TOLERANCE = 1e-2  # fp16 engines normalise to ~1e-3; anything further off is not L2-normalised
_SOURCE_UNSAFE = re.compile(r"[,\x00-\x1f\x7f]")


def odometry_frame_warning(frame_id: str) -> str | None:
    """A warning when ``frame_id`` names an odometry frame (REP 105 ``odom``, ``*/odom``,
    ``odom_*``...): a map there drifts with the odometry it was recorded with, and Nav2's AMCL
    ignores an initial pose outside its global frame. None for any other frame."""
    if not re.search(r"(^|[/_])odom($|[/_])|odometry", frame_id.lower()):
        return None
    return (
        f"the map frame '{frame_id}' is an odometry frame: keyframe poses drift with that odometry and "
        "Nav2/AMCL ignores initial poses outside its global frame; map from a localized source "
        "(map -> base_link on TF, /amcl_pose, a SLAM pose) unless the odometry is drift-free"
    )


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Session:
    """One recording added to a map: a ``name`` (the bag, or the mapper's image topic), the camera's
    base-to-camera ``camera_extrinsic`` (x y z qx qy qz qw, quaternion normalised) and when it was
    added (UTC; set by :meth:`PlaceMap.add_session` when empty)."""

    name: str
    camera_extrinsic: tuple[float, ...] = IDENTITY_EXTRINSIC
    created: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(f"map session: the name must be a non-empty string, got {self.name!r}")
        position, orientation = parse_extrinsic(self.camera_extrinsic)
        object.__setattr__(self, "camera_extrinsic", (*map(float, position), *map(float, orientation)))
        object.__setattr__(self, "name", _SOURCE_UNSAFE.sub("_", self.name))

    @property
    def extrinsic(self) -> tuple[np.ndarray, np.ndarray]:
        """(position [3], quaternion [4]) of the camera in the base frame."""
        values = np.array(self.camera_extrinsic)
        return values[:3], values[3:]

    def to_json(self, keyframes: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "camera_extrinsic": list(self.camera_extrinsic),
            "created": self.created,
            "keyframes": keyframes,
        }

    @classmethod
    def from_json(cls, entry: Any, where: str) -> Session:
        try:
            return cls(
                map_files.field(entry, "name", str, where),
                tuple(map_files.field(entry, "camera_extrinsic", list, where)),
                map_files.field(entry, "created", str, where),
            )
        except MapError:
            raise
        except InputError as exc:
            raise MapError(f"{where}: {map_files.META_FILE}: {exc}") from None


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


@dataclass
class _Keyframes:
    """The per-keyframe arrays, grown together."""

    descriptors: _Rows
    stamps: _Rows = field(default_factory=lambda: _Rows(np.zeros(0, np.int64)))
    positions: _Rows = field(default_factory=lambda: _Rows(np.zeros((0, 3))))
    orientations: _Rows = field(default_factory=lambda: _Rows(np.zeros((0, 4))))
    sessions: _Rows = field(default_factory=lambda: _Rows(np.zeros(0, np.int64)))
    sources: list[str] = field(default_factory=list)


class PlaceMap:
    """Keyframe descriptors, their base poses and sessions, and a FAISS index over the descriptors;
    see the module doc."""

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
        self._index_params = checked_params(index, index_params or {}, descriptor_dim)
        self._rows = _Keyframes(_Rows(np.zeros((0, descriptor_dim), np.float32)))
        self._sessions: list[Session] = []
        self.created = ""  # UTC of the first save (kept by later saves: appends, crops in place)
        self._index: faiss.Index | None = None if index == "ivfpq" else self._new_index()

    # ------------------------------------------------------------------ contents

    def __len__(self) -> int:
        return len(self._rows.sources)

    @property
    def index_params(self) -> dict[str, int | None]:
        """The index's parameters, defaults filled in (None: chosen at build time), a copy."""
        return dict(self._index_params)

    @property
    def descriptors(self) -> np.ndarray:
        """float32 [N, D], read-only."""
        return self._rows.descriptors.array

    @property
    def stamps_ns(self) -> np.ndarray:
        """int64 [N] keyframe stamps in nanoseconds, read-only."""
        return self._rows.stamps.array

    @property
    def positions(self) -> np.ndarray:
        """float64 [N, 3] base positions in ``frame_id``, read-only."""
        return self._rows.positions.array

    @property
    def orientations(self) -> np.ndarray:
        """float64 [N, 4] base orientations, unit quaternions (x, y, z, w) in ``frame_id``, read-only."""
        return self._rows.orientations.array

    @property
    def session_ids(self) -> np.ndarray:
        """int64 [N]: each keyframe's index into :attr:`sessions`, read-only."""
        return self._rows.sessions.array

    @property
    def sessions(self) -> list[Session]:
        """The recordings in the map, in the order they were added (a copy)."""
        return list(self._sessions)

    @property
    def sources(self) -> list[str]:
        """Where each keyframe came from (``bag#frame``), a copy."""
        return list(self._rows.sources)

    @property
    def travelled_m(self) -> float:
        """Path length through the keyframes of each session in insertion order (a sanity number for
        map.json; the jump from one session's end to the next one's start is not travel)."""
        steps = np.linalg.norm(np.diff(self.positions, axis=0), axis=1)
        same = np.diff(self.session_ids) == 0
        return float(steps[same].sum())

    def session_counts(self) -> np.ndarray:
        """Keyframes per session, int64 [len(sessions)]."""
        return np.bincount(self.session_ids, minlength=len(self._sessions))

    def extrinsics(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Base-to-camera extrinsics (positions [n, 3], quaternions [n, 4]) of the keyframes ``ids``
        (all keyframes when None): their sessions' cameras."""
        table = np.array([s.camera_extrinsic for s in self._sessions]).reshape(-1, 7)
        sessions = self.session_ids if ids is None else self.session_ids[np.asarray(ids, dtype=np.int64)]
        rows = table[sessions]
        return rows[:, :3], rows[:, 3:]

    def camera_poses(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Poses of the cameras that took the keyframes ``ids`` (all when None): base pose o extrinsic."""
        ids = np.arange(len(self)) if ids is None else np.asarray(ids, dtype=np.int64)
        return compose(self.positions[ids], self.orientations[ids], *self.extrinsics(ids))

    def add_session(self, session: Session) -> int:
        """Start a new session (the keyframes added next belong to it); returns its index."""
        if not isinstance(session, Session):
            raise InputError(f"place map: a session must be a Session, got {type(session).__name__}")
        if not session.created:
            session = Session(session.name, session.camera_extrinsic, utc_now())
        self._sessions.append(session)
        return len(self._sessions) - 1

    def add(
        self,
        descriptors: np.ndarray,
        stamps_ns: np.ndarray | list[int] | int,
        positions: np.ndarray,
        orientations: np.ndarray,
        sources: list[str] | None = None,
        session: int | None = None,
    ) -> np.ndarray:
        """Append keyframes (base poses) to ``session`` (default: the newest; a map without
        sessions gets one named "unnamed", identity extrinsic); returns their ids (int64,
        consecutive from ``len(self)``).

        One keyframe may be passed unbatched ([D], stamp, [3], [4]). Everything is checked before
        anything changes, so a rejected batch leaves the map as it was. Orientations are normalised.
        """
        desc = _unit_rows(descriptors, self.descriptor_dim, "descriptors", copy=True)
        n = len(desc)
        stamps = _stamps(stamps_ns, n)
        pos = _float_rows(positions, 3, n, "positions")
        ori = quat_normalize(_float_rows(orientations, 4, n, "orientations"))
        src = _sources(sources, n)
        if session is None:
            if not self._sessions:
                self.add_session(Session("unnamed"))
            session = len(self._sessions) - 1
        if isinstance(session, bool) or not isinstance(session, (int, np.integer)):
            raise InputError(f"place map: session must be an integer, got {session!r}")
        if not 0 <= session < len(self._sessions):
            raise InputError(
                f"place map: session {session} does not exist (the map has {len(self._sessions)})"
            )
        ids = np.arange(len(self), len(self) + n, dtype=np.int64)
        if self.index_type == "ivfpq":
            self._index = None  # retrained from all descriptors when next needed
        else:
            self._index.add(desc)
        rows = self._rows
        rows.descriptors.append(desc)
        rows.stamps.append(stamps)
        rows.positions.append(pos)
        rows.orientations.append(ori)
        rows.sessions.append(np.full(n, int(session), np.int64))
        rows.sources.extend(src)
        return ids

    def extend(self, other: PlaceMap) -> None:
        """Append every session of ``other`` with its keyframes (a merge). Refused, leaving this map
        as it was, when the two were built by different models or live in different frames."""
        if (other.model_hash, other.descriptor_dim) != (self.model_hash, self.descriptor_dim):
            raise MapError(
                f"the maps were built by different models ({self.model_hash[:15]}…, "
                f"{other.model_hash[:15]}…): their descriptors cannot be compared; rebuild one with the "
                "other's model"
            )
        if other.frame_id != self.frame_id:
            raise MapError(
                f"the maps are in different frames ('{self.frame_id}', '{other.frame_id}'): their poses "
                "cannot be compared; map both in one frame"
            )
        for s, session in enumerate(other.sessions):
            self._add_keyframes_of(other, np.flatnonzero(other.session_ids == s), self.add_session(session))

    def select(self, keep: np.ndarray) -> PlaceMap:
        """A new map of the keyframes where ``keep`` (bool [N]) is true, same model, frame and index
        type; sessions left without keyframes are dropped, the others keep their order."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self),):
            raise InputError(
                f"place map: the selection must be {len(self)} booleans, got shape {list(keep.shape)}"
            )
        out = PlaceMap(
            self.descriptor_dim, self.model_hash, self.frame_id, self.index_type, self._given_params(),
            self.model_summary,
        )  # fmt: skip
        for s, session in enumerate(self._sessions):
            chosen = np.flatnonzero(keep & (self.session_ids == s))
            if len(chosen):
                out._add_keyframes_of(self, chosen, out.add_session(session))
        return out

    def _add_keyframes_of(self, other: PlaceMap, chosen: np.ndarray, session: int) -> None:
        """Keyframes ``chosen`` (ids) of ``other``, as they are, into this map's ``session``."""
        if len(chosen):
            self.add(
                other.descriptors[chosen],
                other.stamps_ns[chosen],
                other.positions[chosen],
                other.orientations[chosen],
                [other._rows.sources[i] for i in chosen],
                session=session,
            )

    def _given_params(self) -> dict[str, int]:
        """The index parameters that were set (automatic ones stay automatic in a derived map)."""
        return {key: value for key, value in self._index_params.items() if value is not None}

    # ------------------------------------------------------------------ search

    def build_index(self) -> None:
        """Make the index current (only ivfpq ever lags behind ``add``). ``search`` and ``save`` call
        it; call it yourself to pay the training cost before the first query."""
        if self._index is not None or len(self) == 0:
            return
        self._index = train_ivfpq(self.descriptors, self._index_params)

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
            s, i = reranked_search(self._index, self.descriptors, q, found, self._index_params["rerank"])
        else:
            s, i = self._index.search(q, found)
        sims[:, :found], ids[:, :found] = s, i
        sims[ids < 0] = -np.inf
        return sims, ids

    def _new_index(self) -> faiss.Index:
        return growable_index(self.index_type, self.descriptor_dim, self._index_params)

    # ------------------------------------------------------------------ disk

    def save(self, directory: Path | str, overwrite: bool = False) -> None:
        """Write the map to ``directory`` atomically (:mod:`~vpr_ros.mapping.map_files`). An existing
        map there is replaced only with ``overwrite=True``; a directory that is not a place map never
        is. Missing parent directories are made."""
        directory = Path(directory).expanduser().absolute()
        where = f"place map {directory}"
        if len(self) == 0:
            raise MapError(f"{where}: the map has no keyframes; nothing to save")
        check_target(directory, overwrite)
        try:
            self.build_index()
        except InputError as exc:
            raise MapError(f"{where}: {exc}") from None
        counts = self.session_counts()
        meta = {
            "frame_id": self.frame_id,
            "descriptor_dim": self.descriptor_dim,
            "model": {"content_hash": self.model_hash, "summary": self.model_summary},
            "index": {"type": self.index_type, **self.index_params},
            "keyframes": len(self),
            "travelled_m": self.travelled_m,
            "created": self.created or utc_now(),
            "sessions": [s.to_json(int(n)) for s, n in zip(self._sessions, counts)],
        }
        rows = self._rows
        contents = MapContents(
            meta, self.stamps_ns, self.positions, self.orientations, self.session_ids, rows.sources,
            self.descriptors, self._index,
        )  # fmt: skip
        map_files.write_map_directory(directory, contents)

    @classmethod
    def load(
        cls,
        directory: Path | str,
        expected_model_hash: str | None = None,
        expected_dim: int | None = None,
    ) -> PlaceMap:
        """Read and check a map (:func:`~vpr_ros.mapping.map_files.read_map_directory`).
        ``expected_model_hash`` / ``expected_dim`` are the loaded model bundle's: a map built with
        another model is refused."""
        directory = Path(directory).expanduser()
        where = f"place map {directory}"
        contents = map_files.read_map_directory(directory, expected_model_hash, expected_dim)
        place_map = _from_meta(contents.meta, where)
        place_map._sessions = _sessions_of(contents, where)
        place_map.created = map_files.field(contents.meta, "created", str, where)
        set_search_params(contents.index, place_map.index_type, place_map.index_params)
        place_map._rows = _Keyframes(
            _Rows(contents.descriptors),
            _Rows(contents.stamps_ns),
            _Rows(contents.positions),
            _Rows(contents.orientations),
            _Rows(contents.session_ids),
            contents.sources,
        )
        place_map._index = contents.index
        return place_map


def _from_meta(meta: dict[str, Any], where: str) -> PlaceMap:
    model = map_files.field(meta, "model", dict, where)
    index = dict(map_files.field(meta, "index", dict, where))
    try:
        return PlaceMap(
            descriptor_dim=map_files.field(meta, "descriptor_dim", int, where),
            model_hash=map_files.field(model, "content_hash", str, where),
            frame_id=map_files.field(meta, "frame_id", str, where),
            index=index.pop("type", None),
            index_params=index,
            model_summary=model.get("summary", ""),
        )
    except MapError:
        raise
    except InputError as exc:
        raise MapError(f"{where}: {map_files.META_FILE}: {str(exc).removeprefix('place map: ')}") from None


def _sessions_of(contents: MapContents, where: str) -> list[Session]:
    """map.json's sessions, checked against the keyframes' session column."""
    entries = map_files.field(contents.meta, "sessions", list, where)
    sessions = [Session.from_json(entry, f"{where}: session {i}") for i, entry in enumerate(entries)]
    ids = contents.session_ids
    if len(ids) and (ids.min() < 0 or ids.max() >= len(sessions)):
        raise MapError(f"{where}: {map_files.KEYFRAMES_FILE} names a session that map.json does not list")
    counts = np.bincount(ids, minlength=len(sessions))
    listed = [entry.get("keyframes") for entry in entries]
    if listed != counts.tolist():
        raise MapError(
            f"{where}: map.json lists {listed} keyframes per session, {map_files.KEYFRAMES_FILE} has "
            f"{counts.tolist()}"
        )
    return sessions


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
