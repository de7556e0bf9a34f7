"""``vpr-bench``: score a model bundle (or raw pixels) on public image-folder place recognition sets.

Replay evaluation (``vpr-eval``) needs a recorded run with poses and a map of the site; the
public VPR test sets (VPR-Bench's ESSEX3IN1, SPEDTest, Nordland, ...) are folders of query and
reference images with index ground truth (:mod:`vpr_ros.evaluation.image_folders`). This tool
scores a bundle on them the way the literature does - every query against all references, exact
search - so its numbers compare with published ones and with the raw-pixel floor:

- **recall@N** (N = 1, 5, 10, 20): share of the queries with a match whose first N results hold
  one of their matches; with fewer than N references, recall@N is recall@(all references).
- **precision-recall** of accepting a query's top-1 by its score (cosine similarity; for raw
  pixels minus the SAD per pixel): a true positive is an accepted query whose top-1 is a match,
  and a query without any match (a distractor) only costs precision when accepted. It is the
  replay report's unknown-place curve computed by the same function
  (:func:`vpr_ros.evaluation.metrics.precision_recall`), so its best-F1 threshold means what
  ``search.similarity_threshold`` means on the robot.

With ``--out`` every dataset gets ``report.json`` (schema :data:`REPORT_SCHEMA`), ``report.md``,
``queries.csv``, ``pr_curve.png`` and ``examples.png`` (a few queries with their top-3, framed
green or red) in ``OUT/<dataset>/``, next to ``summary.md`` and ``summary.json``. The whole folder
is written in a hidden staging directory and renamed into place at the end (as the replay
report), after every input was checked and before any image was embedded; an error or Ctrl-C
leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import cv2
import faiss
import numpy as np
from tqdm import tqdm

from vpr_ros.backends import BACKENDS, create_backend
from vpr_ros.bundle import default_model_dir, load_bundle
from vpr_ros.cli import integer_at_least, run
from vpr_ros.errors import InputError
from vpr_ros.evaluation import plots, raw_pixels
from vpr_ros.evaluation.image_folders import Dataset, read_dataset, read_image
from vpr_ros.evaluation.metrics import precision_recall
from vpr_ros.evaluation.report import _plain, markdown_table, number
from vpr_ros.io.fileio import (
    check_replaceable,
    has_schema,
    replace_directory,
    staging_directory,
    sweep_leftovers,
)
from vpr_ros.localization.sequence_filter import (
    KeyframeGraph,
    Motion,
    SequenceFilter,
    SequenceSettings,
    cosine_scorer,
)

REPORT_SCHEMA = "vpr_ros.bench_report/1"
SUMMARY_SCHEMA = "vpr_ros.bench_summary/1"
REPORT_JSON, REPORT_MD, QUERIES_CSV = "report.json", "report.md", "queries.csv"
PR_PNG, EXAMPLES_PNG = "pr_curve.png", "examples.png"
SUMMARY_JSON, SUMMARY_MD = "summary.json", "summary.md"
NS = (1, 5, 10, 20)
TOP_K = 20  # recall@20 needs 20 results
EXAMPLE_QUERIES, EXAMPLE_RESULTS = 8, 3
EXAMPLE_SIDE = 240  # example tiles are shrunk to at most this many pixels on their longer side
SCORES = {
    "cosine": "cosine similarity of the model's descriptors",
    "negative_sad": "minus the SAD per pixel of patch-normalised 24x32 grey thumbnails (raw pixels)",
}

DESCRIPTION = """\
Score a model bundle (or the raw-pixel baseline) on image-folder place recognition datasets:
each DATASET folder holds query/ and ref/ images and optionally VPR-Bench's ground_truth.npy or
ground_truth_new.npy (without one, query i matches references i-N..i+N, --tolerance N). Every
query is searched against all references: recall@1/5/10/20, the precision-recall curve of
accepting the top-1 by its score, average precision and the best-F1 threshold."""

EPILOG = """\
examples:
  vpr-bench data/sped data/essex3in1 --model default --out reports/bench
  vpr-bench data/nordland --baseline raw-pixels --tolerance 1
