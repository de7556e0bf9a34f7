"""The replay report: files, JSON, CSV, figures, refusing and replacing report directories atomically,
and the metrics of a small run whose every number can be counted by hand."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.errors import InputError
from vpr_ros.evaluation import plots
from vpr_ros.evaluation.answers import AnswerLog
from vpr_ros.evaluation.ground_truth import GroundTruth
from vpr_ros.evaluation.metrics import EvalSettings, Evaluation, evaluate
from vpr_ros.evaluation.report import REPORT_SCHEMA, check_report_dir, summary, write_report
from vpr_ros.io.rosbag_source import BagInfo
from vpr_ros.mapping.place_map import PlaceMap

DIM = 16
HASH = "sha256:" + "cd" * 32
STAMP0 = 1_700_000_000_000_000_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = set(plots.FIGURES)
RUN = {
    "mode": "offline",
    "model": {"dir": "models/test", "summary": "test model", "content_hash": HASH},
    "map": "maps/line",
    "bag": "bags/query",
    "image_topic": "/camera/image",
    "pose_topic": "/pose",
    "frame_id": "map",
    "created": "2025-01-01T00:00:00+00:00",
}

# The map: 40 keyframes along the x axis, 2 m apart, all facing +x (yaw 0).
# Queries: (x, y, yaw in degrees, ranked keyframe ids, top score); None = dropped (never answered).
# With the default 10 m / 40 degrees a keyframe k (at x = 2k) is correct for an on-line query
# facing +x when |2k - x| < 9.99.
QUERIES = [
    (3, 0.5, 0, [1, 2, 30, 31, 32], 0.90),  # q0: top-1 correct
    (11, 0.5, 0, [35, 5, 6, 7, 8], 0.80),  # q1: wrong top-1 (70 m), correct at rank 2
    (21, 0.5, 0, [30, 31, 32, 33, 10], 0.70),  # q2: correct only at rank 5
    (31, 0.5, 0, [0, 1, 2, 3, 39], 0.45),  # q3: nothing correct, refused
    (41, 0.5, 0, [20, 21, 19, 0, 1], 0.40),  # q4: top-1 correct but refused
    (51, 0.5, 0, [25, 26, 24, 27, 23], 0.95),  # q5: top-1 correct
    (61, 0.5, 0, [30, 29, 31, 28, 32], 0.85),  # q6: top-1 correct
    (71, 0.5, 0, [35, 36, 34, 37, 33], 0.60),  # q7: top-1 correct
    (45, 0.5, 180, [22, 23, 21, 24, 20], 0.75),  # q8: on the line but facing back: off route by heading
    (40, 60, 0, [20, 21, 22, 23, 24], 0.30),  # q9: 60 m off the line, refused
    (20, -80, 0, [10, 11, 12, 13, 14], 0.55),  # q10: 80 m off the line, accepted (false accept)
    (100, 0, 0, [39, 38, 37, 36, 35], 0.20),  # q11: 22 m past the end, refused
    (55, 0.5, 0, None, None),  # q12: dropped
]


def yaw_quat(yaw_deg: float) -> np.ndarray:
    half = math.radians(yaw_deg) / 2
    return np.array([0.0, 0.0, math.sin(half), math.cos(half)])


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def line_map() -> PlaceMap:
    n = 40
    place_map = PlaceMap(DIM, HASH, frame_id="map")
    positions = np.column_stack([2.0 * np.arange(n), np.zeros(n), np.zeros(n)])
    place_map.add(
        unit_rows(np.random.default_rng(0), n), np.arange(n) * 10**9, positions, np.tile(yaw_quat(0), (n, 1))
    )
    return place_map


def query_truth() -> GroundTruth:
    info = BagInfo(
        Path("bags/query"), "/camera/image", "sensor_msgs/msg/Image", "/pose", "PoseStamped", 15, "map"
    )
    return GroundTruth(
        info,
        image_count=15,  # two images had no pose
        stamps_ns=STAMP0 + np.arange(len(QUERIES), dtype=np.int64) * 10**8,
        positions=np.array([[x, y, 0.0] for x, y, *_ in QUERIES]),
        orientations=np.stack([yaw_quat(yaw) for _, _, yaw, *_ in QUERIES]),
    )


def answer_log(truth: GroundTruth, score: str = "cosine") -> AnswerLog:
    """The answers of QUERIES, latencies 10, 11, ... ms, plus one for a frame without ground truth."""
    log = AnswerLog(score)
    for i, (stamp, (*_, ids, top)) in enumerate(zip(truth.stamps_ns, QUERIES)):
        if ids is not None:
            scores = top - 0.01 * np.arange(len(ids))
            log.add(stamp, ids, scores if score == "cosine" else scores - 1.0, 0.010 + 0.001 * i)
    log.add(STAMP0 - 1, [0, 1, 2, 3, 4], [0.9, 0.8, 0.7, 0.6, 0.5], 0.5)
    return log


@pytest.fixture(scope="module")
def place_map() -> PlaceMap:
    return line_map()


@pytest.fixture(scope="module")
def truth() -> GroundTruth:
    return query_truth()


@pytest.fixture(scope="module")
def evaluation(place_map, truth) -> Evaluation:
    return evaluate(place_map, truth, answer_log(truth).answers(), EvalSettings(threshold=0.5))


@pytest.fixture(scope="module")
def raw_evaluation(place_map, truth) -> Evaluation:
    answers = answer_log(truth, "negative_sad").answers()
    return evaluate(place_map, truth, answers, EvalSettings(threshold=None))


@pytest.fixture(scope="module")
def written(tmp_path_factory, evaluation, place_map) -> Path:
    """One report, for the tests that only read it (six figures take about a second)."""
    return write_report(
        tmp_path_factory.mktemp("written") / "report", evaluation, place_map, RUN, False
    ).parent


def hidden_siblings(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.parent.iterdir() if p.name.startswith("."))


def assert_same(loaded, value, where: str = "report") -> None:
    """report.json's ``loaded`` holds ``value``: same keys and lengths, equal numbers, null for NaN."""
    if isinstance(value, dict):
        assert sorted(loaded) == sorted(str(k) for k in value), where
        for key, item in value.items():
            assert_same(loaded[str(key)], item, f"{where}.{key}")
    elif isinstance(value, list | tuple | np.ndarray):
        assert isinstance(loaded, list) and len(loaded) == len(value), where
        for i, (a, b) in enumerate(zip(loaded, value)):
            assert_same(a, b, f"{where}[{i}]")
    elif value is None or (isinstance(value, float | np.floating) and not math.isfinite(value)):
        assert loaded is None, where
    elif isinstance(value, bool | np.bool_):
        assert loaded is bool(value), where
    elif isinstance(value, int | float | np.number):
        assert type(loaded) in (int, float) and loaded == value, where
    else:
        assert loaded == value, where


