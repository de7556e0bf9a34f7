"""``python -m training export``: a checkpoint -> a model bundle (``vpr_ros.bundle``), parity-checked.

The bundle holds the network twice, as ONNX (opset 17, dynamic batch; ONNX Runtime and TensorRT
run it) and as a ``torch.export`` program (the PyTorch reference backend), with normalisation,
pooling, L2 and the optional PCA-whitening inside both graphs. Before the bundle is moved into
place, ONNX Runtime and the exported program are run through the runtime's own backends on a
sample of images and compared with the PyTorch module: every descriptor must have cosine
similarity >= 0.9999 with the reference and the top-5 retrieval among the sample must agree.
A failed check leaves nothing at ``--out``.

Sources: a vpr_ros training checkpoint, or an official GCL release
(``MSLS_<backbone>_<pool>_480_<GCL|CL>.pth``, marialeyvallina/generalized_contrastive_loss), whose
state dict (``backbone.*``, ``pool.p``) loads into the same PlaceNet; GCL resizes to 480 x 640.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import Config
from training.data import load_sources
from training.engine import load_checkpoint, model_config, model_from_checkpoint
from training.errors import UserError
from training.models import ModelConfig, PlaceNet, build_model, fit_pca_whitening, load_gcl_state_dict
from vpr_ros.bundle import META_FILE, ONNX_FILE, SCHEMA, TORCH_FILE, content_hash, load_bundle, sha256_file
from vpr_ros.errors import BundleError, InputError
from vpr_ros.preprocess import to_input_batch

log = logging.getLogger(__name__)

OPSET = 17  # TensorRT 10.0 parses opsets 9-20; 17 is the conservative common choice (ROS_NOTES §5)
INPUT_NAME, OUTPUT_NAME = "images", "descriptors"
MIN_COSINE = 0.9999
TOP_K = 5
SIM_TIE = 1e-4  # top-5 lists may differ only between candidates this close in the reference
GCL_INPUT_SIZE = (480, 640)  # GCL's transforms.Resize((480, 640))
_GCL_NAME = re.compile(
    r"(?P<data>[A-Za-z0-9]+)_(?P<backbone>[a-z0-9_]+?)_(?P<pool>GeM|avg|NetVLAD)_(?P<size>\d+)_"
)
_GCL_BACKBONES = {"resnext": "resnext101_32x8d"}  # GCL's names that differ from torchvision's


class ExportError(UserError):
    """The exported graphs disagree with the PyTorch model (parity check failed)."""


@dataclass
class Source:
    """A network to export and what model.json should say about where it came from."""

    model: PlaceNet
    input_size: tuple[int, int]
    architecture: dict[str, Any]
    training: dict[str, Any]
    data_roots: dict[str, list[Path]]  # 'train' / 'val' image paths the recipe names, when present
    data_description: dict[str, str | None] = field(default_factory=dict)  # what those paths are
    recipe: Config | None = None  # the training config, where the source has one


# ----------------------------------------------------------------------------- sources


def _dataset_paths(cfg, section: str) -> list[Path]:
    """Images of the recipe's training sources (data.train and data.extra_train, database and
    queries: what PCA-whitening is fitted on) or of its data.val database (the parity sample),
    when they exist on this machine."""
    if section == "train":
        sources, sides = [cfg.data.train, *cfg.data.extra_train], ("database", "queries")
    else:
        sources, sides = [cfg.data.val] if cfg.data.val is not None else [], ("database",)
    try:
        datasets = load_sources(sources, Path(cfg.data.cache_dir))
    except (UserError, OSError) as exc:
        log.info("data.%s not usable for export samples: %s", section, exc)
        return []
    return [p for d in datasets for side in sides for p in getattr(d, side).paths]


def from_checkpoint(path: Path) -> Source:
    """A vpr_ros training checkpoint (weights_only load: a pickle of arbitrary objects is refused)."""
    state = load_checkpoint(path)
    model, cfg = model_from_checkpoint(state)
    m = cfg.model
    return _recipe_source(
        model,
        cfg,
        {
            "source": "vpr_ros training checkpoint",
            "checkpoint": path.name,
            "checkpoint_sha256": sha256_file(path),
            "step": int(state.get("step", 0)),
            "loss": cfg.loss.name,
            "train_data": _describe_sources([cfg.data.train, *cfg.data.extra_train]),
            "val_data": _describe_source(cfg.data.val),
            "selected_on": f"{cfg.train.select_metric} on data.val" if path.name == "best.pt" else None,
            "weights_init": m.weights,
        },
    )


def _recipe_source(model: PlaceNet, cfg: Config, training: dict[str, Any]) -> Source:
    """A Source for a network made from recipe ``cfg``: its input size and architecture, and the
    recipe's images for the PCA fit and the parity sample."""
    m, images = cfg.model, recipe_images(cfg)
    return Source(
        model=model,
        input_size=(int(m.input_size[0]), int(m.input_size[1])),
        architecture={"backbone": m.backbone, "pooling": m.pooling, "pool_dim": model.pool_dim},
        training=training,
        data_roots=images.data_roots,
        data_description=images.data_description,
        recipe=cfg,
    )