exit status: 0 done, 2 bad input (one line on stderr, nothing written), 130 interrupted."""


# ---------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """What turns images into descriptors and how they are compared: ``embed`` maps a list of RGB
    uint8 images to descriptors [n, D]; ``score`` is ``cosine`` (inner product of L2-normalised
    descriptors) or ``negative_sad``. ``model``, ``baseline`` and ``backend`` go into report.json."""

    score: str
    embed: Callable[[list[np.ndarray]], np.ndarray]
    model: dict | None
    baseline: str | None
    backend: str | None
    batch_size: int = 32
    quiet: bool = False


def model_method(
    model: Path | str, backend: str = "auto", batch_size: int = 32, quiet: bool = False
) -> Method:
    """A model bundle (``default``: the shipped one) on the first ``backend`` that works here."""
    bundle = load_bundle(default_model_dir() if str(model) == "default" else Path(model))
    engine = create_backend(bundle, backend, max_batch=batch_size)
    info = {"dir": str(bundle.path), "summary": bundle.summary(), "content_hash": bundle.content_hash}
    return Method("cosine", engine.embed, info, None, engine.describe(), batch_size, quiet)


def raw_pixel_method(batch_size: int = 32, quiet: bool = False) -> Method:
    """The raw-pixel floor (:mod:`vpr_ros.evaluation.raw_pixels`), scored as ``vpr-eval`` does."""
    return Method(
        "negative_sad", raw_pixels.raw_pixel_descriptors, None, "raw-pixels", None, batch_size, quiet
    )


def search(score: str, refs: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of every query among all references: (scores [Q, k], reference ids [Q, k]),
    best first, higher scores more similar."""
    if score == "cosine":
        index = faiss.IndexFlatIP(refs.shape[1])
        index.add(np.ascontiguousarray(refs, dtype=np.float32))
        sims, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return sims, ids.astype(np.int64)
    sad, ids = raw_pixels.sad_search(refs, queries, k)
    return -sad / refs.shape[1], ids


def describe(method: Method, paths: Sequence[Path], what: str) -> tuple[np.ndarray, float]:
    """Descriptors of the images at ``paths``, read ``batch_size`` at a time; and the seconds spent
    embedding (image reading excluded)."""
    parts, seconds = [], 0.0
    with tqdm(total=len(paths), unit="img", desc=what, disable=method.quiet, dynamic_ncols=True) as bar:
        for start in range(0, len(paths), method.batch_size):
            images = [read_image(p) for p in paths[start : start + method.batch_size]]
            started = time.perf_counter()
            parts.append(method.embed(images))
            seconds += time.perf_counter() - started
            bar.update(len(images))
    return np.concatenate(parts), seconds


# ---------------------------------------------------------------------- metrics


def correct_results(ids: np.ndarray, matches: Sequence[np.ndarray]) -> np.ndarray:
    """bool [Q, k]: is result j of query i one of its matches."""
    return np.array([np.isin(row, m) for row, m in zip(ids, matches)], dtype=bool).reshape(ids.shape)


def retrieval_metrics(correct: np.ndarray, top_score: np.ndarray, has_match: np.ndarray) -> dict:
    """``recall`` (over the queries with a match; None for every N when none has one) and
    ``precision_recall`` (every query; one without a match should be refused) of one dataset."""
    positives = int(has_match.sum())
    at = {str(n): float(correct[has_match, :n].any(axis=1).mean()) if positives else None for n in NS}
    return {
        "recall": {"queries": positives, "at": at},
        "precision_recall": precision_recall(top_score, correct[:, 0], positives),
    }


@dataclass(frozen=True)
class BenchResult:
    """One dataset's ``report`` (report.json's content, JSON-ready) and the ranked results behind
    it: reference ids and scores [Q, k], best first, and which of them are correct."""

    dataset: Dataset
    report: dict
    ids: np.ndarray
    scores: np.ndarray
    correct: np.ndarray


# Ordered image folders (one route, frames evenly spaced): SeqSLAM's velocity range in references
# per query frame and its 10-reference contrast window, with a quarter of the standardised
# similarity to the whole folder (0.955 at length 20 on nordland_a, 0.940 without); chosen there.
FOLDER_SEQUENCE = SequenceSettings(
    decay=1.0,
    min_speed=0.8,
    max_speed=1.25,
    speeds=5,
    snap_radius_m=0.5,
    contrast_radius_m=5.0,
    exclusion_radius_m=3.0,
    tracked=30,
    min_frames=2,
    global_weight=0.25,
)