# ---------------------------------------------------------------------- metrics, counted by hand


def test_metrics_on_a_hand_built_run(evaluation):
    r = evaluation.report
    assert r["frames"] == {
        "images_in_bag": 15,
        "with_ground_truth": 13,
        "without_ground_truth": 2,
        "answered": 12,
        "dropped": 1,
        "answers_without_ground_truth": 1,
        "on_route": 8,  # q0-q7; q8 faces back, q9-q11 are far off
        "off_route": 4,
    }
    assert r["settings"]["ns"] == [1, 5]  # 10 and 20 exceed the 5 results per query
    # By distance and heading: top-1 correct for q0, q4, q5, q6, q7; within 5 also q1, q2.
    assert r["recall"]["distance_and_heading"] == {"at": {"1": 5 / 8, "5": 7 / 8}, "queries": 8}
    # By distance alone q8 (facing back, 1.1 m from its top-1) is on the route and correct.
    assert r["recall"]["distance"] == {"at": {"1": 6 / 9, "5": 8 / 9}, "queries": 9}
    # Top-1 errors of the on-route queries: 1.12 m (x5), 59, 39, 31 m.
    accuracy = dict(zip(r["localization"]["thresholds_m"], r["localization"]["accuracy"]))
    assert (accuracy[1.0], accuracy[2.0], accuracy[30.0], accuracy[35.0], accuracy[50.0]) == (
        0.0,
        5 / 8,
        5 / 8,
        6 / 8,
        7 / 8,
    )
    spacing = {row["spacing_m"]: row for row in r["spacing"]}
    assert sorted(spacing) == [2.0, 5.0, 10.0, 20.0]  # as built (median 2 m) and thinned
    assert spacing[2.0]["accuracy"] == 5 / 8 and spacing[2.0]["found_in_top_k"] == 1.0
    # Thinned to 5 m the map keeps keyframes 0, 3, ..., 39; the first kept results are
    # q0: 30 (wrong), q1: 6, q2: 30 (wrong), q3: 0 (wrong), q4: 21, q5: 24, q6: 30, q7: 36.
    assert spacing[5.0]["keyframes"] == 14 and spacing[5.0]["accuracy"] == 5 / 8

    unknown = r["unknown_place"]
    assert (unknown["on_route_queries"], unknown["off_route_queries"]) == (8, 4)
    # At 0.5: accepted q0, q1, q2, q5, q6, q7, q8, q10; true positives q0, q5, q6, q7.
    configured = unknown["configured"]
    assert configured["accepted"] == 8 and configured["false_accepts"] == 4
    assert configured["precision"] == 0.5 and configured["recall"] == 0.5 and configured["f1"] == 0.5
    assert configured["on_route_accepted"] == 6 / 8
    assert configured["off_route_refused"] == 2 / 4  # q9 and q11 refused, q8 and q10 accepted
    # By score: q5 q0 q6 (TP) q1 q8 q2 (no) q7 (TP) q10 q3 (no) q4 (TP) q9 q11 (no).
    assert unknown["average_precision"] == pytest.approx((1 + 1 + 1 + 4 / 7 + 5 / 10) / 8)
    best = unknown["best"]
    assert best["threshold"] == pytest.approx(0.40) and best["f1"] == pytest.approx(2 * 0.5 * 0.625 / 1.125)
    assert (best["precision"], best["recall"]) == (0.5, 0.625)

    estimates = r["pose_estimates"]
    assert estimates["queries"] == 6  # on route and accepted: q0, q1, q2, q5, q6, q7
    top1 = estimates["rows"][0]
    assert top1["method"] == "top1" and top1["within_m"]["2"] == 4 / 6
    assert top1["median_error_m"] == pytest.approx(math.hypot(1, 0.5))
    assert set(evaluation.estimate_errors) == {"top1"} | {f"knn sigma={s:g} m" for s in (1, 2, 5, 10, 20)}

    latency = r["latency_ms"]  # 10 .. 21 ms for q0 .. q11; the answer without ground truth is not counted
    assert latency["frames"] == 12 and latency["p50"] == pytest.approx(15.5)

    q = evaluation.queries
    assert {len(column) for column in q.values()} == {13}
    assert q["answered"].tolist() == [True] * 12 + [False]
    assert q["accepted"].tolist() == [s is not None and s >= 0.5 for *_, s in QUERIES]
    assert q["top1_id"][12] == -1 and math.isnan(q["top1_error_m"][12])


