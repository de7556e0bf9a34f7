"""The training loop: graded pairs (GCL, contrastive) or mined tuples (SARE, triplet).

What makes it safe to run for days:
- every batch is a pure function of (seed, step), so a resumed run (``--resume``) and every
  DistributedDataParallel rank (``torchrun``) draw exactly the batches an uninterrupted single
  process would; checkpoints (atomic: temp file, fsync, rename) hold model, optimizer, scheduler,
  step, RNG state and the miner's caches, so resuming reproduces the uninterrupted weights;
- an unreadable image is skipped and counted, never fatal; a killed run resumes from its last
  checkpoint;
- progress bars, a log file, TensorBoard scalars and a metrics CSV show what happens; validation
  recall@N runs every ``train.val_every`` steps and the best checkpoint is kept.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.config import Config, from_dict
from training.data import TrainingPlaces, load_source, load_sources
from training.datasets.base import PlaceDataset
from training.datasets.images import ImageListDataset, load_image
from training.errors import UserError
from training.losses import make_loss, triplet_loss
from training.models import ModelConfig, PlaceNet, build_model

log = logging.getLogger("training")
CHECKPOINT_FORMAT = "vpr_ros.training.checkpoint/1"
PAIR_LOSSES = ("gcl", "contrastive")


# ----------------------------------------------------------------------------- set-up helpers


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str) -> Dist:
    """Single process, or one rank of a ``torchrun`` job (gloo on CPU, NCCL on GPUs)."""
    cuda = torch.cuda.is_available() and device_pref != "cpu"
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is cuda but no CUDA device is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return Dist(rank, world, torch.device("cuda", local))
    return Dist(rank, world, torch.device("cpu"))


def model_config(cfg: Config) -> ModelConfig:
    m = cfg.model
    return ModelConfig(
        backbone=m.backbone,
        pooling=m.pooling,
        gem_p=m.gem_p,
        netvlad_clusters=m.netvlad_clusters,
        weights=m.weights,
        train_blocks=m.train_blocks,
        whiten_dim=m.whiten_dim,
    )


def _input_size(cfg: Config) -> tuple[int, int]:
    return int(cfg.model.input_size[0]), int(cfg.model.input_size[1])


def freeze_batchnorm(model: nn.Module, everywhere: bool) -> None:
    """Keep BatchNorm layers in eval mode so their running statistics stay the pre-trained ones:
    always in frozen blocks (the GCL code trains only the last blocks), and in every block with
    ``train.freeze_bn`` -- fine-tuning on a narrow domain (the synthetic world) otherwise replaces
    the ImageNet statistics and costs accuracy on real images. The affine parameters still train."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            everywhere or not any(p.requires_grad for p in module.parameters())
        ):
            module.eval()


