"""The sequence filter: causal sequence matching over the place map's keyframe graph.

A robot does not teleport: consecutive frames come from consecutive places. Single-frame matching
ignores that, so one look-alike place makes the answer jump and hard conditions (night, winter)
stay hard. This filter is SeqSLAM's sequence search (Milford & Wyeth, ICRA 2012, eq. 4-6: the
score of a trajectory through the difference matrix is the sum of its contrast-normalised entries
along a line of constant velocity, and the best line wins) made causal and bounded:

- **Candidates, not the whole map.** A trajectory ends at a candidate keyframe for the newest
  frame: the frame's own top-k, plus where the previous frame's best candidates have moved to
  (so a place that drops out of one frame's top-k, as at night, is still tracked). Per-frame cost
  is candidates x motion hypotheses x sequence length, independent of the map size beyond the
  top-k search.
- **Trajectories from the map's geometry, not from ids.** From a candidate, the trajectory is
  walked backwards through the map: each step goes back by the distance moved between those two
  frames, along the travel direction of the map at the keyframe reached, and snaps to the nearest
  keyframe travelled in a consistent direction (a uniform grid of keyframe positions). So loops,
  junctions, revisits and several sessions are handled by where keyframes are, and a trajectory
  that walks off the map (the robot came from somewhere unmapped) simply ends there. The distance
  per step is the odometry's when there is odometry (one hypothesis per ``odometry_scales`` entry,
  for odometry scale error), or a constant speed from a range times the elapsed time when there is
  none (SeqSLAM's velocity lines; for ordered images, keyframes per frame). With odometry a robot
  that stops makes zero steps; without it, a stop breaks the constant-speed lines as it does
  SeqSLAM's (a range from 0 lets a "standing still" line on one look-alike keyframe win: nordland_a
  raw pixels fell from 0.917 to 0.460 at length 20).
- **Scores normalised per frame.** A frame's similarity to keyframe ``j`` counts as SeqSLAM's
  local contrast (eq. 1: minus the mean over the keyframes within ``contrast_radius_m`` of ``j``,
  over their standard deviation), so a keyframe similar to everything (a blank wall, fog) does not
  outvote its neighbours, plus ``global_weight`` times the similarity standardised against a fixed
  sample of 256 keyframes of the whole map, so a place must also stand out from the map at large
  (on the synthetic town's noise traverse, local contrast alone made length-10 sequences worse
  than single frames: 0.839 vs 0.899; with weight 0.5, 0.976). Both are in units of the frame's own
  spread, so the filter works unchanged for cosine descriptors and raw-pixel scores. The newest
  frame weighs 1, the one ``l`` frames back ``decay**l`` (SeqSLAM: ``decay = 1``).
- **A place is kept until another clearly wins** (hysteresis, as an HMM's transition cost keeps
  a forward filter on its track): the answer moves away from where the previous answer has moved
  to only when a trajectory ending elsewhere beats the best one around there by ``switch_cost``
  per frame of history (:meth:`SequenceFilter._place`). A sliding window alone forgets why it
  chose a place, so in a stretch where nothing stands out (a station stop in fog, a dark street)
  its answer wandered: ``nordland_a`` raw pixels at length 20, 0.927 without, 0.940 with (0.955
  with a quarter of the map-wide term as well); the synthetic night at length 10, 0.633 without,
  0.922 with. The price is about one frame more to
  return to the route after a kidnap. A keyframe among near-identical neighbours (the map stood
  still) has almost no local spread; ``spread_floor`` times the frame's spread over the map keeps
  its contrast from exploding.
- **A fresh start is single frames.** Until ``min_frames`` frames are in the history the answer
  is the newest frame's own top-1 (``filtered`` False); :meth:`reset` forgets the history
  (``~/reset_sequence`` on the node), and a frame without motion (``None``) restarts it.

The answer's ``confidence`` is the weighted mean of the raw similarities along the best trajectory
(the same unit as the single-frame similarity, so the model's unknown-place threshold applies to
it), and ``margin`` is how far, in normalised units, the best trajectory beats the best one ending
more than ``exclusion_radius_m`` away.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.geometry import wrap_angle, yaw_of

BACKGROUND = 256  # keyframes sampled once per map: each frame's similarity to the map at large
# Frames of evidence the switching cost grows with, at most: a larger cost only delays the return
# to the right place after a wrong lock (synthetic town's night traverse at length 60: recall@1
# 0.72 with a cost of 60 frames, 0.92 with 10).
SWITCH_HORIZON = 10
Scorer = Callable[[np.ndarray], np.ndarray]  # keyframe ids -> the frame's similarity to each


@dataclass(frozen=True)
class SequenceSettings:
    """The filter's parameters; :meth:`check` names a bad one in one line."""

    length: int = 10
    decay: float = 1.0
    min_speed: float = 0.3  # m/s without odometry (keyframes per frame for ordered images)
    max_speed: float = 2.0
    speeds: int = 9
    odometry_scales: tuple[float, ...] = (0.9, 1.0, 1.1)
    heading_tolerance_deg: float = 60.0
    snap_radius_m: float = 3.0
    tracked: int = 10
    exclusion_radius_m: float = 10.0
    contrast_radius_m: float = 10.0
    min_frames: int = 3
    global_weight: float = 0.5
    spread_floor: float = 0.3
    switch_cost: float = 1.0

    def check(self, prefix: str = "sequence.") -> None:
        if self.length < 1:
            raise InputError(f"{prefix}length must be >= 1 frame, got {self.length}")
        if not 0 < self.decay <= 1:
            raise InputError(f"{prefix}decay must be in (0, 1], got {self.decay}")
        if not (0 <= self.min_speed <= self.max_speed and math.isfinite(self.max_speed)):
            raise InputError(
                f"{prefix}min_speed / max_speed must satisfy 0 <= min <= max < inf, "
                f"got {self.min_speed} / {self.max_speed}"
            )
        if self.speeds < 1:
            raise InputError(f"{prefix}speeds must be >= 1, got {self.speeds}")
        if not self.odometry_scales or not all(0 < s < 10 for s in self.odometry_scales):
            raise InputError(
                f"{prefix}odometry_scales must be numbers in (0, 10), got {list(self.odometry_scales)}"
            )
        if not (math.isfinite(self.global_weight) and self.global_weight >= 0):
            raise InputError(f"{prefix}global_weight must be a finite number >= 0, got {self.global_weight}")
        for name in ("spread_floor", "switch_cost"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"{prefix}{name} must be a finite number >= 0, got {value}")
        if self.min_frames < 1:
            raise InputError(f"{prefix}min_frames must be >= 1, got {self.min_frames}")
        for name in ("heading_tolerance_deg", "snap_radius_m", "exclusion_radius_m", "contrast_radius_m"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"{prefix}{name} must be a finite number > 0, got {value}")
        if self.tracked < 0:
            raise InputError(f"{prefix}tracked must be >= 0, got {self.tracked}")

    def speed_grid(self) -> np.ndarray:
        return np.linspace(self.min_speed, self.max_speed, self.speeds)