# ---------------------------------------------------------------------- writing the report


def test_write_report_writes_every_file(written):
    out, md = written, written / "report.md"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        {"report.json", "queries.csv", "report.md"} | FIGURES
    )
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    text = md.read_text()
    for name in FIGURES:
        assert f"]({name})" in text
    assert "| recall@1 | 66.7 % | 62.5 % |" in text
    assert "kNN, sigma 5 m" in text and "Best-F1 threshold: 0.4" in text
    assert hidden_siblings(out) == []


def test_report_json_round_trips_the_evaluation(written, tmp_path, evaluation, place_map):
    loaded = json.loads((written / "report.json").read_text())
    assert loaded["schema"] == REPORT_SCHEMA and loaded["run"] == RUN
    assert_same({k: v for k, v in loaded.items() if k not in ("schema", "run")}, evaluation.report)

    broken = Evaluation(
        {**evaluation.report, "map": {"keyframes": 40, "median_spacing_m": np.float64("nan")}},
        evaluation.queries,
        evaluation.estimate_errors,
    )
    write_report(tmp_path / "nan", broken, place_map, RUN, overwrite=False)
    text = (tmp_path / "nan" / "report.json").read_text()
    assert json.loads(text)["map"] == {"keyframes": 40, "median_spacing_m": None}
    assert "NaN" not in text and "Infinity" not in text


