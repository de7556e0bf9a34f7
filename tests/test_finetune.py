"""Training on real image folders and on one's own bags, and the guarded export.

Image folders (query/ + ref/) get the poses their correspondences imply, so GCL's graded labels and
the validation protocol work on them unchanged; the export guard refuses a fine-tuned bundle that
is worse than the model it started from, with one line, and leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
pytest.importorskip("onnx", reason="onnx not installed (the 'train' extra)")

from training.cli import main as training_main  # noqa: E402
from training.config import load_config  # noqa: E402
from training.datasets.vpr_folders import read_vpr_folder  # noqa: E402
from training.errors import UserError  # noqa: E402
from training.guard import GuardSet  # noqa: E402
from training.similarity import graded_labels  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = "[64, 96]"


def image_folder(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` random-texture places; each query is its reference with a brightness change."""
    rng = np.random.default_rng(seed)
    for sub in ("query", "ref"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        ref = cv2.resize(
            rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (96, 64), interpolation=cv2.INTER_CUBIC
        )
        cv2.imwrite(str(root / "ref" / f"{i}.png"), ref)
        cv2.imwrite(str(root / "query" / f"{i}.png"), np.clip(ref.astype(int) * 0.8, 0, 255).astype(np.uint8))
    return root


def test_pairs_give_one_positive_per_query_and_a_route_graded_neighbours(tmp_path) -> None:
    folder = image_folder(tmp_path / "set", 6)
    pairs = read_vpr_folder(folder, "pairs")
    labels = graded_labels(pairs.database, pairs.queries, 25.0, np.radians(90)).toarray()
    assert np.array_equal(labels, np.eye(6))  # the true pair overlaps fully, no other pair at all

    route = read_vpr_folder(folder, "route", frame_spacing_m=10.0, tolerance=1, index_range=(1, 5))
    assert route.name == "set[1:5]" and len(route.queries) == len(route.database) == 4
    assert route.queries.paths[0].name == "1.png"
    labels = graded_labels(route.database, route.queries, 25.0, np.radians(90)).toarray()
    assert np.allclose(np.diag(labels), 1.0)
    # one frame (10 m) apart along the view axis: a partial overlap, equal both ways, and it fades
    assert 0 < labels[1, 0] < 1 and labels[1, 0] == pytest.approx(labels[1, 2])
    assert labels[3, 1] < labels[1, 0]
    assert route.positive_m == pytest.approx(15.0)  # +-1 frame counts as correct in validation


def test_folder_sources_are_checked(tmp_path) -> None:
    folder = image_folder(tmp_path / "set", 3)
    with pytest.raises(UserError, match="index_range"):
        read_vpr_folder(folder, "pairs", index_range=(5, 9))
    with pytest.raises(UserError, match="no query/ folder"):
        read_vpr_folder(tmp_path, "pairs")
    with pytest.raises(UserError, match="one reference per query"):
        read_vpr_folder(folder, "pairs", tolerance=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{train: {{format: vpr_folder, root: {folder}, layout: loop}}}}\n")
    with pytest.raises(UserError, match="layout must be pairs or route"):
        load_config(recipe)
    assert GuardSet.parse("a/b:2") == GuardSet(Path("a/b"), 2)
    with pytest.raises(UserError, match="DIR or DIR:TOLERANCE"):
        GuardSet.parse("a/b:x")


def test_untrained_export_fits_pca_on_the_recipes_training_images(tmp_path, capsys) -> None:
    folder = image_folder(tmp_path / "set", 12)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {{backbone: mobilenet_v2, weights: imagenet, input_size: {SIZE}}}\n"
        f"data: {{train: {{format: vpr_folder, root: {folder}, layout: pairs, index_range: [0, 8]}},"
        f" val: {{format: vpr_folder, root: {folder}, layout: pairs}}, cache_dir: {tmp_path / 'cache'}}}\n"
    )
    out = tmp_path / "bundle"
    code = training_main(
        ["export", "--untrained", "--config", str(recipe), "--out", str(out), "--pca-dim", "8",
         "--similarity-threshold", "0.3", "--threshold-origin", "best F1 on a test set", "--no-torch-program"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["loss"] is None and "not fine-tuned" in meta["training"]["source"]
    assert meta["output"]["dim"] == 8 and meta["input"]["height"] == 64
    whitening = meta["architecture"]["whitening"]
    assert whitening["samples"] == 16  # 8 pairs, both sides, and nothing of the held-out 8..11
    assert "[0:8]" in whitening["fitted_on"]
    assert meta["localization"] == {"similarity_threshold": 0.3, "chosen_on": "best F1 on a test set"}
    assert training_main(["export", "--untrained", "--out", str(tmp_path / "x")]) == 2
    assert "--config" in capsys.readouterr().err

    # the threshold from a real set with distractors: 8 places in the map, 4 queries of places not in it
    calibration = tmp_path / "calibration"
    for sub in ("query", "ref"):
        (calibration / sub).mkdir(parents=True)
    for i in range(12):
        (calibration / "query" / f"{i}.png").symlink_to(folder / "query" / f"{i}.png")
        if i < 8:
            (calibration / "ref" / f"{i}.png").symlink_to(folder / "ref" / f"{i}.png")
    rows = np.empty((12, 2), dtype=object)
    for i in range(12):
        rows[i, 0], rows[i, 1] = i, [i] if i < 8 else []
    np.save(calibration / "ground_truth.npy", rows, allow_pickle=True)
    code = training_main(
        ["export", "--untrained", "--config", str(recipe), "--out", str(tmp_path / "calibrated"),
         "--threshold-set", str(calibration), "--no-torch-program"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    localization = json.loads((tmp_path / "calibrated" / "model.json").read_text())["localization"]
    assert 0 < localization["similarity_threshold"] <= 1
    assert "12 queries, 4 without a match" in localization["chosen_on"]
    code = training_main(
        ["export", "--untrained", "--config", str(recipe), "--out", str(tmp_path / "y"),
         "--threshold-set", str(folder), "--no-torch-program"]
    )  # fmt: skip
    assert code == 2 and "needs queries with and without a match" in capsys.readouterr().err


@pytest.fixture(scope="module")
def own_run(tmp_path_factory, small_world) -> tuple[Path, Path]:
    """The finetune_own_bags recipe on the small world's bags, two steps from random weights."""
    tmp = tmp_path_factory.mktemp("own")
    bags = sorted((small_world / "bags").iterdir())
    db, queries = [b for b in bags if "day" in b.name], [b for b in bags if "day" not in b.name]
    overrides = [
        f"data.train.database=[{db[0]}]",
        f"data.train.queries=[{queries[0]}]",
        f"data.val.database=[{db[0]}]",
        f"data.val.queries=[{queries[0]}]",
        f"data.cache_dir={tmp / 'cache'}",
        f"model.input_size={SIZE}",
        "model.weights=none",  # a network that cannot be as good as the shipped one
        "train.steps=2",
        "train.batch_size=4",
        "train.val_every=2",
        "train.ckpt_every=2",
        "eval.batch_size=16",
    ]
    config = REPO / "config" / "training" / "finetune_own_bags.yaml"
    code = training_main(["train", "--config", str(config), "--out", str(tmp / "run"), "--quiet", *overrides])
    assert code == 0
    return tmp, tmp / "run" / "best.pt"


def test_own_bags_recipe_trains_and_the_guard_refuses_a_worse_model(own_run, capsys) -> None:
    tmp, checkpoint = own_run
    out = tmp / "bundle"
    args = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--no-torch-program"]
    code = training_main([*args, "--guard-against", "default"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "worse than the model it started from" in err and "--force" in err
    assert not out.exists() and not list(tmp.glob(".bundle*"))  # nothing half-written

    assert training_main([*args, "--guard-against", "default", "--force"]) == 0
    guard = json.loads((out / "model.json").read_text())["guard"]
    assert guard["forced"] is True and guard["mean"] < guard["start_mean"]
    assert set(guard["recall@1"]) == set(guard["start_recall@1"]) == {"trajectory"}


def test_the_guard_passes_a_model_that_is_not_worse(own_run, tmp_path, capsys) -> None:
    _, checkpoint = own_run
    first, second = tmp_path / "a", tmp_path / "b"
    args = ["--checkpoint", str(checkpoint), "--no-torch-program"]
    assert training_main(["export", *args, "--out", str(first)]) == 0
    folder = image_folder(tmp_path / "set", 4)
    code = training_main(
        ["export", *args, "--out", str(second), "--guard-against", str(first), "--guard-set", str(folder)]
    )
    assert code == 0, capsys.readouterr().err
    guard = json.loads((second / "model.json").read_text())["guard"]
    assert guard["forced"] is False and guard["mean"] == pytest.approx(guard["start_mean"])
    assert set(guard["recall@1"]) == {"trajectory", "set"}


def test_interpolation_is_wise_ft_between_the_start_and_the_fine_tuned_weights() -> None:
    import torch

    from training.config import Config
    from training.engine import model_config
    from training.export import Source, interpolate_with_start
    from training.models import build_model

    cfg = Config()
    cfg.model.input_size = [64, 96]
    start, _ = build_model(model_config(cfg))
    tuned, _ = build_model(model_config(cfg))
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.full_like(p, 0.5))
    source = Source(tuned, (64, 96), {}, {}, {}, recipe=cfg)
    interpolate_with_start(source, 0.3)
    begin, mixed = start.state_dict(), source.model.state_dict()
    for key in ("backbone.0.0.weight", "backbone.18.0.weight"):
        assert torch.allclose(mixed[key], begin[key] + 0.3 * 0.5, atol=1e-6)  # (1 - a) s + a (s + d)
    assert torch.allclose(mixed["normalize.mean"], begin["normalize.mean"])  # the same in both
    assert source.training["weight_interpolation"]["alpha"] == 0.3
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        interpolate_with_start(source, 0.0)


def test_interpolation_needs_pretrained_starting_weights(own_run, tmp_path, capsys) -> None:
    _, checkpoint = own_run  # trained from random weights: there is no start to interpolate with
    code = training_main(
        ["export", "--checkpoint", str(checkpoint), "--interpolate", "0.5", "--out", str(tmp_path / "b")]
    )
    assert code == 2 and "starting weights are not available" in capsys.readouterr().err