def sequence_ranking(
    method: Method,
    refs: np.ndarray,
    queries: np.ndarray,
    ids: np.ndarray,
    scores: np.ndarray,
    settings: SequenceSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """The sequence filter run over the queries in their order against the references as one
    ordered route: (ranked reference ids [Q, k], -1 where the list is shorter, and its confidence
    per query), as :meth:`SequenceFilter.ranked_answer` lists the place the filter chose."""
    filt = SequenceFilter(KeyframeGraph.chain(len(refs)), settings)
    ranked = np.empty_like(ids)
    confidence = np.empty(len(queries))
    for t, query in enumerate(queries):
        score = cosine_scorer(refs, query) if method.score == "cosine" else raw_pixels.sad_scorer(refs, query)
        answer = filt.update(ids[t], scores[t], score, Motion.unknown())
        ranked[t], answer_scores = filt.ranked_answer(answer, ids[t], score)
        confidence[t] = answer_scores[0]
    return ranked, confidence


def evaluate(dataset: Dataset, method: Method, sequence: SequenceSettings | None = None) -> BenchResult:
    """Embed the references and queries of ``dataset``, search, and compute its report (with
    ``sequence``, also the sequence filter's, over the queries in their order)."""
    refs, ref_seconds = describe(method, dataset.refs, f"{dataset.name} references")
    queries, query_seconds = describe(method, dataset.queries, f"{dataset.name} queries")
    k = min(TOP_K, len(dataset.refs))
    scores, ids = search(method.score, refs, queries, k)
    correct = correct_results(ids, dataset.matches)
    has_match = dataset.has_match
    images = len(dataset.refs) + len(dataset.queries)
    report = {
        "schema": REPORT_SCHEMA,
        "run": {
            "dataset": None if dataset.path is None else str(dataset.path),
            "name": dataset.name,
            "model": method.model,
            "baseline": method.baseline,
            "backend": method.backend,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "ground_truth": dataset.ground_truth,
            "tolerance": dataset.tolerance,
            "notes": list(dataset.notes),
        },
        "settings": {"score": method.score, "k": k},
        "images": {
            "queries": len(dataset.queries),
            "references": len(dataset.refs),
            "queries_with_match": int(has_match.sum()),
        },
        **retrieval_metrics(correct, scores[:, 0], has_match),
        "latency_ms": {"embed_per_image": 1e3 * (ref_seconds + query_seconds) / images},
    }
    if sequence is not None:
        ranked, confidence = sequence_ranking(method, refs, queries, ids, scores, sequence)
        report["sequence"] = {
            "settings": {
                "length": sequence.length,
                "speeds_refs_per_frame": [sequence.min_speed, sequence.max_speed],
            },
            **retrieval_metrics(correct_results(ranked, dataset.matches), confidence, has_match),
        }
    return BenchResult(dataset, _plain(report), ids, scores, correct)


# ---------------------------------------------------------------------- output


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an ``out`` that cannot or should not be replaced: a file, a
    non-empty directory without ``overwrite`` and - even with it - one that is not a vpr-bench
    output. Leftovers of killed writers are swept first."""
    out = Path(out).expanduser()
    sweep_leftovers(out.absolute())
    check_replaceable(out, overwrite, _is_bench_output, f"output directory {out}", "vpr-bench output")


def _is_bench_output(directory: Path) -> bool:
    return has_schema(directory, SUMMARY_JSON, SUMMARY_SCHEMA.split("/")[0])


def check_names(datasets: Sequence[Dataset]) -> None:
    """Every dataset needs its own OUT/<name>/ folder."""
    seen: dict[str, Dataset] = {}
    for dataset in datasets:
        if not dataset.name or dataset.name in (SUMMARY_JSON, SUMMARY_MD) or dataset.name.startswith("."):
            raise InputError(
                f"dataset {dataset.path or dataset.name}: the name {dataset.name!r} is not usable"
            )
        if dataset.name in seen:
            first = seen[dataset.name].path or dataset.name
            raise InputError(
                f"datasets {first} and {dataset.path or dataset.name} have the same name "
                f"{dataset.name!r}; their results would share a folder"
            )
        seen[dataset.name] = dataset


def write_outputs(out: Path, results: Sequence[BenchResult], overwrite: bool) -> Path:
    """Write OUT (see the module doc) atomically; returns OUT/summary.md."""
    out = Path(out).expanduser().absolute()
    check_output_dir(out, overwrite)  # again: the disk may have changed while the images were embedded
    out.parent.mkdir(parents=True, exist_ok=True)
    with staging_directory(out) as staging:
        for result in results:
            folder = staging / result.dataset.name
            folder.mkdir()
            _write_json(folder / REPORT_JSON, result.report)
            (folder / QUERIES_CSV).write_text(_queries_csv(result), encoding="utf-8")
            title = f"{result.dataset.name}: accepting the top-1 by its score"
            figures = {
                PR_PNG: plots.precision_recall_curve(
                    result.report["precision_recall"], title, folder / PR_PNG
                ),
                EXAMPLES_PNG: plots.example_matches(
                    _example_rows(result),
                    f"{result.dataset.name}: top-{EXAMPLE_RESULTS}",
                    folder / EXAMPLES_PNG,
                ),
            }
            drawn = [name for name, done in figures.items() if done]
            (folder / REPORT_MD).write_text(_report_markdown(result.report, drawn), encoding="utf-8")
        _write_json(staging / SUMMARY_JSON, _summary_json(results))
        (staging / SUMMARY_MD).write_text(
            "\n".join(
                ["# vpr-bench", "", _method_line(results[0].report["run"]), "", *summary_table(results)]
            ),
            encoding="utf-8",
        )
        replace_directory(staging, out)
    return out / SUMMARY_MD


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _relative(path: Path, dataset: Dataset) -> str:
    """A file's path inside its dataset folder (the full path for a dataset made from lists)."""
    if dataset.path is not None and path.is_relative_to(dataset.path):
        return path.relative_to(dataset.path).as_posix()
    return str(path)


def _queries_csv(result: BenchResult) -> str:
    """One row per query: its file, the top-1 reference and score, whether it is correct, and the
    rank (1-based) of the first correct result in the top k (empty when none is)."""
    d = result.dataset
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["query", "has_match", "top1_ref", "top1_score", "correct", "first_correct_rank"])
    for q, (ids, scores, correct) in enumerate(zip(result.ids, result.scores, result.correct)):
        rank = str(int(correct.argmax()) + 1) if correct.any() else ""
        row = [_relative(d.queries[q], d), int(d.matches[q].size > 0), _relative(d.refs[ids[0]], d)]
        writer.writerow([*row, f"{scores[0]:.9g}", int(correct[0]), rank])
    return buffer.getvalue()