def test_queries_csv_has_one_row_per_frame(written, evaluation):
    header, *rows = (written / "queries.csv").read_text().splitlines()
    assert header.split(",") == list(evaluation.queries)
    assert len(rows) == 13
    table = {name: [row.split(",")[i] for row in rows] for i, name in enumerate(header.split(","))}
    assert [int(s) for s in table["stamp_ns"]] == evaluation.queries["stamp_ns"].tolist()
    assert table["answered"] == ["1"] * 12 + ["0"]
    assert float(table["top1_score"][0]) == pytest.approx(0.9) and table["top1_error_m"][12] == "nan"


def test_check_report_dir_refuses_what_it_must_not_replace(tmp_path, evaluation, place_map):
    out = tmp_path / "report"
    check_report_dir(out, overwrite=False)  # missing: fine
    write_report(out, evaluation, place_map, RUN, overwrite=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(InputError, match="not empty") as refused:
        check_report_dir(out, overwrite=False)
    assert str(out) in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(InputError, match="not empty"):
        write_report(out, evaluation, place_map, RUN, overwrite=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a vpr_ros report"):
        check_report_dir(notes, overwrite=True)
    with pytest.raises(InputError, match="not a vpr_ros report"):
        write_report(notes, evaluation, place_map, RUN, overwrite=True)
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]

    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        check_report_dir(tmp_path / "file", overwrite=True)
    (tmp_path / "empty").mkdir()
    check_report_dir(tmp_path / "empty", overwrite=False)  # holds nothing to lose


def test_overwrite_replaces_the_report(tmp_path, evaluation, raw_evaluation, place_map):
    out = tmp_path / "report"
    write_report(out, evaluation, place_map, RUN, overwrite=False)
    check_report_dir(out, overwrite=True)
    write_report(out, raw_evaluation, place_map, {**RUN, "model": None}, overwrite=True)
    assert json.loads((out / "report.json").read_text())["settings"]["score"] == "negative_sad"
    assert not (out / "pose_error.png").exists()  # the old report's figures went with it
    assert hidden_siblings(out) == []


def test_a_failure_while_writing_leaves_the_old_report(tmp_path, evaluation, place_map, monkeypatch):
    out = tmp_path / "report"
    write_report(out, evaluation, place_map, RUN, overwrite=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setitem(plots.FIGURES, "trajectory.png", crash)
    with pytest.raises(OSError, match="simulated"):
        write_report(out, evaluation, place_map, {**RUN, "mode": "replay"}, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert hidden_siblings(out) == []


def test_summary_names_recall_and_the_report(tmp_path, evaluation):
    text = summary({"run": RUN, **evaluation.report}, tmp_path / "report")
    assert "recall@1/5 (distance and heading): 0.625 / 0.875" in text
    assert "unknown place at threshold 0.5: precision 0.500, recall 0.500, off-route refused 50.0 %" in text
    assert "latency p50/p95/p99: 15.5" in text
    assert text.splitlines()[-1] == f"report: {tmp_path / 'report' / 'report.md'}"


def test_a_raw_pixel_report_has_no_pose_estimates_or_configured_threshold(
    tmp_path, raw_evaluation, place_map
):
    r = raw_evaluation.report
    assert r["pose_estimates"] is None and raw_evaluation.estimate_errors == {}
    assert r["unknown_place"]["configured"] is None and r["unknown_place"]["best"] is not None
    out = tmp_path / "runs" / "raw"  # missing parents are made
    md = write_report(out, raw_evaluation, place_map, {**RUN, "model": None}, overwrite=False)
    assert md == out / "report.md"
    assert {p.name for p in out.glob("*.png")} == FIGURES - {"pose_error.png"}
    text = (out / "report.md").read_text()
    assert "none (raw-pixel baseline)" in text
    assert "Not applicable: pose estimates need cosine similarities" in text
    assert "Configured threshold: not applicable" in text
    assert "unknown place at threshold" not in summary({"run": RUN, **r}, out)


def test_a_run_entirely_off_the_route_reports_its_refusals(tmp_path, place_map, truth):
    """Nothing to recall: no PR curve or average precision, but the refusals are the result."""
    away = replace(truth, positions=truth.positions + [0.0, 1000.0, 0.0])
    evaluation = evaluate(place_map, away, answer_log(away).answers(), EvalSettings(threshold=0.5))
    unknown = evaluation.report["unknown_place"]
    assert unknown["on_route_queries"] == 0 and unknown["average_precision"] is None
    assert unknown["configured"]["recall"] is None and unknown["best"] is None
    refused = unknown["configured"]["off_route_refused"]
    assert 0.0 < refused < 1.0
    out = tmp_path / "report"
    write_report(out, evaluation, place_map, RUN, overwrite=False)
    assert "pr_curve.png" not in {p.name for p in out.glob("*.png")}
    text = summary({"run": RUN, **evaluation.report}, out)
    assert f"precision 0.000, recall –, off-route refused {100 * refused:.1f} %" in text


def _cloud(rows: np.ndarray):
    """A PointCloud2-like object holding ``rows``, as rosbags hands recorded messages over."""
    from types import SimpleNamespace

    fields = [SimpleNamespace(name=name) for name in rows.dtype.names]
    return SimpleNamespace(
        fields=fields, point_step=rows.dtype.itemsize, is_bigendian=False, data=rows.tobytes(),
        width=len(rows), height=1,
    )  # fmt: skip


def test_match_tables_round_trip_with_filtered_rows_and_read_old_recordings():
    from vpr_ros.io import match_table

    positions, orientations = np.zeros((3, 3)), np.tile([0.0, 0.0, 0.0, 1.0], (3, 1))
    own = match_table.table_rows(
        np.array([4, 7, -1]), np.array([0.9, 0.8, 0.0]), positions, orientations, True
    )
    seq = match_table.table_rows(
        np.array([7, 4, 2]), np.array([0.85, 0.9, 0.7]), positions, orientations, True, True
    )
    rows = match_table.read_table(_cloud(np.concatenate([own, seq])))
    assert rows["filtered"].tolist() == [0, 0, 1, 1, 1] and rows["keyframe_id"].tolist() == [4, 7, 7, 4, 2]
    log = AnswerLog()
    log.add_match_table(5, rows[rows["filtered"] == 1])
    assert log.answers().ids[0].tolist() == [7, 4, 2]
    old_layout = np.dtype([(n, own.dtype.fields[n][0]) for n in own.dtype.names if n != "filtered"])
    recorded = np.zeros(2, old_layout)
    recorded["keyframe_id"], recorded["rank"] = [3, 1], [0, 1]
    read = match_table.read_table(_cloud(recorded))  # a table recorded before the sequence filter
    assert read["keyframe_id"].tolist() == [3, 1] and not read["filtered"].any()
    with pytest.raises(InputError, match="not a vpr_ros match table"):
        match_table.read_table(_cloud(np.zeros(2, [("x", "<f4")])))