@dataclass(frozen=True)
class Motion:
    """How far the robot moved since the previous frame: ``distance`` along its path and ``yaw``
    turned (odometry), or, with ``distance`` None, only ``elapsed`` time (the speed range bounds
    the distance; for ordered images without time, 1 per frame and speeds in keyframes per frame)."""

    distance: float | None
    yaw: float = 0.0
    elapsed: float = 1.0

    @classmethod
    def odometry(cls, dx: float, dy: float, dyaw: float) -> Motion:
        return cls(math.hypot(dx, dy), dyaw)

    @classmethod
    def unknown(cls, elapsed: float = 1.0) -> Motion:
        return cls(None, 0.0, max(0.0, elapsed))


@dataclass(frozen=True)
class FilterAnswer:
    """The filter's answer for the newest frame: the keyframe its best trajectory ends at, that
        frame's raw similarity to it, ``confidence`` (mean raw similarity along the trajectory),
        ``margin`` (normalised score over the best trajectory ending elsewhere; inf when there is none,
    negative when the switching cost kept a place that a rival now beats),
        ``ranking`` (candidates, best trajectory first), ``frames`` of history used (this one
        included), ``filtered`` False while fewer than ``min_frames`` frames gave the single-frame
        answer."""

    keyframe_id: int
    similarity: float
    confidence: float
    margin: float
    ranking: np.ndarray
    frames: int
    filtered: bool


