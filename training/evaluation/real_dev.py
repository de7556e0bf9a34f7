"""real_dev: fifty real photographs that tell a working descriptor from a broken one.

Synthetic training data can produce a model that scores well on renders and fails on cameras;
this small set of real revisits (Gardens Point day/night, SFU Mountain seasons) is the cheap
check against that. Layout: ``<subset>/pN/iK/*.jpg`` where every image under ``pN`` shows place
N. Scoring is leave-one-out: each image is a query against all the others, and it counts when
its nearest other image shows the same place. Evaluation only: never train on it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training.errors import UserError
from training.evaluation.baselines import raw_pixel_descriptors, sad_search
from training.evaluation.metrics import search
from vpr_ros.backends import create_backend
from vpr_ros.bundle import default_model_dir, load_bundle
from vpr_ros.preprocess import to_input_batch

ENV_VAR = "VPR_REAL_DEV"
SUBSETS = ("MatchingPairs", "MatchingTriplets")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
_PLACE = re.compile(r"p(\d+)")
_VIEW = re.compile(r"i(\d+)")


def default_real_dev_root() -> Path:
    """$VPR_REAL_DEV, else ``../shared/data/real_dev`` next to the repository."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real_dev"


def _numbered(folder: Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    found = [(m, p) for p in folder.iterdir() if p.is_dir() and (m := pattern.fullmatch(p.name))]
    return sorted((int(m.group(1)), p) for m, p in found)


def read_real_dev(root: str | Path | None = None, subset: str | None = None) -> tuple[list[Path], np.ndarray]:
    """Image paths and their place ids (the N of ``pN``), ordered by place, view and name.

    ``root`` is either a subset folder (holding ``pN``) or the real_dev folder above both subsets;
    in the latter case ``subset`` picks ``MatchingPairs`` or ``MatchingTriplets``.
    """
    root = default_real_dev_root() if root is None else Path(root)
    if not root.is_dir():
        raise UserError(f"real_dev folder {root} does not exist (set {ENV_VAR} or pass the folder)")
    if subset is not None:
        if subset not in SUBSETS:
            raise UserError(f"real_dev subset {subset!r} is not one of {', '.join(SUBSETS)}")
        root = root / subset
        if not root.is_dir():
            raise UserError(f"real_dev folder {root} does not exist")
    places = _numbered(root, _PLACE)
    if not places:
        present = [s for s in SUBSETS if (root / s).is_dir()]
        hint = f"; pick a subset: {', '.join(present)}" if present else ""
        raise UserError(f"real_dev folder {root} has no pN place folders{hint}")
    paths: list[Path] = []
    ids: list[int] = []
    for place, place_dir in places:
        for _, view_dir in _numbered(place_dir, _VIEW):
            images = sorted(p for p in view_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
            paths.extend(images)
            ids.extend([place] * len(images))
    if len(paths) < 2:
        raise UserError(f"real_dev folder {root} holds {len(paths)} images; leave-one-out needs 2 or more")
    return paths, np.asarray(ids, dtype=np.int64)


def _leave_one_out_recall(indices: np.ndarray, place_ids: np.ndarray) -> float:
    """Share of images whose best result other than themselves has their place id.

    Searching with k = 2 and skipping the image's own index (not simply the first column)
    stays right when a duplicate image ties with itself and the search lists it first.
    """
    correct = 0
    for i, row in enumerate(indices):
        other = row[(row != i) & (row >= 0)][0]
        correct += int(place_ids[other] == place_ids[i])
    return correct / len(indices)


def _checked_ids(descriptors: np.ndarray, place_ids: np.ndarray) -> np.ndarray:
    place_ids = np.asarray(place_ids).reshape(-1)
    if np.ndim(descriptors) != 2 or len(descriptors) != len(place_ids) or len(place_ids) < 2:
        raise ValueError(
            f"need [N, D] descriptors for N >= 2 images and N place ids, got {np.shape(descriptors)} "
            f"and {len(place_ids)}"
        )
    return place_ids


def real_dev_recall_at_1(descriptors: np.ndarray, place_ids: np.ndarray) -> float:
    """Leave-one-out recall@1 by cosine similarity of L2-normalised descriptors."""
    place_ids = _checked_ids(descriptors, place_ids)
    _, indices = search(descriptors, descriptors, 2)
    return _leave_one_out_recall(indices, place_ids)


def real_dev_recall_at_1_sad(descriptors: np.ndarray, place_ids: np.ndarray) -> float:
    """Leave-one-out recall@1 by smallest sum of absolute differences (the raw-pixel baseline)."""
    place_ids = _checked_ids(descriptors, place_ids)
    _, indices = sad_search(descriptors, descriptors, 2)
    return _leave_one_out_recall(indices, place_ids)


def _read_rgb(path: Path) -> np.ndarray:
    """RGB uint8 pixels of a file, EXIF orientation ignored as training's loader and the robot do."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise UserError(f"cannot read image {path}: missing, unreadable or not an image")
    return np.ascontiguousarray(bgr[..., ::-1])


def real_dev_table(root: str | Path | None = None, bundle_dir: str | Path | None = None) -> dict[str, Any]:
    """recall@1 on both subsets of a bundle (the shipped default one unless ``bundle_dir``), of its
    network before fine-tuning (ImageNet weights, no whitening) and of raw pixels.

    Fine-tuning on synthetic images can cost accuracy on real ones, so the bundle has to be
    compared with where it started, on the same pixels: both networks get the tensors of
    :func:`vpr_ros.preprocess.to_input_batch` at the bundle's input size. Returns
    ``{"bundle": {"path", "summary", "content_hash"}, "images": {subset: N}, "methods": {"bundle" |
    "imagenet" | "raw_pixels": {"label": str, "recall@1": {subset: float}}}}``.
    """
    import torch  # only here: the rest of this module reads real_dev and scores without torch

    from training.models import ModelConfig, build_model

    bundle = load_bundle(default_model_dir() if bundle_dir is None else bundle_dir)
    backend = create_backend(bundle, "onnxruntime")
    arch = bundle.meta.get("architecture", {})
    backbone, pooling = arch.get("backbone", "mobilenet_v2"), arch.get("pooling", "gem")
    network, info = build_model(ModelConfig(backbone=backbone, pooling=pooling, weights="imagenet"))
    if not info["pretrained"]:
        raise UserError(f"no ImageNet weights for {backbone} here ({info['weights']}): see README, Training")
    network.eval()
    name = "shipped default bundle" if bundle_dir is None else f"bundle {bundle.path}"
    size = f"{bundle.input.height}x{bundle.input.width}"
    methods = {
        "bundle": f"{name}, {bundle.descriptor_dim}-D, {backend.name} {backend.device}",
        "imagenet": f"{backbone}-{pooling}, ImageNet weights, not fine-tuned, {size}",
        "raw_pixels": "raw pixels (32x24 grey, patch-normalised, SAD)",
    }
    table: dict[str, Any] = {
        "bundle": {
            "path": str(bundle.path),
            "summary": bundle.summary(),
            "content_hash": bundle.content_hash,
        },
        "images": {},
        "methods": {key: {"label": label, "recall@1": {}} for key, label in methods.items()},
    }
    for subset in SUBSETS:
        paths, ids = read_real_dev(root, subset)
        images = [_read_rgb(path) for path in paths]
        with torch.no_grad():
            imagenet = network(torch.from_numpy(to_input_batch(images, bundle.input))).numpy()
        recall = {
            "bundle": real_dev_recall_at_1(backend.embed(images), ids),
            "imagenet": real_dev_recall_at_1(imagenet, ids),
            "raw_pixels": real_dev_recall_at_1_sad(raw_pixel_descriptors(paths), ids),
        }
        table["images"][subset] = len(paths)
        for key, value in recall.items():
            table["methods"][key]["recall@1"][subset] = value
    return table
