"""Side-by-side recall@1 per query condition (and on real_dev) from several evaluation reports.

    .venv/bin/python benchmarks/training_table.py runs/eval/*/report.json

Each report is the ``report.json`` of ``python -m training evaluate`` (a checkpoint or a baseline);
the table has one column per report and one row per query traverse, plus the overall recall@1/5
and the real_dev scores when the reports have them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    if not paths:
        sys.exit(__doc__)
    reports = {Path(p).parent.name: json.loads(Path(p).read_text()) for p in paths}
    rows: dict[str, dict[str, str]] = {}
    for name, report in reports.items():
        for dataset in report["datasets"].values():
            for tag, r in dataset["per_tag"].items():
                value = r["recall@1"]
                rows.setdefault(f"R@1 {tag}", {})[name] = "n/a" if value is None else f"{value:.3f}"
            for n in ("1", "5"):
                value = dataset["protocol"]["recall"].get(n)
                rows.setdefault(f"R@{n} all queries", {})[name] = "n/a" if value is None else f"{value:.3f}"
        for subset, value in report.get("real_dev_recall@1", {}).items():
            rows.setdefault(f"real_dev R@1 {subset}", {})[name] = f"{value:.3f}"
    names = list(reports)
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for row, values in rows.items():
        print(f"| {row} | " + " | ".join(values.get(n, "") for n in names) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