class KeyframeGraph:
    """Keyframe positions (x, y) and travel directions, sorted into a uniform grid of ``cell_m``.

    A keyframe's travel direction is that of the mapping run through it (central difference of its
    neighbours in map order within one run; a new map session, or a jump of more than
    ``session_gap`` times the median spacing, starts a new run); where the run stood still it falls
    back to the keyframe's yaw. Trajectories step from keyframe to keyframe by position, so they
    cross from one session's keyframes to another's wherever the sessions pass the same places.
    """

    def __init__(self, positions: np.ndarray, directions: np.ndarray, cell_m: float) -> None:
        self.positions = np.ascontiguousarray(np.asarray(positions, dtype=np.float64)[:, :2])
        self.directions = np.ascontiguousarray(directions, dtype=np.float64)
        self.cell_m = float(cell_m)
        cells = np.floor(self.positions / self.cell_m).astype(np.int64)
        keys = _cell_key(cells[:, 0], cells[:, 1])
        self._order = np.argsort(keys, kind="stable")
        self._sorted_keys = keys[self._order]

    def __len__(self) -> int:
        return len(self.positions)

    @classmethod
    def from_poses(
        cls,
        positions: np.ndarray,
        orientations: np.ndarray,
        cell_m: float,
        session_gap: float = 5.0,
        sessions: np.ndarray | None = None,
    ) -> KeyframeGraph:
        """The graph of a map's keyframes; ``sessions`` (int [N], the map's session ids) ends a run
        where a new session starts."""
        xy = np.asarray(positions, dtype=np.float64)[:, :2]
        return cls(xy, _travel_directions(xy, orientations, session_gap, sessions), cell_m)

    @classmethod
    def chain(cls, n: int) -> KeyframeGraph:
        """Ordered frames as one straight route, one unit apart (image folders without poses)."""
        positions = np.zeros((n, 2))
        positions[:, 0] = np.arange(n)
        return cls(positions, np.tile([1.0, 0.0], (n, 1)), cell_m=2.0)

    def nearest(
        self, points: np.ndarray, headings: np.ndarray, radius: float, max_turn_deg: float
    ) -> np.ndarray:
        """For each point, the nearest keyframe within ``radius`` whose travel direction is within
        ``max_turn_deg`` of the heading (unit vectors); -1 where there is none."""
        result = np.full(len(points), -1, dtype=np.int64)
        owner, members = self.within(points, radius)
        if len(members) == 0:
            return result
        gap = np.linalg.norm(self.positions[members] - points[owner], axis=1)
        aligned = np.einsum("ij,ij->i", self.directions[members], headings[owner])
        ok = (gap <= radius) & (aligned >= math.cos(math.radians(max_turn_deg)))
        owner, members, gap = owner[ok], members[ok], gap[ok]
        order = np.lexsort((members, gap, owner))  # per owner: nearest first, ties by id
        owner, members = owner[order], members[order]
        first = np.ones(len(owner), dtype=bool)
        first[1:] = owner[1:] != owner[:-1]
        result[owner[first]] = members[first]
        return result

    def within(self, centres: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """(centre index, keyframe id) for every keyframe in the grid cells within ``radius``."""
        reach = int(math.ceil(radius / self.cell_m))
        offsets = np.arange(-reach, reach + 1)
        base = np.floor(centres / self.cell_m).astype(np.int64)
        cx = (base[:, 0:1] + offsets[None, :])[:, :, None]
        cy = (base[:, 1:2] + offsets[None, :])[:, None, :]
        keys = _cell_key(cx, cy).reshape(len(centres), -1)
        lo = np.searchsorted(self._sorted_keys, keys, side="left").ravel()
        hi = np.searchsorted(self._sorted_keys, keys, side="right").ravel()
        counts = hi - lo
        total = int(counts.sum())
        owner = np.repeat(np.arange(len(lo)) // keys.shape[1], counts)
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
        return owner, self._order[starts + np.arange(total)]


def _cell_key(cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    return (cx + (1 << 31)) * (1 << 32) + (cy + (1 << 31))


def _travel_directions(
    xy: np.ndarray, orientations: np.ndarray, session_gap: float, sessions: np.ndarray | None
) -> np.ndarray:
    n = len(xy)
    yaws = np.asarray(yaw_of(np.asarray(orientations, dtype=np.float64))).reshape(n)
    directions = np.stack([np.cos(yaws), np.sin(yaws)], axis=1)
    if n < 2:
        return directions
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    moving = steps[steps > 1e-6]
    linked = steps <= session_gap * (float(np.median(moving)) if len(moving) else 1.0)
    if sessions is not None:
        linked &= np.diff(np.asarray(sessions)) == 0
    ahead = np.where(np.append(linked, False)[:, None], np.vstack([xy[1:], xy[-1:]]), xy)
    behind = np.where(np.insert(linked, 0, False)[:, None], np.vstack([xy[:1], xy[:-1]]), xy)
    delta = ahead - behind
    length = np.linalg.norm(delta, axis=1)
    ok = length > 1e-6
    directions[ok] = delta[ok] / length[ok, None]
    return directions


class _Frame:
    """One frame of the history: its scorer, its raw and contrast-normalised similarities computed
    so far (by keyframe id; trajectories revisit the same keyframes frame after frame), the motion
    from it to the next frame, and its best candidates (carried forward to the next frame)."""

    def __init__(self, score: Scorer, background: np.ndarray) -> None:
        self.score = score
        self.background_mean = float(background.mean())
        self.background_std = max(float(background.std()), 1e-9)
        self.motion: Motion | None = None
        self.best = np.zeros(0, dtype=np.int64)
        self.raw: dict[int, float] = {}
        self.contrast: dict[int, float] = {}


class SequenceFilter:
    """Causal sequence search over a :class:`KeyframeGraph` (module docstring). Not thread-safe."""

    def __init__(self, graph: KeyframeGraph, settings: SequenceSettings) -> None:
        settings.check()
        self.graph = graph
        self.settings = settings
        self._history: deque[_Frame] = deque(maxlen=settings.length - 1)  # the frames before the newest
        rng = np.random.default_rng(0)
        self._background = np.sort(rng.choice(len(graph), min(len(graph), BACKGROUND), replace=False))

    def reset(self) -> None:
        self._history.clear()

    @property
    def frames(self) -> int:
        """Frames kept for the next update's trajectories (at most ``length - 1``)."""
        return len(self._history)

    def update(
        self, top_ids: np.ndarray, top_sims: np.ndarray, score: Scorer, motion: Motion | None
    ) -> FilterAnswer:
        """Add the newest frame - its single-frame top-k (ids, similarities; -1 ids are padding),
        a scorer of its similarity to any keyframe, the motion since the previous frame (None:
        the trajectory cannot be followed back, so the history is dropped) - and answer for it."""
        ids = np.asarray(top_ids, dtype=np.int64)
        sims = np.asarray(top_sims, dtype=np.float64)[ids >= 0]
        ids = ids[ids >= 0]
        if len(ids) == 0:
            raise ValueError("the sequence filter needs at least one search result")
        if motion is None:
            self._history.clear()
        elif self._history:
            self._history[-1].motion = motion
        frame = _Frame(score, np.asarray(score(self._background), dtype=np.float64))
        moved = self._moved_best()
        candidates = self._candidates(ids, moved)
        ends, steps = self._trajectories(candidates)
        normalised, raw, weight_sum = self._score(frame, candidates, ends, steps)
        used = len(self._history) + 1  # the history and this frame
        value = normalised / (self.settings.decay ** np.arange(used)).sum()
        per_end = np.full(len(candidates), -np.inf)
        np.maximum.at(per_end, ends, value)
        chosen = self._place(candidates, per_end, used, int(moved[0]) if len(moved) else -1)
        best = int(np.flatnonzero(ends == chosen)[np.argmax(value[ends == chosen])])
        order = np.argsort(-per_end, kind="stable")
        ranking = candidates[np.concatenate([[chosen], order[order != chosen]])]
        end = candidates[chosen]
        far = np.linalg.norm(self.graph.positions[candidates] - self.graph.positions[end], axis=1)
        rivals = per_end[far > self.settings.exclusion_radius_m]
        frame.best = ranking[: self.settings.tracked]
        self._history.append(frame)
        if used < self.settings.min_frames:  # not yet evidence: the single frame's answer
            return FilterAnswer(int(ids[0]), float(sims[0]), float(sims[0]), math.nan, ids, used, False)
        return FilterAnswer(
            keyframe_id=int(end),
            similarity=float(score(np.array([end]))[0]),
            confidence=float(raw[best] / weight_sum[best]),
            margin=float(value[best] - rivals.max()) if len(rivals) else math.inf,
            ranking=ranking,
            frames=used,
            filtered=True,
        )

    def ranked_answer(
        self, answer: FilterAnswer, top_ids: np.ndarray, score: Scorer
    ) -> tuple[np.ndarray, np.ndarray]:
        """The answer as a ranked result list of the single-frame list's length (ids, scores; -1 and
        -inf pad it, as in a search of a small map). A single-frame answer is the frame's own list.
        A filtered one lists the place the filter chose: its ranking (then the single-frame results
        it did not rank) within ``exclusion_radius_m`` of the answer. The first score is the
        filter's confidence (what the unknown-place threshold is applied to), each later one the
        keyframe's similarity capped by the score above it; so whatever reads the list (the top-1 or
        kNN pose, the match table) reads the filter's place, not a look-alike the frame preferred."""
        top_ids = np.asarray(top_ids, dtype=np.int64)
        if not answer.filtered:
            scores = np.asarray(score(np.clip(top_ids, 0, None)), dtype=np.float64)
            return top_ids, np.where(top_ids >= 0, scores, -np.inf)
        listed = np.concatenate([answer.ranking, top_ids[~np.isin(top_ids, answer.ranking) & (top_ids >= 0)]])
        positions = self.graph.positions
        near = np.linalg.norm(positions[listed] - positions[answer.keyframe_id], axis=1)
        listed = listed[near <= self.settings.exclusion_radius_m][: len(top_ids)]
        scores = np.asarray(score(listed), dtype=np.float64)
        scores[0] = answer.confidence
        ids = np.full(len(top_ids), -1, dtype=np.int64)
        padded = np.full(len(top_ids), -np.inf)
        ids[: len(listed)], padded[: len(listed)] = listed, np.minimum.accumulate(scores)
        return ids, padded

    def _place(self, candidates: np.ndarray, per_end: np.ndarray, used: int, moved: int) -> int:
        """The candidate to answer with: where the best trajectory ends, unless the best one ending
        around the previous answer moved on by the motion (keyframe ``moved``, -1 when there is
        none; within ``exclusion_radius_m``) trails
        it by less than the switching cost: ``switch_cost`` normalised units per frame of history
        (at most ``SWITCH_HORIZON`` frames), growing as ``(used / length)**2`` so that a fresh
        filter, whose first choice rests on little evidence, switches freely. Without it
        a window forgets why it chose a place, and where nothing stands out (a station stop, a
        featureless night street) the answer wanders to whatever wins by noise."""
        best = int(np.argmax(per_end))
        if self.settings.switch_cost <= 0 or moved < 0:  # no history, or it moved off the map
            return best
        gap = np.linalg.norm(self.graph.positions[candidates] - self.graph.positions[moved], axis=1)
        around = np.where(gap <= self.settings.exclusion_radius_m, per_end, -np.inf)
        kept = int(np.argmax(around))
        length = self.settings.length
        cost = self.settings.switch_cost * min(length, SWITCH_HORIZON) * used / length**2  # mean units
        return kept if around[kept] >= per_end[best] - cost else best

    def _moved_best(self) -> np.ndarray:
        """The previous frame's best candidates, its answer first, moved on by the motion since
        then (-1 where one left the map; empty without history)."""
        if not self._history or not len(self._history[-1].best):
            return np.zeros(0, dtype=np.int64)
        previous = self._history[-1]
        return self._step(previous.best, previous.motion)

    def _candidates(self, top_ids: np.ndarray, moved: np.ndarray) -> np.ndarray:
        """The frame's top-k, then the previous frame's best moved on (:meth:`_moved_best`)."""
        carried = np.unique(moved[moved >= 0])
        return np.concatenate([top_ids, carried[~np.isin(carried, top_ids)]])

    def _distances(self, motion: Motion) -> np.ndarray:
        if motion.distance is None:
            return self.settings.speed_grid() * motion.elapsed
        return np.asarray(self.settings.odometry_scales) * motion.distance

    def _step(self, ids: np.ndarray, motion: Motion) -> np.ndarray:
        """Where keyframes ``ids`` lead after ``motion`` (its middle distance hypothesis)."""
        distances = self._distances(motion)
        distance = np.full(len(ids), distances[len(distances) // 2])
        return self._walk(self.graph.positions[ids], self.graph.directions[ids], distance, motion.yaw, 1.0)[0]

    def _walk(
        self, points: np.ndarray, headings: np.ndarray, distance: np.ndarray, yaw: float, sign: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Move continuous ``points`` by ``distance`` along ``headings`` (``sign`` -1: backwards,
        undoing the turn ``yaw``): (nearest consistent keyframe or -1, new points, new headings).
        The points stay continuous, so a speed of 0.8 keyframe spacings per frame is not rounded to
        1 at every step; the heading follows the keyframe reached, so the walk follows curves."""
        moved = points + sign * distance[:, None] * headings
        c, s = math.cos(sign * yaw), math.sin(sign * yaw)
        turned = headings @ np.array([[c, s], [-s, c]])
        ids = self.graph.nearest(
            moved, turned, self.settings.snap_radius_m, self.settings.heading_tolerance_deg
        )
        reached = ids >= 0
        turned[reached] = self.graph.directions[ids[reached]]
        return ids, moved, turned

    def _trajectories(self, candidates: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Every (candidate, distance hypothesis) walked back through the history: the candidate
        index of each trajectory and, per past frame (newest first), the keyframe it is at (-1
        once it has left the map)."""
        history = list(self._history)
        if not history:
            return np.arange(len(candidates)), []
        hypotheses = max(len(self._distances(f.motion)) for f in history)
        ends = np.repeat(np.arange(len(candidates)), hypotheses)
        which = np.tile(np.arange(hypotheses), len(candidates))
        at = candidates[ends]
        points, headings = self.graph.positions[at], self.graph.directions[at]
        steps = []
        for frame in reversed(history):
            distances = self._distances(frame.motion)
            alive = at >= 0
            walked = np.full(len(at), -1, dtype=np.int64)
            if alive.any():
                d = distances[np.minimum(which[alive], len(distances) - 1)]
                walked[alive], points[alive], headings[alive] = self._walk(
                    points[alive], headings[alive], d, frame.motion.yaw, -1.0
                )
            at = walked
            steps.append(at)
        return ends, steps

    def _score(
        self, frame: _Frame, candidates: np.ndarray, ends: np.ndarray, steps: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per trajectory: the weighted sums of contrast-normalised and of raw similarities over the
        frames it reaches, and of their weights (a trajectory that walked off the map is scored on
        the frames it has: the others add 0, a neighbourhood's average)."""
        contrast, raw = self._similarities(frame, candidates)
        contrast, raw = contrast[ends], raw[ends]
        weight_sum = np.ones(len(ends))
        for back, (past, at) in enumerate(zip(reversed(self._history), steps, strict=True), start=1):
            reached = at >= 0
            if not reached.any():
                break
            unique, inverse = np.unique(at[reached], return_inverse=True)
            past_contrast, past_raw = self._similarities(past, unique)
            weight = self.settings.decay**back
            contrast[reached] += weight * past_contrast[inverse]
            raw[reached] += weight * past_raw[inverse]
            weight_sum[reached] += weight
        return contrast, raw, weight_sum

    def _similarities(self, frame: _Frame, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(contrast-normalised, raw) similarity of ``frame`` to each keyframe in ``ids``. The
        contrast is SeqSLAM's local enhancement (eq. 1): the similarity minus the mean over the
        keyframes within ``contrast_radius_m`` of that keyframe, over their standard deviation."""
        missing = np.array([i for i in ids.tolist() if i not in frame.contrast], dtype=np.int64)
        if len(missing):
            graph = self.graph
            radius = self.settings.contrast_radius_m
            owner, members = graph.within(graph.positions[missing], radius)
            near = (
                np.linalg.norm(graph.positions[members] - graph.positions[missing][owner], axis=1) <= radius
            )
            owner, members = owner[near], members[near]
            needed = np.unique(members)
            unknown = np.array([i for i in needed.tolist() if i not in frame.raw], dtype=np.int64)
            if len(unknown):
                frame.raw.update(
                    zip(unknown.tolist(), np.asarray(frame.score(unknown), dtype=np.float64).tolist())
                )
            sims = np.array([frame.raw[i] for i in members.tolist()])
            count = np.bincount(owner, minlength=len(missing))
            mean = np.bincount(owner, weights=sims, minlength=len(missing)) / count
            var = np.bincount(owner, weights=sims**2, minlength=len(missing)) / count - mean**2
            spread = np.sqrt(np.maximum(var, 0.0))
            spread = np.maximum(spread, self.settings.spread_floor * frame.background_std)
            spread = np.maximum(spread, 1e-3 * np.maximum(np.abs(mean), 1e-6))
            own = np.array([frame.raw[i] for i in missing.tolist()])
            local = (own - mean) / spread
            wide = (own - frame.background_mean) / frame.background_std
            frame.contrast.update(
                zip(missing.tolist(), (local + self.settings.global_weight * wide).tolist())
            )
        return (
            np.array([frame.contrast[i] for i in ids.tolist()]),
            np.array([frame.raw[i] for i in ids.tolist()]),
        )


def cosine_scorer(descriptors: np.ndarray, query: np.ndarray) -> Scorer:
    """The scorer of a frame's L2-normalised descriptor against keyframe descriptors (cosine)."""
    return partial(_cosine, descriptors, query)


def _cosine(descriptors: np.ndarray, query: np.ndarray, keyframes: np.ndarray) -> np.ndarray:
    return descriptors[keyframes] @ query


class SequenceTracker:
    """The filter as the localizer and the evaluations feed it, one frame at a time: keyframe graph
    from the map's poses, motion from odometry poses (the increment between consecutive ones, in the
    earlier pose's frame) or, without odometry, from the time between image stamps. A frame whose
    stamp does not move forward restarts the sequence (a replayed or reordered stream)."""

    def __init__(
        self,
        positions: np.ndarray,
        orientations: np.ndarray,
        settings: SequenceSettings,
        sessions: np.ndarray | None = None,
    ) -> None:
        cell = max(settings.snap_radius_m, settings.contrast_radius_m / 2)
        graph = KeyframeGraph.from_poses(positions, orientations, cell, sessions=sessions)
        self.filter = SequenceFilter(graph, settings)
        self._last: tuple[int, np.ndarray | None, float] | None = None  # stamp, xy, yaw

    def reset(self) -> None:
        self.filter.reset()
        self._last = None

    def step(
        self,
        stamp_ns: int,
        top_ids: np.ndarray,
        top_sims: np.ndarray,
        score: Scorer,
        odometry: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> FilterAnswer:
        """``odometry``: the robot's (position [3], orientation [4] xyzw) in its odometry frame at
        this image's stamp, or None to use the elapsed time."""
        xy = None if odometry is None else np.asarray(odometry[0], dtype=np.float64)[:2]
        yaw = 0.0 if odometry is None else float(yaw_of(np.asarray(odometry[1], dtype=np.float64)))
        motion = None
        if self._last is not None and stamp_ns > self._last[0]:
            last_stamp, last_xy, last_yaw = self._last
            if xy is not None and last_xy is not None:
                c, s = math.cos(last_yaw), math.sin(last_yaw)
                dx, dy = xy - last_xy
                motion = Motion.odometry(c * dx + s * dy, -s * dx + c * dy, float(wrap_angle(yaw - last_yaw)))
            elif xy is None:
                motion = Motion.unknown((stamp_ns - last_stamp) * 1e-9)
        self._last = (stamp_ns, xy, yaw)
        return self.filter.update(top_ids, top_sims, score, motion)