def interpolate_with_start(source: Source, alpha: float) -> None:
    """Replace the fine-tuned weights by ``(1 - alpha) * start + alpha * fine-tuned``, where start is
    the recipe's pre-trained (ImageNet) network: WiSE-FT (Wortsman et al., "Robust fine-tuning of
    zero-shot models", CVPR 2022, eq. 1). Fine-tuning on a narrow domain (the synthetic town)
    trades robustness elsewhere (real cameras) for accuracy there; interpolating the weights keeps
    most of both, and ``alpha`` chooses the trade-off without training again. BatchNorm statistics
    stay the pre-trained ones under ``train.freeze_bn``, so the two networks share them."""
    if not 0.0 < alpha <= 1.0:
        raise UserError(f"--interpolate must be in (0, 1], got {alpha}")
    if source.recipe is None:
        raise UserError("--interpolate needs a vpr_ros training checkpoint (--checkpoint)")
    start, info = build_model(model_config(source.recipe))
    if not info["pretrained"]:
        raise UserError(f"--interpolate: the starting weights are not available here ({info['weights']})")
    begin = start.state_dict()
    mixed = {}
    for key, tuned in source.model.state_dict().items():
        first = begin.get(key)
        usable = first is not None and first.shape == tuned.shape and tuned.is_floating_point()
        mixed[key] = (1.0 - alpha) * first + alpha * tuned if usable else tuned
    source.model.load_state_dict(mixed)
    source.training["weight_interpolation"] = {
        "alpha": alpha,
        "start": info["weights"],
        "method": "WiSE-FT (Wortsman et al. 2022): (1 - alpha) * start + alpha * fine-tuned",
    }


@dataclass
class RecipeImages:
    """A recipe's image paths ('train': every training source, both sides; 'val': the data.val
    database) and what they are, for the PCA fit and the parity sample."""

    data_roots: dict[str, list[Path]]
    data_description: dict[str, str | None]


def recipe_images(cfg: Config) -> RecipeImages:
    """The images recipe ``cfg`` names that exist on this machine, and what they are."""
    return RecipeImages(
        data_roots={"train": _dataset_paths(cfg, "train"), "val": _dataset_paths(cfg, "val")},
        data_description={
            "train": _describe_sources([cfg.data.train, *cfg.data.extra_train]),
            "val": _describe_source(cfg.data.val),
        },
    )


def untrained(cfg: Config) -> Source:
    """The recipe's network as training would start it: its backbone with the pre-trained (ImageNet)
    weights and its pooling, not fine-tuned. This is the off-the-shelf baseline every fine-tuned
    model has to beat, and a model in its own right (with PCA-whitening fitted on the recipe's
    training images)."""
    config = model_config(cfg)
    model, info = build_model(config)
    if cfg.model.weights != "none" and not info["pretrained"]:
        raise UserError(f"no {cfg.model.weights} weights for {config.backbone} here ({info['weights']})")
    m = cfg.model
    return _recipe_source(
        model,
        cfg,
        {
            "source": f"{m.weights} weights, not fine-tuned ({info['weights']})",
            "checkpoint": None,
            "step": 0,
            "loss": None,
            "train_data": None,
            "weights_init": m.weights,
        },
    )


def _describe_sources(sources) -> str:
    return " + ".join(text for text in map(_describe_source, sources) if text)


def _describe_source(src) -> str | None:
    if src is None:
        return None
    if src.format == "vpr_folder":
        span = "" if src.index_range is None else f" [{src.index_range[0]}:{src.index_range[1]}]"
        return f"vpr_folder {src.root}{span} ({src.layout})"
    tags = src.query_conditions or src.query_tags
    return f"{src.format} {src.root or ''} {src.split}" + (f" queries {','.join(tags)}" if tags else "")


