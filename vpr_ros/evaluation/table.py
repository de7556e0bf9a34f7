"""``python -m vpr_ros.evaluation.table REPORT_DIR...``: one markdown row per evaluation report.

For comparing runs side by side (conditions, models, baselines, offline vs replay): recall@1/5,
top-1 accuracy within the report's distance, the unknown-place decision at the configured
threshold, and latency, read from each ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from vpr_ros.errors import InputError
from vpr_ros.evaluation.report import DASH, REPORT_SCHEMA, markdown_table, number, percent, recall_kind

COLUMNS = (
    "report",
    "frames",
    "off route",
    "R@1",
    "R@5",
    "accepted",
    "off-route refused",
    "precision",
    "latency p50 / p95 [ms]",
)


def _load(directory: Path) -> dict:
    path = directory / "report.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"report {directory}: cannot read {path.name} ({exc})") from None
    if report.get("schema") != REPORT_SCHEMA:
        raise InputError(f"report {directory}: {path.name} is not of schema {REPORT_SCHEMA}")
    return report


def row(name: str, report: dict) -> list[str]:
    recall = report["recall"][recall_kind(report)[0]]["at"]
    configured = (report["unknown_place"] or {}).get("configured") or {}
    latency = report["latency_ms"]
    frames = report["frames"]
    return [
        name,
        f"{frames['answered']} / {frames['with_ground_truth']}",
        str(frames["off_route"]),
        number(recall.get("1"), ".3f"),
        number(recall.get("5"), ".3f"),
        percent(configured["accepted"] / frames["answered"] if configured else None),
        percent(configured.get("off_route_refused")),
        number(configured.get("precision"), ".3f"),
        DASH if latency["p50"] is None else f"{latency['p50']:.1f} / {latency['p95']:.1f}",
    ]


def markdown(reports: dict[str, dict]) -> str:
    return "\n".join(markdown_table(list(COLUMNS), [row(name, report) for name, report in reports.items()]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0].split(": ", 1)[1])
    parser.add_argument("reports", nargs="+", type=Path, help="report directories (each holds report.json)")
    args = parser.parse_args(argv)
    try:
        reports = {f"{d.parent.name}/{d.name}": _load(d) for d in args.reports}
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