@torch.no_grad()
def embed_paths(
    model: PlaceNet,
    paths,
    size: tuple[int, int],
    device: torch.device,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
    desc: str = "embedding",
) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors [N, D] (float32) of image files, and a mask of the readable ones."""
    was_training = model.training
    model.eval()
    loader = DataLoader(ImageListDataset(list(paths), size), batch_size=batch_size, num_workers=workers)
    out, ok = [], []
    for images, _, good in tqdm(loader, desc=desc, leave=False, disable=not progress):
        out.append(model(images.to(device)).float().cpu().numpy())
        ok.append(good.numpy())
    model.train(was_training)
    if not out:
        return np.zeros((0, model.output_dim), np.float32), np.zeros(0, bool)
    return np.concatenate(out), np.concatenate(ok).astype(bool)


def embed_dataset(describe, dataset: PlaceDataset) -> tuple[PlaceDataset, np.ndarray, np.ndarray]:
    """Describe both sides with ``describe(paths) -> (descriptors, ok)`` and drop the unreadable
    images, so no zero descriptor is ever scored as a real image."""
    db, db_ok = describe(dataset.database.paths)
    q, q_ok = describe(dataset.queries.paths)
    return dataset.subset(np.flatnonzero(db_ok), np.flatnonzero(q_ok)), db[db_ok], q[q_ok]


def evaluate_model(
    model: PlaceNet, datasets: list[PlaceDataset], size, device, batch_size: int, progress: bool = False
) -> dict:
    """Retrieval metrics per dataset and their query-weighted mean (``recall@N`` keys)."""
    from training.evaluation.metrics import evaluate_retrieval

    def describe(paths):
        return embed_paths(model, paths, size, device, batch_size, progress=progress)

    per, weights = {}, []
    for d in datasets:
        per[d.name] = evaluate_retrieval(*embed_dataset(describe, d))
        weights.append(per[d.name]["protocol"]["n_evaluated"])
    summary = {}
    total = max(sum(weights), 1)
    for n in per[next(iter(per))]["protocol"]["recall"]:
        summary[f"recall@{n}"] = (
            sum(w * (r["protocol"]["recall"][n] or 0.0) for w, r in zip(weights, per.values())) / total
        )
    return {"summary": summary, "datasets": per}


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    """Write aside, fsync, rename: a crash mid-save leaves the previous checkpoint whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint, loaded without unpickling arbitrary objects (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise UserError(f"checkpoint {path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint {path}: not a vpr_ros training checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def model_from_checkpoint(state: dict) -> tuple[PlaceNet, Config]:
    cfg = from_dict(state["config"], "checkpoint config")
    model, _ = build_model(model_config(cfg))
    whiten = state["model"].get("whiten.weight")
    if whiten is not None:
        model.set_whitening(np.zeros(whiten.shape[1], np.float32), np.eye(*whiten.shape, dtype=np.float32))
    model.load_state_dict(state["model"])
    return model, cfg


# ----------------------------------------------------------------------------- batches


class BatchLoader:
    """Loads this rank's share of each step's global batch with a pool of threads.

    Batches are drawn in the main thread, in step order: the miner's negCache changes with every
    draw, and a checkpoint must hold exactly the draws of the steps it has trained. Pair batches
    are a pure function of the step, so the next one is drawn and loaded while the current one
    trains; mined tuples are loaded in parallel but drawn only when their step comes. OpenCV
    releases the GIL while decoding and resizing, so threads load images in parallel.
    """

    def __init__(
        self, draw, paths_of, size, batch_size: int, rank: int, world: int, threads: int, prefetch: bool
    ):
        self.draw, self.paths_of, self.size = draw, paths_of, size
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.pool = ThreadPoolExecutor(max(1, threads))  # image loading
        self.ahead = ThreadPoolExecutor(1) if prefetch else None  # the next batch, while this one trains

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead.shutdown(wait=True)
        self.pool.shutdown(wait=True)

    def steps(self, start: int, stop: int) -> Iterator[dict]:
        if self.ahead is None:
            for step in range(start, stop):
                yield self._draw_and_load(step)
            return
        pending = self.ahead.submit(self._draw_and_load, start) if start < stop else None
        for step in range(start, stop):
            batch = pending.result()
            pending = self.ahead.submit(self._draw_and_load, step + 1) if step + 1 < stop else None
            yield batch

    def _draw_and_load(self, step: int) -> dict:
        return self._load(step, self.draw(step, self.batch_size))

    def _load(self, step: int, drawn) -> dict:
        indices, label = drawn
        mine = slice(self.rank, None, self.world)
        images, ok = [], None
        for role, idx in indices.items():
            idx = np.asarray(idx)[mine]
            loaded = (
                list(self.pool.map(self._image, self.paths_of(role, idx.reshape(-1)))) if idx.size else []
            )
            tensor = torch.stack([t for t, _ in loaded]) if loaded else torch.zeros(0, 3, *self.size)
            good = torch.tensor([g for _, g in loaded], dtype=torch.bool).reshape(len(idx), -1).all(dim=1)
            ok = good if ok is None else ok & good
            images.append(tensor.reshape(*idx.shape, 3, *self.size))
        return {"images": images, "label": torch.as_tensor(np.asarray(label)[mine]), "ok": ok, "step": step}

    def _image(self, path) -> tuple[torch.Tensor, bool]:
        try:
            return load_image(path, self.size), True
        except UserError as exc:
            log.warning("skipping the examples of %s", exc)
            return torch.zeros(3, *self.size), False


# ----------------------------------------------------------------------------- the loop


class Trainer:
    def __init__(self, cfg: Config, out: Path, resume: bool, progress: bool = True) -> None:
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.dist = setup_distributed(cfg.train.device)
        self.size = _input_size(cfg)
        self.cache_dir = Path(cfg.data.cache_dir)
        last = self.out / "last.pt"
        if last.exists() and not resume:
            raise UserError(
                f"{self.out} already holds a run (last.pt): pass --resume to continue it or use a new --out"
            )
        if resume and not last.exists():
            raise UserError(f"--resume: {last} not found")
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.train.seed)
        self.places = TrainingPlaces.of(load_sources([cfg.data.train, *cfg.data.extra_train], self.cache_dir))
        self.val = load_source(cfg.data.val, self.cache_dir) if cfg.data.val else []
        self.model, self.model_info = build_model(model_config(cfg))
        self.model.to(self.dist.device)
        log.info("model: %s", json.dumps(self.model_info, default=str))
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise UserError("model.train_blocks leaves no trainable parameter")
        o = cfg.optim
        if o.name == "sgd":
            self.optimizer = torch.optim.SGD(
                params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
            )
        else:
            self.optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=o.step_size, gamma=o.gamma)
        # L2-SP (Li et al., ICML 2018): alpha/2 ||w - w0||^2 keeps fine-tuned weights near the
        # pre-trained ones, the usual guard against forgetting what ImageNet taught.
        self.anchor = [(p, p.detach().clone()) for p in params] if o.l2_sp > 0 else []
        self.loss = make_loss(cfg.loss.name, **self._loss_options())
        self.pairs = cfg.loss.name in PAIR_LOSSES
        self.sampler = self._make_sampler()
        self.amp = cfg.train.amp == "on" or (cfg.train.amp == "auto" and self.dist.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.dist.device.type == "cuda")
        self.step, self.best = 0, {"metric": cfg.train.select_metric, "value": -1.0, "step": -1}
        self.mined = False  # the miner has a descriptor cache (restored or refreshed)
        if resume:
            self._restore(load_checkpoint(last))
        self.loader = BatchLoader(
            self._draw,
            self._paths_of,
            self.size,
            cfg.train.batch_size,
            self.dist.rank,
            self.dist.world,
            threads=cfg.train.workers,
            prefetch=self.pairs,
        )
        self.net = self.model
        if self.dist.world > 1 and self.dist.device.type == "cuda":
            # One set of BatchNorm statistics over the global batch; on CPU (gloo) each rank
            # normalises its own share, as the GCL reference's micro-batches do.
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.net = self.model
        if self.dist.world > 1:
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None
            )

    def _loss_options(self) -> dict:
        lc = self.cfg.loss
        if lc.name.startswith("sare"):
            return {"kernel": lc.kernel}
        return {} if lc.margin is None else {"margin": lc.margin}

    def _triplet_margin(self) -> float | None:
        """The triplet loss's margin, which also decides what the miner's negCache keeps."""
        if self.cfg.loss.name != "triplet":
            return None
        default = inspect.signature(triplet_loss).parameters["margin"].default
        return default if self.cfg.loss.margin is None else self.cfg.loss.margin

    def _make_sampler(self):
        from training import sampling

        s, p = self.cfg.sampling, self.places
        headings = bool(np.isfinite(p.database.yaw).all() and np.isfinite(p.queries.yaw).all())
        if self.cfg.loss.name == "contrastive" and not headings:
            # No camera headings (Pittsburgh): binary positives by distance, as NetVLAD labels them.
            sampler = sampling.BinaryPairSampler(
                p.binary("train"), len(p.database), exclude=p.binary("potential"), seed=self.cfg.train.seed
            )
            log.info("binary pairs available: %s", sampler.bin_counts())
            return sampler
        if self.pairs:
            labels = p.graded_labels(self.cfg.labels.radius_m, self.cfg.labels.fov_deg, self.cache_dir)
            threshold = s.binary_threshold if self.cfg.loss.name == "contrastive" else None
            sampler = sampling.GradedPairSampler(
                labels, strategy=s.strategy, seed=self.cfg.train.seed, binary_threshold=threshold
            )
            log.info("graded pairs available per bin: %s", sampler.bin_counts())
            return sampler
        return sampling.HardNegativeMiner(
            p.binary("train"),
            p.binary("potential"),
            len(p.database),
            n_negatives=s.n_negatives,
            negative_pool=s.negative_pool,
            seed=self.cfg.train.seed,
            margin=self._triplet_margin(),
        )

    # -- data

    def _draw(self, step: int, size: int):
        if self.pairs:
            q, d, psi = self.sampler.batch(step, size)
            return {"queries": q, "database": d}, psi.astype(np.float32)
        q, pos, neg = self.sampler.tuples(step, size)
        return {"queries": q, "database": pos, "negatives": neg}, np.zeros(len(q), np.float32)

    def _paths_of(self, role: str, idx: np.ndarray):
        side = self.places.queries if role == "queries" else self.places.database
        return [side.paths[i] for i in idx]

    def _refresh_miner(self) -> None:
        """Re-embed the whole training set with the current weights (NetVLAD's descriptor cache)."""

        def embed(side, name):
            show = self.progress and self.dist.main
            desc, _ = embed_paths(
                self.model,
                side.paths,
                self.size,
                self.dist.device,
                self.cfg.eval.batch_size,
                progress=show,
                desc=f"mining: {name}",
            )
            return desc

        db, q = embed(self.places.database, "database"), embed(self.places.queries, "queries")
        self.sampler.refresh(db, q)
        self.mined = True

    # -- one optimizer step

    def _train_step(self, batch: dict) -> tuple[float, int]:
        ok = batch["ok"]
        images = [t[ok] for t in batch["images"]]
        label = batch["label"][ok].to(self.dist.device)
        n = int(ok.sum())
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        micro = max(1, -(-n // self.cfg.train.accumulation)) if n else 1
        for s in range(0, n, micro):
            parts = [t[s : s + micro].to(self.dist.device, non_blocking=True) for t in images]
            with torch.autocast(self.dist.device.type, enabled=self.amp):
                flat = torch.cat([p.reshape(-1, 3, *self.size) for p in parts])
                desc = self.net(flat).float()
            sizes = [p.reshape(-1, 3, *self.size).shape[0] for p in parts]
            chunks = torch.split(desc, sizes)
            if self.pairs:
                loss = self.loss(chunks[0], chunks[1], label[s : s + micro])
            else:
                k = parts[2].shape[1]
                loss = self.loss(chunks[0], chunks[1], chunks[2].reshape(-1, k, desc.shape[1]))
            weight = parts[0].shape[0] / n
            if self.anchor:
                loss = loss + self.cfg.optim.l2_sp / 2 * sum(((p - p0) ** 2).sum() for p, p0 in self.anchor)
            self.scaler.scale(loss * weight).backward()
            total += float(loss.detach()) * weight
        if n:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        return total, n

    # -- checkpoints

    def _state(self) -> dict:
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "best": dict(self.best),
            "model_info": {k: str(v) for k, v in self.model_info.items()},
        }
        if not self.pairs:
            state["miner"] = {
                k: torch.from_numpy(np.asarray(v)) for k, v in self.sampler.state_dict().items()
            }
        return state

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.step, self.best = int(state["step"]), dict(state["best"])
        if "miner" in state:
            self.sampler.load_state_dict({k: v.numpy() for k, v in state["miner"].items()})
            self.mined = state["miner"]["db_desc"].numel() > 0
        log.info("resumed from %s at step %d", self.out / "last.pt", self.step)

    # -- the run

    def run(self) -> dict:
        cfg = self.cfg.train
        main = self.dist.main
        metrics_csv = self.out / "metrics.csv"
        history = _read_history(metrics_csv, self.step) if main else []
        writer = _tensorboard(self.out) if main else None
        self.model.train()
        freeze_batchnorm(self.model, self.cfg.train.freeze_bn)
        refresh = None if self.pairs else self.cfg.sampling.refresh_every
        skipped, examples, busy = 0, 0, 0.0
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="training",
            unit="step",
            disable=not (self.progress and main),
        )
        while self.step < cfg.steps:
            if refresh is not None and (
                self.step % refresh == 0 or self.sampler.state_dict()["db_desc"].size == 0
            ):
                self._refresh_miner()
                self.model.train()
                freeze_batchnorm(self.model, self.cfg.train.freeze_bn)
            stop = cfg.steps if refresh is None else min(cfg.steps, (self.step // refresh + 1) * refresh)
            for batch in self.loader.steps(self.step, stop):
                t0 = time.perf_counter()
                loss, n = self._train_step(batch)
                if self.dist.world > 1:  # log the loss of the whole global batch, as one process would
                    both = torch.tensor([loss * n, float(n)], dtype=torch.float64)
                    dist.all_reduce(both)
                    loss = float(both[0] / max(both[1], 1.0))
                busy += time.perf_counter() - t0
                examples += n
                skipped += int((~batch["ok"]).sum())
                self.step += 1
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}")
                row = {"step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0]}
                if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                    row.update(self._validate())
                if main:
                    history.append(row)
                    _append_csv(metrics_csv, row)
                    if writer is not None:
                        for key, value in row.items():
                            if key != "step" and isinstance(value, float):
                                writer.add_scalar(key, value, self.step)
                if main and (self.step % cfg.ckpt_every == 0 or self.step == cfg.steps):
                    save_checkpoint(self.out / "last.pt", self._state())
        bar.close()
        self.loader.close()
        summary = self._summary(history, skipped, examples, busy)
        if main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            self._plot(history)
        if writer is not None:
            writer.close()
        if self.dist.world > 1:
            dist.barrier()
        return summary

    def _validate(self) -> dict:
        if not self.val or not self.dist.main:
            return {}
        result = evaluate_model(self.model, self.val, self.size, self.dist.device, self.cfg.eval.batch_size)
        self.model.train()
        freeze_batchnorm(self.model, self.cfg.train.freeze_bn)
        scores = {f"val_{k}": v for k, v in result["summary"].items()}
        value = result["summary"].get(self.cfg.train.select_metric, -1.0)
        log.info("step %d validation: %s", self.step, scores)
        if value > self.best["value"]:
            self.best = {"metric": self.cfg.train.select_metric, "value": value, "step": self.step}
            save_checkpoint(self.out / "best.pt", self._state())
        return scores

    def _summary(self, history, skipped, examples, busy) -> dict:
        kind = "pairs" if self.pairs else "tuples"
        peak_cpu_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        summary = {
            "steps": self.step,
            "final_loss": history[-1]["loss"] if history else None,
            "best": self.best,
            "skipped_examples": skipped,
            f"{kind}_per_second": examples / busy if busy else None,
            "peak_cpu_memory_mb": round(peak_cpu_mb, 1),
            "device": str(self.dist.device),
            "world_size": self.dist.world,
            "model": {k: str(v) for k, v in self.model_info.items()},
        }
        if self.dist.device.type == "cuda":
            summary["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return summary

    def _plot(self, history: list[dict]) -> None:
        from training.evaluation.plots import plot_loss_curve

        if not history:
            return
        steps = [r["step"] for r in history]
        losses = [r["loss"] for r in history]
        plot_loss_curve(steps, losses, self.out / "loss.png")


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: no TensorBoard scalars (metrics.csv has them)")
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _read_history(path: Path, upto_step: int) -> list[dict]:
    """Rows of metrics.csv up to the resumed step; later rows (from a killed run) are dropped."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = [
            {k: float(v) if v not in ("", None) else None for k, v in r.items()} for r in csv.DictReader(f)
        ]
    rows = [r for r in rows if r["step"] <= upto_step]
    for r in rows:
        r["step"] = int(r["step"])
    path.unlink()
    for r in rows:
        _append_csv(path, r)
    return rows


def _append_csv(path: Path, row: dict) -> None:
    fields = ["step", "loss", "lr", "val_recall@1", "val_recall@5", "val_recall@10", "val_recall@20"]
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def setup_logging(out: Path | None, main: bool = True) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if out is not None and main:
        out.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(out / "train.log"))
    logging.basicConfig(
        level=logging.INFO if main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)  # it logs every instruction set it tries