def parse_gcl_name(name: str) -> tuple[str, str, int] | None:
    """(backbone, pooling, size) from a released GCL file name such as MSLS_resnet50_GeM_480_GCL.pth."""
    match = _GCL_NAME.match(name)
    if match is None:
        return None
    backbone = _GCL_BACKBONES.get(match["backbone"], match["backbone"])
    return backbone, match["pool"].lower(), int(match["size"])


def from_gcl(path: Path, backbone: str | None, pooling: str | None) -> Source:
    """An official GCL checkpoint: its layout (``model_state_dict`` / ``state_dict`` / bare, with or
    without ``module.``) loads into PlaceNet; the architecture comes from the file name unless given."""
    if not path.is_file():
        raise UserError(f"GCL checkpoint {path}: file not found")
    parsed = parse_gcl_name(path.name)
    backbone = backbone or (parsed and parsed[0])
    pooling = pooling or (parsed and parsed[1])
    if not backbone or not pooling:
        raise UserError(
            f"GCL checkpoint {path}: cannot read the architecture from the file name "
            "(expected MSLS_<backbone>_<GeM|avg>_480_<GCL|CL>.pth); pass --backbone and --pooling"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusals, truncated zips, foreign formats
        raise UserError(
            f"GCL checkpoint {path}: not a readable tensor checkpoint ({type(exc).__name__})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"GCL checkpoint {path}: holds a {type(checkpoint).__name__}, not a state dict")
    model, info = build_model(ModelConfig(backbone=backbone, pooling=pooling, weights="none", train_blocks=0))
    count = load_gcl_state_dict(model, checkpoint)
    log.info("GCL checkpoint %s: %d tensors loaded into %s-%s", path.name, count, backbone, pooling)
    return Source(
        model=model,
        input_size=GCL_INPUT_SIZE,
        architecture={"backbone": backbone, "pooling": pooling, "pool_dim": model.pool_dim},
        training={
            "source": "official GCL release (marialeyvallina/generalized_contrastive_loss)",
            "checkpoint": path.name,
            "checkpoint_sha256": sha256_file(path),
            "step": int(checkpoint["step"]) if isinstance(checkpoint.get("step"), int) else None,
            "loss": "gcl"
            if path.stem.endswith("_GCL")
            else ("contrastive" if path.stem.endswith("_CL") else None),
            "train_data": "MSLS train" if path.name.startswith("MSLS") else None,
            "mean": list(info["mean"]),
            "std": list(info["std"]),
        },
        data_roots={},
    )


# ----------------------------------------------------------------------------- images


def _read_rgb(path: Path) -> np.ndarray | None:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return None if bgr is None else np.ascontiguousarray(bgr[..., ::-1])


def image_folder(path: Path) -> list[Path]:
    if not path.is_dir():
        raise UserError(f"image folder {path}: not a directory")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})
    if not files:
        raise UserError(f"image folder {path}: holds no .jpg/.png/.bmp images")
    return files


def _evenly(paths: list[Path], count: int) -> list[Path]:
    if len(paths) <= count:
        return list(paths)
    return [paths[i] for i in np.linspace(0, len(paths) - 1, count).round().astype(int)]


