"""vpr-bench: image-folder datasets read safely, metrics counted by hand, the report on disk, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vpr_ros.errors import InputError
from vpr_ros.evaluation.bench import evaluate, main, raw_pixel_method
from vpr_ros.evaluation.image_folders import Dataset, list_images, read_dataset, read_ground_truth


def pattern(seed: int) -> np.ndarray:
    """A distinct 48x64 RGB place: random 6x8 blocks, so resizing keeps it recognisable."""
    blocks = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return cv2.resize(blocks, (64, 48), interpolation=cv2.INTER_NEAREST)


def noisy(image: np.ndarray, amplitude: int, seed: int) -> np.ndarray:
    if amplitude == 0:
        return image.copy()
    noise = np.random.default_rng(seed).integers(-amplitude, amplitude + 1, image.shape)
    return np.clip(image.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def make_folder(root: Path, refs: list[np.ndarray], queries: list[np.ndarray], ext: str = ".png") -> Path:
    for sub, images in (("ref", refs), ("query", queries)):
        (root / sub).mkdir(parents=True)
        for i, image in enumerate(images):
            cv2.imwrite(str(root / sub / f"{i}{ext}"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return root


def save_object_gt(path: Path, rows: list) -> None:
    array = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        array[i] = row
    np.save(path, array, allow_pickle=True)


REFS = [pattern(100 + i) for i in range(5)]


@pytest.fixture
def hand_counted(tmp_path: Path) -> Path:
    """5 references; q0 = ref0 exactly, q1 = ref1 with a little noise, q2 = ref4 with more noise
    but its ground truth says ref2 (top-1 wrong), q3 a place not among the references."""
    queries = [REFS[0], noisy(REFS[1], 4, 1), noisy(REFS[4], 12, 2), pattern(999)]
    folder = make_folder(tmp_path / "hand", REFS, queries)
    save_object_gt(folder / "ground_truth.npy", [[0, [0]], [1, np.array([1])], [2, [2]], [3, []]])
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------- reading folders


def test_images_are_listed_in_natural_order_any_case(tmp_path):
    for name in ("10.jpg", "2.JPG", "1.png", "img3.jpeg", "notes.txt", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["1.png", "2.JPG", "10.jpg", "img3.jpeg"]


def test_both_ground_truth_forms_and_precedence(tmp_path):
    # a VPR-Bench object array: rows as lists or arrays, references as a scalar, list or array
    folder = make_folder(tmp_path / "gt", REFS[:3], [REFS[2], REFS[0], REFS[1]])
    save_object_gt(
        folder / "ground_truth.npy", [[0, 2], [np.int64(1), [0]], np.array([2, [1, 2]], dtype=object)]
    )
    d = read_dataset(folder)
    assert d.ground_truth == "ground_truth.npy" and d.tolerance is None
    assert [m.tolist() for m in d.matches] == [[2], [0], [1, 2]]
    # ground_truth_new.npy wins over ground_truth.npy; a plain integer [Q, 2] array is read too
    np.save(folder / "ground_truth_new.npy", np.array([[0, 0], [1, 1], [2, 2]]))
    d = read_dataset(folder)
    assert d.ground_truth == "ground_truth_new.npy"
    assert [m.tolist() for m in d.matches] == [[0], [1], [2]]


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = make_folder(tmp_path / "evil", REFS[:2], REFS[:2])
    save_object_gt(folder / "ground_truth.npy", [[0, [0]], [1, Exploit()]])
    with pytest.raises(InputError, match=r"refusing to unpickle io\.open") as info:
        read_dataset(folder)
    assert "\n" not in str(info.value) and not marker.exists()
    # a header that is not one
    (folder / "ground_truth.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00" + b"x" * 118)
    with pytest.raises(InputError, match="ground truth"):
        read_ground_truth(folder / "ground_truth.npy", 2, 2)


def test_tolerance_mode_and_a_held_out_subset(tmp_path):
    """No ground-truth file: query i matches references i-tol..i+tol; counts that differ are noted."""
    folder = make_folder(tmp_path / "seq", REFS, [REFS[1], REFS[1], REFS[4]])
    method = raw_pixel_method(batch_size=2, quiet=True)
    strict = evaluate(read_dataset(folder), method).report
    assert strict["recall"]["at"]["1"] == pytest.approx(1 / 3)  # only q1 = ref1
    assert strict["run"]["tolerance"] == 0 and "3 queries but 5 references" in strict["run"]["notes"][0]
    loose = read_dataset(folder, tolerance=1)
    assert [m.tolist() for m in loose.matches] == [[0, 1], [0, 1, 2], [1, 2, 3]]
    assert evaluate(loose, method).report["recall"]["at"]["1"] == pytest.approx(2 / 3)  # q0 and q1
    held_out = loose.subset([1, 2], "seq_tail")
    assert [p.name for p in held_out.queries] == ["1.png", "2.png"] and len(held_out.refs) == 5
    assert held_out.ground_truth.endswith("queries 1..2")
    assert evaluate(held_out, method).report["recall"]["at"]["1"] == 0.5
    made = Dataset.from_lists("lists", held_out.queries, held_out.refs, [[1], []], "by hand")
    assert made.has_match.tolist() == [True, False]
    with pytest.raises(InputError, match="query 0 matches reference 5"):
        Dataset.from_lists("lists", held_out.queries, held_out.refs, [[5], []], "by hand")


# ---------------------------------------------------------------------- metrics and the report


def test_recall_and_precision_recall_counted_by_hand(hand_counted):
    report = evaluate(read_dataset(hand_counted), raw_pixel_method(quiet=True)).report
    assert report["images"] == {"queries": 4, "references": 5, "queries_with_match": 3}
    assert report["settings"] == {"score": "negative_sad", "k": 5}
    recall = report["recall"]
    assert recall["queries"] == 3  # the distractor q3 is not recalled
    # q2's match ref2 is among its 5 results; N beyond the 5 references is recall@5
    assert recall["at"] == {"1": pytest.approx(2 / 3), "5": 1.0, "10": 1.0, "20": 1.0}
    pr = report["precision_recall"]
    # scores fall q0 (exact) > q1 > q2 (noisier, wrong) > q3 (no match): accepting them one by one
    assert pr["curve"]["precision"] == pytest.approx([1.0, 1.0, 2 / 3, 2 / 4])
    assert pr["curve"]["recall"] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert pr["average_precision"] == pytest.approx(2 / 3)
    assert pr["best"]["f1"] == pytest.approx(0.8) and pr["best"]["threshold"] == pr["curve"]["threshold"][1]


def test_cli_writes_the_report_and_replaces_it_only_when_asked(tmp_path, hand_counted, capsys):
    other = make_folder(tmp_path / "other", REFS[:3], [REFS[2]])
    out = tmp_path / "bench"
    code, stdout, _ = run_cli(
        capsys, str(hand_counted), str(other), "--baseline", "raw-pixels", "--out", str(out)
    )
    assert code == 0
    assert "| hand | 4 (3) / 5 | 0.667 | 1.000 | 1.000 | 1.000 | 0.667 |" in stdout
    assert "| mean |  | 0.333 |" in stdout  # (2/3 + 0) / 2: other's query 0 shows ref 2
    assert "note (other): 1 queries but 3 references" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["hand", "other", "summary.json", "summary.md"]
    files = {"report.json", "report.md", "queries.csv", "pr_curve.png", "examples.png"}
    assert {p.name for p in (out / "hand").iterdir()} == files
    report = json.loads((out / "hand" / "report.json").read_text())
    assert report["schema"] == "vpr_ros.bench_report/1"
    assert report["run"]["baseline"] == "raw-pixels" and report["run"]["model"] is None
    assert report["run"]["ground_truth"] == "ground_truth.npy"
    assert report["recall"]["at"]["1"] == pytest.approx(2 / 3)
    assert report["precision_recall"]["average_precision"] == pytest.approx(2 / 3)
    rows = (out / "hand" / "queries.csv").read_text().splitlines()
    assert rows[0] == "query,has_match,top1_ref,top1_score,correct,first_correct_rank"
    assert rows[1].startswith("query/0.png,1,ref/0.png,") and rows[1].endswith(",1,1")
    assert rows[3].startswith("query/2.png,1,ref/4.png,")
    assert rows[3].split(",")[-2] == "0" and 2 <= int(rows[3].split(",")[-1]) <= 5  # ref2 further down
    assert rows[4].startswith("query/3.png,0,") and rows[4].endswith(",0,")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == "vpr_ros.bench_summary/1" and summary["mean_recall_at_1"] == pytest.approx(
        1 / 3
    )
    assert "![example matches](examples.png)" in (out / "hand" / "report.md").read_text()

    code, _, err = run_cli(capsys, str(other), "--baseline", "raw-pixels", "--out", str(out))
    assert code == 2 and "pass --overwrite" in err and (out / "hand").is_dir()
    code, _, _ = run_cli(capsys, str(other), "--baseline", "raw-pixels", "--out", str(out), "--overwrite")
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["other", "summary.json", "summary.md"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_the_shipped_model_runs_on_a_tiny_folder(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the model path needs it")
    folder = make_folder(
        tmp_path / "tiny", REFS[:3], [noisy(r, 4, i) for i, r in enumerate(REFS[:3])], ".jpg"
    )
    out = tmp_path / "bench"
    args = [
        str(folder),
        "--model",
        "default",
        "--backend",
        "onnxruntime",
        "--batch-size",
        "2",
        "--out",
        str(out),
    ]
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    report = json.loads((out / "tiny" / "report.json").read_text())
    assert report["settings"] == {"score": "cosine", "k": 3}
    assert report["run"]["model"]["content_hash"].startswith("sha256:")
    assert report["run"]["backend"].startswith("onnxruntime/")
    assert report["recall"]["at"]["20"] == 1.0  # 3 references: all of them are in the results
    assert 0.0 <= report["recall"]["at"]["1"] <= 1.0 and report["latency_ms"]["embed_per_image"] > 0
    assert "| tiny | 3 (3) / 3 |" in stdout


# ---------------------------------------------------------------------- refusals


def _corrupt(folder: Path, case: str) -> None:
    if case == "no query folder":
        for p in (folder / "query").iterdir():
            p.unlink()
        (folder / "query").rmdir()
    elif case == "no reference images":
        for p in (folder / "ref").iterdir():
            p.unlink()
        (folder / "ref" / "readme.txt").write_text("no images")
    elif case == "query out of range":
        save_object_gt(folder / "ground_truth.npy", [[0, [0]], [1, [1]], [7, [2]]])
    elif case == "reference out of range":
        save_object_gt(folder / "ground_truth.npy", [[0, [0]], [1, [9]], [2, [2]]])
    elif case == "query without a row":
        save_object_gt(folder / "ground_truth.npy", [[0, [0]], [1, [1]]])
    elif case == "duplicate row":
        save_object_gt(folder / "ground_truth.npy", [[0, [0]], [1, [1]], [1, [2]]])
    elif case == "undecodable image":
        (folder / "ref" / "1.png").write_bytes(b"not an image")


REFUSALS = {
    "missing folder": "not a directory",
    "no query folder": "has no query/ folder",
    "no reference images": "ref/ holds no images",
    "query out of range": "names query 7, but there are 3 queries",
    "reference out of range": "names reference 9, but there are 3 references",
    "query without a row": "1 of 3 queries have no row (first: query 2)",
    "duplicate row": "query 1 has more than one row",
    "undecodable image": "1.png: cannot be read or decoded",
}


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_datasets_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, case):
    folder = make_folder(tmp_path / "set", REFS[:3], REFS[:3])
    _corrupt(folder, case)
    target = tmp_path / "absent" if case == "missing folder" else folder
    out = tmp_path / "bench"
    code, stdout, err = run_cli(capsys, str(target), "--baseline", "raw-pixels", "--out", str(out))
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and REFUSALS[case] in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_command_lines_exit_2_before_any_work(tmp_path, capsys):
    one = make_folder(tmp_path / "a" / "set", REFS[:2], REFS[:2])
    two = make_folder(tmp_path / "b" / "set", REFS[:2], REFS[:2])
    code, _, err = run_cli(capsys, str(one))
    assert code == 2 and "exactly one of them" in err
    code, _, err = run_cli(capsys, str(one), "--model", "default", "--baseline", "raw-pixels")
    assert code == 2 and "exactly one of them" in err
    code, _, err = run_cli(capsys, str(one), str(two), "--baseline", "raw-pixels")
    assert code == 2 and "have the same name 'set'" in err and err.count("\n") == 1
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    code, _, err = run_cli(capsys, str(one), "--baseline", "raw-pixels", "--out", str(mine), "--overwrite")
    assert code == 2 and "is not a vpr-bench output" in err and (mine / "thesis.tex").exists()


def test_sequence_length_scores_an_ordered_route_above_single_frames(tmp_path, capsys):
    """A route of 60 places seen again faintly (30 % of each query is its place, the rest an
    unrelated scene): single frames often pick a wrong place; the sequence filter over the frame
    order recovers them, and the report gives both side by side."""
    refs = [pattern(500 + i) for i in range(60)]
    queries = [(0.3 * ref + 0.7 * pattern(2000 + i)).astype(np.uint8) for i, ref in enumerate(refs)]
    folder = make_folder(tmp_path / "route", refs, queries)
    dataset = read_dataset(folder, tolerance=1)
    single = evaluate(dataset, raw_pixel_method(quiet=True)).report
    code, out, _ = run_cli(
        capsys,
        str(folder),
        "--baseline",
        "raw-pixels",
        "--tolerance",
        "1",
        "--sequence-length",
        "10",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0
    assert "R@1 sequence of 10" in out
    report = json.loads((tmp_path / "out" / "route" / "report.json").read_text())
    assert report["recall"] == single["recall"]
    filtered = report["sequence"]["recall"]["at"]["1"]
    assert single["recall"]["at"]["1"] < 0.5
    assert filtered > 0.9
    assert report["sequence"]["settings"]["length"] == 10