def example_queries(n_queries: int, count: int = EXAMPLE_QUERIES) -> np.ndarray:
    """``count`` query indices spread evenly over the set, first and last included."""
    return np.unique(np.linspace(0, n_queries - 1, min(count, n_queries)).round().astype(np.int64))


def _tile_image(path: Path) -> np.ndarray:
    image = read_image(path)
    scale = EXAMPLE_SIDE / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _example_rows(result: BenchResult) -> list[list[plots.Tile]]:
    d = result.dataset
    rows = []
    for q in example_queries(len(d.queries)):
        caption = f"query {d.queries[q].name}" + ("" if d.matches[q].size else "\n(no match)")
        row = [plots.Tile(_tile_image(d.queries[q]), caption)]
        for j in range(min(EXAMPLE_RESULTS, result.ids.shape[1])):
            ref = d.refs[result.ids[q, j]]
            caption = f"{ref.name}\n{result.scores[q, j]:.3f}"
            row.append(plots.Tile(_tile_image(ref), caption, bool(result.correct[q, j])))
        rows.append(row)
    return rows


def _method_line(run: dict) -> str:
    model = run["model"]
    if model is None:
        return f"Method: raw-pixel baseline ({SCORES['negative_sad']})."
    return (
        f"Model: {model['summary']} (`{model['content_hash'][:19]}…`, {model['dir']}), "
        f"backend {run['backend']}."
    )


def _report_markdown(report: dict, figures: list[str]) -> str:
    run, images, pr = report["run"], report["images"], report["precision_recall"]
    lines = [
        f"# vpr-bench: {run['name']}",
        "",
        _method_line(run),
        "",
        f"Dataset `{run['dataset']}`: {images['queries']} queries "
        f"({images['queries_with_match']} with a match among the references), "
        f"{images['references']} references; ground truth: {run['ground_truth']}. "
        f"Scores: {SCORES[report['settings']['score']]}; {report['settings']['k']} results per query. "
        f"Created {run['created']}.",
        "",
        *(f"Note: {note}." for note in run["notes"]),
        "" if run["notes"] else None,
        "## Retrieval",
        "",
        *markdown_table(
            ["N", f"recall@N ({report['recall']['queries']} queries with a match)"],
            [[str(n), number(r, ".3f")] for n, r in report["recall"]["at"].items()],
        ),
        "## Precision-recall",
        "",
        "A query is accepted when its top-1 score reaches the threshold; accepted with a correct top-1 "
        "is a true positive, and an accepted query without a match costs precision.",
        "",
        f"Average precision {number(pr['average_precision'], '.3f')}.",
        "",
    ]
    best = pr["best"]
    if best is not None:
        lines += [
            f"Best-F1 threshold: {best['threshold']:.4g} (precision {best['precision']:.3f}, "
            f"recall {best['recall']:.3f}, F1 {best['f1']:.3f}).",
            "",
        ]
    if PR_PNG in figures:
        lines += [f"![precision vs recall]({PR_PNG})", ""]
    if EXAMPLES_PNG in figures:
        lines += [
            "## Examples",
            "",
            f"Each row: a query and its top-{EXAMPLE_RESULTS} references (green: correct, red: wrong), "
            "scores above.",
            "",
            f"![example matches]({EXAMPLES_PNG})",
            "",
        ]
    return "\n".join(line for line in lines if line is not None)


