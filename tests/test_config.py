"""Training configs: recipes load, bad keys, types and values are refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import load_config
from training.errors import UserError

RECIPES = sorted((Path(__file__).resolve().parents[1] / "config" / "training").glob("*.yaml"))


def test_there_are_paper_and_cpu_recipes():
    names = {p.stem for p in RECIPES}
    assert {"gcl_resnet50_gem_msls", "gcl_vgg16_gem_msls", "sare_joint_vgg16_netvlad_pitts30k"} <= names
    assert {"gcl_resnet34_avg_tbplaces", "synthetic_gcl_cpu", "synthetic_sare_cpu"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_validates(recipe):
    cfg = load_config(recipe)
    assert cfg.train.steps > 0 and cfg.data.val is not None


def test_overrides_are_yaml_values_applied_after_the_file():
    cfg = load_config(RECIPES[0], ["train.steps=7", "model.input_size=[64, 96]", "optim.lr=1"])
    assert cfg.train.steps == 7 and cfg.model.input_size == [64, 96]
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.stepz=5"], "unknown key 'train.stepz' (known: accumulation"),
        (["train.steps=five"], "train.steps must be int, got 'five'"),
        (["train.steps=2.5"], "train.steps must be int"),
        (["train.amp=maybe"], "train.amp must be auto, on or off"),
        (["loss.name=arcface"], "loss.name must be one of gcl, contrastive"),
        (["train.batch_size=10", "train.accumulation=3"], "multiple of train.accumulation"),
        (["data.train.format=kitti"], "data.train.format must be one of"),
        (["model=3"], "model must be a mapping"),
        (["train.steps"], "expected key=value"),
        (["model.input_size=[1, 2]"], "model.input_size must be [H, W] >= 32"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(UserError, match=None) as err:
        load_config(RECIPES[0], overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_config(listy)
