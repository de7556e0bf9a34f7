"""The training engine end to end on the small synthetic world (tiny inputs, a few steps).

Exact resume (interrupted + resumed == uninterrupted, also after SIGKILL), DDP with two gloo
processes against one process, mining (SARE) resume, an unreadable image mid-run, and the CLI's
refusals.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, world: Path, loss: str = "gcl", **train) -> Path:
    cfg = {
        "model": {
            "backbone": "mobilenet_v2",
            "weights": "imagenet",
            "train_blocks": 1,
            "input_size": [64, 80],
        },
        "data": {
            "train": {"format": "msls", "root": str(world / "msls"), "cities": ["synthtown"]},
            "val": {"format": "msls", "root": str(world / "msls"), "cities": ["synthtown"]},
            "cache_dir": str(tmp_path / "cache"),
        },
        "labels": {"radius_m": 25.0},
        "loss": {"name": loss},
        "sampling": {"n_negatives": 3, "negative_pool": 20, "refresh_every": 2},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "step_size": 3, "gamma": 0.5},
        "train": {"steps": 6, "batch_size": 4, "val_every": 100, "ckpt_every": 2, "workers": 2, **train},
        "eval": {"batch_size": 16},
    }
    path = tmp_path / f"{loss}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """Run a command from the repository root with one math thread per process."""
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def training_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "training", *args], check)


def train(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return training_cli("train", "--quiet", *args, check=check)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "last.pt", map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.mark.parametrize("loss", ["gcl", "sare_joint"])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(small_world, tmp_path, loss):
    cfg = write_config(tmp_path, small_world, loss)
    train("--config", str(cfg), "--out", str(tmp_path / "straight"))
    train("--config", str(cfg), "--out", str(tmp_path / "split"), "train.steps=3")  # stops mid-way
    train("--resume", "--out", str(tmp_path / "split"), "train.steps=6")
    assert_same_weights(tmp_path / "straight", tmp_path / "split")
    steps = [int(line.split(",")[0]) for line in (tmp_path / "split" / "metrics.csv").read_text().split()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_killed_run_resumes_from_its_last_checkpoint(small_world, tmp_path):
    cfg = write_config(tmp_path, small_world, steps=8)
    train("--config", str(cfg), "--out", str(tmp_path / "straight"), "train.steps=8")
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "training", "train", "--quiet", "--config", str(cfg), "--out", str(killed)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (killed / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    state = torch.load(killed / "last.pt", map_location="cpu", weights_only=True)
    assert 2 <= state["step"] < 8
    train("--resume", "--out", str(killed))
    assert_same_weights(tmp_path / "straight", killed)


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun"
)
def test_two_gloo_processes_follow_the_single_process_run(small_world, tmp_path):
    """torchrun --nproc_per_node 2: each rank trains on half of every global batch and DDP averages
    the gradients. BatchNorm statistics are per rank on CPU (SyncBatchNorm is used on CUDA only),
    so the runs are not bit-identical: the loss curve (logged over the whole global batch) must
    have the same shape and the weight updates the same direction."""
    from training.models import ModelConfig, build_model

    cfg = write_config(tmp_path, small_world, steps=6)
    train("--config", str(cfg), "--out", str(tmp_path / "single"))
    torchrun = str(Path(sys.executable).parent / "torchrun")
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "training", "train", "--quiet"]
    run([*command, "--config", str(cfg), "--out", str(tmp_path / "ddp")])

    def losses(folder: Path) -> list[float]:
        return [float(line.split(",")[1]) for line in (folder / "metrics.csv").read_text().split()[1:]]

    single, ddp = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert len(single) == len(ddp) == 6
    for a, b in zip(single, ddp):
        assert abs(b - a) < 0.2 * a
    initial, _ = build_model(ModelConfig(backbone="mobilenet_v2", weights="imagenet", train_blocks=1))
    start = initial.state_dict()
    ws, wd = weights(tmp_path / "single"), weights(tmp_path / "ddp")
    moved = [k for k in ws if ws[k].is_floating_point() and not torch.equal(ws[k], start[k])]
    assert moved  # training changed the trainable block
    delta_s = torch.cat([(ws[k] - start[k]).flatten() for k in moved])
    delta_d = torch.cat([(wd[k] - start[k]).flatten() for k in moved])
    assert torch.nn.functional.cosine_similarity(delta_s, delta_d, dim=0) > 0.9


def test_an_unreadable_image_is_skipped_and_counted(small_world, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(small_world / "msls", world / "msls")
    shutil.copy(small_world / "world.json", world / "world.json")
    images = sorted((world / "msls" / "train_val" / "synthtown" / "query" / "images").glob("*.jpg"))
    for bad in images[::3]:  # a third of the queries: some batch will surely draw one
        bad.write_bytes(b"not a jpeg")
    cfg = write_config(tmp_path, world, steps=3)
    result = train("--config", str(cfg), "--out", str(tmp_path / "run"))
    summary = yaml.safe_load((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["skipped_examples"] > 0
    assert "not a readable image" in result.stderr and images[0].name in result.stderr


def test_cli_refusals_are_one_line(small_world, tmp_path):
    cfg = write_config(tmp_path, small_world, steps=2)
    cases = [
        (["--config", str(cfg), "--out", str(tmp_path / "r"), "train.stepz=1"], "unknown key 'train.stepz'"),
        (
            ["--config", str(cfg), "--out", str(tmp_path / "r"), "data.train.root=/nonexistent"],
            "/nonexistent",
        ),
        (["--resume", "--out", str(tmp_path / "nothing")], "last.pt: file not found"),
    ]
    for args, message in cases:
        result = train(*args, check=False)
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr and "Traceback" not in result.stderr
    train("--config", str(cfg), "--out", str(tmp_path / "done"))
    again = train("--config", str(cfg), "--out", str(tmp_path / "done"), check=False)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    (tmp_path / "done" / "last.pt").write_bytes(b"garbage")
    corrupt = train("--resume", "--out", str(tmp_path / "done"), check=False)
    assert corrupt.returncode == 2 and "not a readable checkpoint" in corrupt.stderr


def test_evaluate_writes_a_report_for_a_checkpoint_and_the_baselines(small_world, tmp_path):
    import json

    cfg = write_config(tmp_path, small_world, steps=2)
    train("--config", str(cfg), "--out", str(tmp_path / "run"))

    def evaluate(*args: str) -> dict:
        result = training_cli("evaluate", *args)
        assert "R@1" in result.stdout
        return json.loads((Path(args[args.index("--out") + 1]) / "report.json").read_text())

    ckpt = evaluate(
        "--checkpoint", str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "e1"), "eval.pca_dims=[64]"
    )
    dataset = next(iter(ckpt["datasets"].values()))
    assert set(dataset["per_tag"]) == {"t01_night"}  # sequence keys shown as traverse names
    assert 0.0 <= dataset["protocol"]["recall"]["1"] <= dataset["protocol"]["recall"]["5"] <= 1.0
    assert dataset["pca_sweep"]["dims"] == [64]
    for png in ("recall_at_n.png", "localization_accuracy.png"):
        assert (tmp_path / "e1" / png).stat().st_size > 1000
    raw = evaluate("--baseline", "raw-pixels", "--config", str(cfg), "--out", str(tmp_path / "e2"))
    assert "raw pixels" in raw["method"]
    bad = training_cli("evaluate", "--out", str(tmp_path / "e3"), check=False)
    assert bad.returncode == 2 and "exactly one of --checkpoint or --baseline" in bad.stderr


def test_pittsburgh_has_no_headings_contrastive_uses_binary_pairs_and_gcl_refuses(small_world, tmp_path):
    cfg = write_config(tmp_path, small_world, "contrastive", steps=2)
    pitts = str(small_world / "pittsburgh")
    overrides = [
        f"data.train={{format: pittsburgh, root: {pitts}, split: train}}",
        f"data.val={{format: pittsburgh, root: {pitts}, split: val}}",
    ]
    train("--config", str(cfg), "--out", str(tmp_path / "binary"), *overrides)
    log = (tmp_path / "binary" / "train.log").read_text()
    assert "binary pairs available" in log
    refused = train(
        "--config", str(cfg), "--out", str(tmp_path / "gcl"), "loss.name=gcl", *overrides, check=False
    )
    assert refused.returncode == 2 and "graded labels need camera headings" in refused.stderr
