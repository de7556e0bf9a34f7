"""What the localizer answered for each query frame: its ranked keyframes, their scores, and latency.

Everything the report says about retrieval, unknown places and pose estimates is computed from
these ranked lists and the map, never from anything else the answering side did, which is why
the replay through the node (the match table on ``~/matches``) and the in-process evaluation give
identical metrics. Scores are float32 like the match table's, so both sides round alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORES = ("cosine", "negative_sad")


@dataclass(frozen=True)
class Answers:
    """Ranked results per answered frame. ``ids`` -1 and ``scores`` NaN pad lists shorter than K;
    ``latency_s`` is NaN where unknown. ``score`` says what the scores are: ``cosine`` similarity
    (a model) or ``negative_sad`` (raw pixels: minus the mean absolute difference)."""

    stamps_ns: np.ndarray  # [A] int64
    ids: np.ndarray  # [A, K] int64
    scores: np.ndarray  # [A, K] float32
    latency_s: np.ndarray  # [A] float64
    score: str = "cosine"

    def __len__(self) -> int:
        return len(self.stamps_ns)

    @property
    def k(self) -> int:
        return self.ids.shape[1]


class AnswerLog:
    """Collects answers as they come (out of order and repeated answers allowed: the last one for a
    stamp wins, as a re-sent frame is answered twice)."""

    def __init__(self, score: str = "cosine") -> None:
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.score = score
        self._rows: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}

    def add(
        self, stamp_ns: int, ids: np.ndarray, scores: np.ndarray, latency_s: float = float("nan")
    ) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if ids.shape != scores.shape:
            raise ValueError(f"{len(ids)} keyframe ids but {len(scores)} scores")
        self._rows[int(stamp_ns)] = (ids, scores, float(latency_s))

    def add_match_table(self, stamp_ns: int, rows: np.ndarray, latency_s: float = float("nan")) -> None:
        """One ``~/matches`` message (:func:`vpr_ros.io.match_table.read_table` rows)."""
        order = np.argsort(rows["rank"], kind="stable")
        self.add(stamp_ns, rows["keyframe_id"][order], rows["similarity"][order], latency_s)

    def answers(self) -> Answers:
        stamps = np.array(sorted(self._rows), dtype=np.int64)
        k = max((len(self._rows[s][0]) for s in stamps), default=0)
        ids = np.full((len(stamps), k), -1, dtype=np.int64)
        scores = np.full((len(stamps), k), np.nan, dtype=np.float32)
        latency = np.full(len(stamps), np.nan)
        for i, stamp in enumerate(stamps):
            row_ids, row_scores, latency[i] = self._rows[int(stamp)]
            valid = row_ids >= 0
            n = int(valid.sum())
            ids[i, :n], scores[i, :n] = row_ids[valid], row_scores[valid]
        return Answers(stamps, ids, scores, latency, self.score)
