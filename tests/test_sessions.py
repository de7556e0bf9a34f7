"""Maps of several sessions, end to end: a route mapped by day and again at night (two recordings,
``vpr-build-map --append``) localizes new day and night drives at least as well as either
single-session map, measured by ``vpr-eval``; ``vpr-map info`` shows both sessions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from vpr_ros.evaluation.offline import main as vpr_eval
from vpr_ros.mapping.build_map import main as build_map
from vpr_ros.mapping.map_tool import main as vpr_map
from vpr_ros.mapping.place_map import PlaceMap

MAPPING = ("t00_day", "t01_night")
QUERIES = ("t02_day", "t03_night")


@pytest.fixture(scope="module")
def two_condition_town(tmp_path_factory) -> Path:
    """The small town's route driven four times, each in its own lane: by day and by night to map,
    by day and by night to query."""
    from training.synth.generate import generate
    from training.synth.presets import Drive, TraverseSpec, get_preset

    def drive(offset: float) -> Drive:
        return Drive(spacing_m=2.0, lateral_offset_m=offset, heading_jitter_deg=2.0, speed_mps=8.0)

    small = get_preset("small")
    preset = dataclasses.replace(
        small,
        name="sessions",
        traverses=(
            TraverseSpec("day", "database", "main", drive(1.5)),
            TraverseSpec("night", "database", "main", drive(0.5)),
            TraverseSpec("day", "query", "main", drive(2.3)),
            TraverseSpec("night", "query", "main", drive(1.0)),
        ),
    )
    out = tmp_path_factory.mktemp("sessions") / "world"
    generate(out, preset, seed=7, formats=("bag",), progress=False)
    return out / "bags"


@pytest.fixture(scope="module")
def maps(tmp_path_factory, two_condition_town, bundle) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("session_maps")
    common = ["--model", str(bundle), "--backend", "onnxruntime", "--min-distance", "2.0", "--quiet"]
    built = {}
    for name, bag in zip(("day", "night"), MAPPING):
        built[name] = root / name
        assert build_map(["--bag", str(two_condition_town / bag), "--out", str(built[name]), *common]) == 0
    built["both"] = root / "both"
    for i, bag in enumerate(MAPPING):
        extra = ["--append"] if i else []
        assert (
            build_map(["--bag", str(two_condition_town / bag), "--out", str(built["both"]), *common, *extra])
            == 0
        )
    return built


def recall_at_1(map_dir: Path, bag: Path, bundle: Path, out: Path) -> float:
    args = [
        "--map",
        map_dir,
        "--bag",
        bag,
        "--model",
        bundle,
        "--out",
        out,
        "--backend",
        "onnxruntime",
        "--quiet",
    ]
    assert vpr_eval(list(map(str, args))) == 0
    report = json.loads((out / "report.json").read_text())
    return report["recall"]["distance_and_heading"]["at"]["1"]


def test_a_two_session_map_localizes_both_conditions_at_least_as_well_as_either_session(
    tmp_path, two_condition_town, maps, bundle, capsys
) -> None:
    both = PlaceMap.load(maps["both"])
    assert [s.name for s in both.sessions] == list(MAPPING)
    assert len(both) == len(PlaceMap.load(maps["day"])) + len(PlaceMap.load(maps["night"]))
    recall = {
        (name, query): recall_at_1(map_dir, two_condition_town / query, bundle, tmp_path / f"{name}_{query}")
        for name, map_dir in maps.items()
        for query in QUERIES
    }
    for query in QUERIES:
        assert recall[("both", query)] >= max(recall[("day", query)], recall[("night", query)]), recall
    # each condition is best served by its own session (otherwise the test shows nothing). Measured:
    # day map 1.000 day / 0.247 night, night map 0.266 / 1.000, both sessions 1.000 / 1.000.
    assert recall[("day", "t02_day")] > recall[("night", "t02_day")], recall
    assert recall[("night", "t03_night")] > recall[("day", "t03_night")], recall

    capsys.readouterr()
    assert vpr_map(["info", str(maps["both"])]) == 0
    info = capsys.readouterr().out
    assert f"keyframes    {len(both)} in 2 sessions" in info and "t01_night" in info, info
