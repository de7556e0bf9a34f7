"""The steps every evaluation shares, offline (``vpr-eval``) or over DDS (``vpr_replay_evaluator``):
check the inputs before any work, then turn answers into a report.

Checked up front, each with a one-line error: the report directory (nothing is overwritten
without ``overwrite``), the model bundle, the map (built with that model), the query bag (topics;
the error lists what the bag has) and that map and bag poses share a frame.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from vpr_ros.bundle import ModelBundle, load_bundle
from vpr_ros.evaluation.answers import Answers
from vpr_ros.evaluation.ground_truth import GroundTruth
from vpr_ros.evaluation.metrics import EvalSettings, evaluate, sequence_section
from vpr_ros.evaluation.report import check_report_dir, summary, write_report
from vpr_ros.localization.pose_estimate import resolve_threshold
from vpr_ros.mapping.place_map import PlaceMap


@dataclass(frozen=True)
class EvalInputs:
    """A checked map (and the model it was built with, unless this is a raw-pixel baseline),
    the settings with the threshold resolved, and where the report goes."""

    map_dir: Path
    place_map: PlaceMap
    bundle: ModelBundle | None
    settings: EvalSettings
    out: Path
    overwrite: bool


def prepare(
    map_dir: Path | str,
    model_dir: Path | str | None,
    out: Path | str,
    overwrite: bool,
    settings: EvalSettings,
    configured_threshold: float = 0.0,
) -> EvalInputs:
    """Check the report directory, load the bundle and the map (same model), resolve the threshold
    (``configured_threshold`` > 0, else model.json's, else 0.5). ``model_dir`` None: raw-pixel
    baseline, the map is read for its keyframe poses only and there is no threshold."""
    out = Path(out).expanduser()
    check_report_dir(out, overwrite)
    if model_dir is None:
        place_map = PlaceMap.load(map_dir)
        return EvalInputs(Path(map_dir), place_map, None, replace(settings, threshold=None), out, overwrite)
    bundle = load_bundle(model_dir)
    place_map = PlaceMap.load(
        map_dir, expected_model_hash=bundle.content_hash, expected_dim=bundle.descriptor_dim
    )
    threshold = resolve_threshold(configured_threshold, bundle.similarity_threshold)
    return EvalInputs(
        Path(map_dir), place_map, bundle, replace(settings, threshold=threshold), out, overwrite
    )


def finish(
    inputs: EvalInputs,
    truth: GroundTruth,
    answers: Answers,
    mode: str,
    sequence: tuple[Answers, dict] | None = None,
) -> str:
    """Evaluate, write the report (atomically) and return the console summary. ``sequence``: the
    sequence filter's answers for the same frames and its settings, evaluated by the same metrics
    into the report's ``sequence`` section, beside the single-frame ones."""
    evaluation = evaluate(inputs.place_map, truth, answers, inputs.settings)
    if sequence is not None:
        filtered = evaluate(inputs.place_map, truth, sequence[0], inputs.settings)
        evaluation.report["sequence"] = sequence_section(filtered, sequence[1])
    run = {
        "mode": mode,
        "model": None
        if inputs.bundle is None
        else {
            "dir": str(inputs.bundle.path),
            "summary": inputs.bundle.summary(),
            "content_hash": inputs.bundle.content_hash,
        },
        "map": str(inputs.map_dir),
        "bag": str(truth.info.path),
        "image_topic": truth.info.image_topic,
        "pose_topic": truth.info.pose_topic,
        "frame_id": truth.info.pose_frame_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_report(inputs.out, evaluation, inputs.place_map, run, inputs.overwrite)
    return summary({"run": run, **evaluation.report}, inputs.out)