def summary_table(results: Sequence[BenchResult]) -> list[str]:
    """The markdown table of every dataset (and their mean recall@1 when there are several)."""
    header = ["dataset", "queries (with match) / refs", *(f"R@{n}" for n in NS), "AP", "best-F1 threshold"]
    sequence = [r.report.get("sequence") for r in results]
    if any(sequence):
        header.append(f"R@1 sequence of {next(s for s in sequence if s)['settings']['length']}")
    rows = []
    for result in results:
        r, images = result.report, result.report["images"]
        best = r["precision_recall"]["best"]
        rows.append(
            [
                result.dataset.name,
                f"{images['queries']} ({images['queries_with_match']}) / {images['references']}",
                *(number(r["recall"]["at"][str(n)], ".3f") for n in NS),
                number(r["precision_recall"]["average_precision"], ".3f"),
                number(None if best is None else best["threshold"], ".4g"),
                *([number(r["sequence"]["recall"]["at"]["1"], ".3f")] if any(sequence) else []),
            ]
        )
    if len(results) > 1:
        rows.append(["mean", "", number(_mean_recall_at_1(results), ".3f"), *[""] * (len(header) - 3)])
    return markdown_table(header, rows)


def _mean_recall_at_1(results: Sequence[BenchResult]) -> float | None:
    values = [r.report["recall"]["at"]["1"] for r in results if r.report["recall"]["at"]["1"] is not None]
    return float(np.mean(values)) if values else None


def _summary_json(results: Sequence[BenchResult]) -> dict:
    run = results[0].report["run"]
    return {
        "schema": SUMMARY_SCHEMA,
        "run": {key: run[key] for key in ("model", "baseline", "backend", "created")},
        "datasets": [
            {
                "name": r.dataset.name,
                "report": f"{r.dataset.name}/{REPORT_JSON}",
                "images": r.report["images"],
                "recall": r.report["recall"],
                "average_precision": r.report["precision_recall"]["average_precision"],
                "best": r.report["precision_recall"]["best"],
            }
            for r in results
        ],
        "mean_recall_at_1": _mean_recall_at_1(results),
    }


# ---------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpr-bench",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("datasets", nargs="+", type=Path, metavar="DATASET", help="dataset folder")
    parser.add_argument("--model", help="model bundle directory, or 'default' for the shipped one")
    parser.add_argument(
        "--baseline", choices=("raw-pixels",), help="evaluate raw-pixel matching instead of a model"
    )
    parser.add_argument(
        "--tolerance",
        type=integer_at_least(0),
        default=0,
        metavar="N",
        help="without a ground-truth file, query i matches references i-N..i+N (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, help="write reports and figures here (default: table only)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing vpr-bench output at --out"
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="inference backend (default: auto)"
    )
    parser.add_argument(
        "--batch-size",
        type=integer_at_least(1),
        default=32,
        metavar="B",
        help="images per batch (default: %(default)s)",
    )
    parser.add_argument(
        "--sequence-length",
        type=integer_at_least(1),
        metavar="L",
        help="also score the sequence filter over the last L frames, queries and references taken as "
        "one ordered route (frame order as the motion, no odometry)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    interrupted = "interrupted" if args.out is None else f"interrupted; nothing written to {args.out}"
    return run(lambda: _bench(args), interrupted)


def _bench(args: argparse.Namespace) -> str:
    if (args.model is None) == (args.baseline is None):
        raise InputError(
            "pass either --model BUNDLE (or --model default) or --baseline raw-pixels (exactly one of them)"
        )
    datasets = [read_dataset(folder, args.tolerance) for folder in args.datasets]
    check_names(datasets)
    if args.out is not None:
        check_output_dir(args.out, args.overwrite)
    if args.model is not None:
        method = model_method(args.model, args.backend, args.batch_size, args.quiet)
    else:
        method = raw_pixel_method(args.batch_size, args.quiet)
    sequence = None if args.sequence_length is None else replace(FOLDER_SEQUENCE, length=args.sequence_length)
    results = [evaluate(dataset, method, sequence) for dataset in datasets]
    lines = [*summary_table(results), *(f"note ({d.name}): {note}" for d in datasets for note in d.notes)]
    if args.out is not None:
        lines.append(f"report: {write_outputs(args.out, results, args.overwrite)}")
    return "\n".join(lines).rstrip("\n")


if __name__ == "__main__":
    sys.exit(main())