def procedural_images(count: int, seed: int = 0, size: tuple[int, int] = (240, 320)) -> list[np.ndarray]:
    """Seeded multi-scale noise images: a parity sample when no dataset is at hand (official GCL
    checkpoints). Not places, but they exercise every layer with natural-looking statistics."""
    rng = np.random.default_rng(seed)
    import cv2

    images = []
    for _ in range(count):
        acc = np.zeros((*size, 3), np.float32)
        for octave in (4, 8, 16, 32, 64):
            noise = rng.random((octave * size[0] // size[1] + 1, octave, 3), dtype=np.float32)
            acc += (
                cv2.resize(noise, (size[1], size[0]), interpolation=cv2.INTER_CUBIC) * (64.0 / octave) ** 0.5
            )
        acc = (acc - acc.min()) / (np.ptp(acc) + 1e-6)
        images.append((acc * 255).astype(np.uint8))
    return images


def sample_images(paths: list[Path], count: int) -> list[np.ndarray]:
    images = [img for img in (_read_rgb(p) for p in _evenly(paths, count)) if img is not None]
    if not images:
        raise UserError("none of the sample images could be read")
    return images


# ----------------------------------------------------------------------------- export


def fit_whitening(model: PlaceNet, images: list[np.ndarray], size: tuple[int, int], dim: int) -> int:
    """PCA-whitening fitted on the pooled descriptors of ``images`` and folded into the model."""
    from vpr_ros.bundle import InputSpec

    spec = InputSpec(INPUT_NAME, size[0], size[1], "stretch", "area")
    with torch.no_grad():
        descriptors = torch.cat(
            [
                model.unwhitened(torch.from_numpy(to_input_batch(images[i : i + 16], spec)))
                for i in range(0, len(images), 16)
            ]
        ).numpy()
    mean, projection = fit_pca_whitening(descriptors, dim)
    model.set_whitening(mean, projection)
    return len(images)


def _write_onnx(model: PlaceNet, size: tuple[int, int], path: Path) -> None:
    example = torch.rand(2, 3, *size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def _write_program(model: PlaceNet, size: tuple[int, int], path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (torch.rand(2, 3, *size),), dynamic_shapes={"images": {0: batch}})
    program.example_inputs = None  # 1 MB of random pixels nobody needs, and the archive's only pickle
    torch.export.save(program, str(path))


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _top_k(descriptors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = descriptors @ descriptors.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, sims


def parity_check(model: PlaceNet, bundle_dir: Path, images: list[np.ndarray]) -> dict[str, Any]:
    """Every backend of the runtime that can run here vs the PyTorch module, on the same inputs."""
    from vpr_ros.backends.onnxruntime import OnnxRuntimeBackend
    from vpr_ros.backends.torch import TorchBackend

    bundle = load_bundle(bundle_dir)
    batch = to_input_batch(images, bundle.input)
    with torch.no_grad():
        reference = torch.cat(
            [model(torch.from_numpy(batch[i : i + 8])) for i in range(0, len(batch), 8)]
        ).numpy()
    k = min(TOP_K, len(images) - 1)
    ref_order, ref_sims = _top_k(reference, k)
    report: dict[str, Any] = {"images": len(images), "min_cosine_required": MIN_COSINE, "top_k": k}
    backends = [OnnxRuntimeBackend(bundle, "cpu", max_batch=8)]
    if bundle.torch_path is not None:
        backends.append(TorchBackend(bundle, "cpu", max_batch=8))
    for backend in backends:
        out = backend.embed_batch(batch)
        cosine = np.sum(out * reference, axis=1) / (
            np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12
        )
        order, _ = _top_k(out, k)
        exact = int(np.sum(np.all(order == ref_order, axis=1)))
        # A swap is allowed only between candidates the reference itself scores as equal (within SIM_TIE).
        retrieved = np.take_along_axis(ref_sims, order, axis=1)
        expected = np.take_along_axis(ref_sims, ref_order, axis=1)
        equivalent = bool(np.all(np.abs(retrieved - expected) <= SIM_TIE))
        report[backend.name] = {
            "min_cosine": float(cosine.min()),
            "max_abs_diff": float(np.abs(out - reference).max()),
            "top_k_identical": f"{exact}/{len(images)}",
            "top_k_equivalent": equivalent,
        }
        if cosine.min() < MIN_COSINE or not equivalent:
            raise ExportError(
                f"parity check failed for {backend.name}: min cosine {cosine.min():.6f} "
                f"(need >= {MIN_COSINE}), top-{k} lists identical for {exact}/{len(images)} images"
            )
    return report


def _replace_dir(staging: Path, out: Path) -> None:
    """Move the finished bundle into place; an existing ``out`` (empty, or --overwrite) goes last."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old)


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out}: exists and is not empty (pass --overwrite to replace it)")


def export_bundle(
    source: Source,
    out: Path,
    parity_images: list[np.ndarray],
    parity_origin: str,
    pca: tuple[int, list[np.ndarray], str] | None = None,
    similarity_threshold: float | None = None,
    overwrite: bool = False,
    torch_program: bool = True,
    threshold_origin: str | None = None,
    guard: Callable[[Path], dict] | None = None,
    threshold_set: Path | None = None,
) -> dict[str, Any]:
    """Write the bundle for ``source`` at ``out`` (atomically) and return its model.json.

    ``pca`` = (dim, images, origin) fits PCA-whitening on those images first. ``torch_program``
    False leaves out ``model.pt2`` (half the size; the PyTorch backend is then unavailable).
    ``guard`` scores the finished bundle (still in its staging directory) against the model it
    started from and raises to refuse it (:func:`training.guard.compare`); what it returns is
    recorded in model.json. ``threshold_set`` (an image-folder set whose ground truth leaves some
    queries without a match) replaces ``similarity_threshold`` by :func:`calibrate_threshold`.
    """
    out = Path(out)
    check_out(out, overwrite)
    model = source.model.cpu().eval()
    h, w = source.input_size
    whitening: dict[str, Any] = {"dim": None}
    if pca is not None:
        dim, images, origin = pca
        count = fit_whitening(model, images, source.input_size, dim)
        whitening = {"dim": dim, "fitted_on": origin, "samples": count}
    elif model.whiten is not None:
        whitening = {"dim": model.output_dim, "fitted_on": "stored in the checkpoint"}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _write_onnx(model, source.input_size, staging / ONNX_FILE)
        files_written = [ONNX_FILE]
        if torch_program:
            _write_program(model, source.input_size, staging / TORCH_FILE)
            files_written.append(TORCH_FILE)
        input_spec = {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "channels": "RGB",
            "value_range": [0.0, 1.0],
            "height": h,
            "width": w,
            "resize": "stretch",
            "interpolation": "area",
            "batch": "dynamic",
        }
        output_spec = {"name": OUTPUT_NAME, "dim": model.output_dim, "normalized": "l2", "dtype": "float32"}
        files = {
            name: {"sha256": sha256_file(staging / name), "bytes": (staging / name).stat().st_size}
            for name in files_written
        }
        meta = {
            "schema": SCHEMA,
            "content_hash": content_hash(files[ONNX_FILE]["sha256"], input_spec, output_spec),
            "files": files,
            "input": input_spec,
            "output": output_spec,
            "normalization": {
                "mean": model.normalize.mean.flatten().tolist(),
                "std": model.normalize.std.flatten().tolist(),
                "in_graph": True,
            },
            "architecture": {**source.architecture, "whitening": whitening},
            "training": source.training,
            "localization": {"similarity_threshold": similarity_threshold, "chosen_on": threshold_origin},
            "export": {
                "tool": "python -m training export",
                "opset": OPSET,
                "versions": _versions(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        }
        _write_json(staging / META_FILE, meta)
        meta["parity"] = {"sample": parity_origin, **parity_check(model, staging, parity_images)}
        _write_json(staging / META_FILE, meta)
        if guard is not None:
            meta["guard"] = guard(staging)
            _write_json(staging / META_FILE, meta)
        if threshold_set is not None:
            meta["localization"] = calibrate_threshold(staging, threshold_set)
            _write_json(staging / META_FILE, meta)
        _fsync_dir(staging)
        _replace_dir(staging, out)
    except BundleError as exc:
        raise ExportError(f"the bundle just written does not read back: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def calibrate_threshold(bundle_dir: Path, folder: Path) -> dict[str, Any]:
    """model.json's ``localization``: the best-F1 "unknown place" threshold of the bundle on a real
    image-folder set whose ground truth leaves some queries without a match (distractors), as
    ``vpr-bench`` computes it. Without distractors the threshold would only be tuned to refuse
    wrong top-1 results, never places that are not in the map."""
    from vpr_ros.evaluation.bench import evaluate, model_method
    from vpr_ros.evaluation.image_folders import read_dataset

    try:
        dataset = read_dataset(folder)
    except InputError as exc:
        raise UserError(f"--threshold-set: {exc}") from None
    distractors = int((~dataset.has_match).sum())
    if not distractors or distractors == len(dataset.queries):
        raise UserError(
            f"--threshold-set {folder}: needs queries with and without a match in ref/ "
            f"({distractors} of {len(dataset.queries)} have none)"
        )
    report = evaluate(dataset, model_method(bundle_dir, "onnxruntime", quiet=True)).report
    best = report["precision_recall"]["best"]
    return {
        "similarity_threshold": round(best["threshold"], 4),
        "chosen_on": f"best F1 on {folder} ({len(dataset.queries)} queries, {distractors} without a match): "
        f"precision {best['precision']:.3f}, recall {best['recall']:.3f}, F1 {best['f1']:.3f}",
    }


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        with open(child, "rb") as f:
            os.fsync(f.fileno())
