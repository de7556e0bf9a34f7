"""The model bundle: the one artifact between training and the robot (DESIGN.md, "Model bundle").

A bundle is a directory::

    model.onnx    float32 images [N, 3, H, W] in [0, 1] (RGB) -> L2-normalised descriptors [N, D];
                  normalisation, pooling, L2 and PCA-whitening are inside the graph
    model.pt2     the same network as a ``torch.export`` program (the PyTorch reference backend)
    model.json    everything the runtime needs (schema below), with each file's sha256
    engines/      TensorRT engines built on the target device (``vpr_ros.trt``), never shipped

``model.json`` names its schema (:data:`SCHEMA`); a bundle of another schema, a missing file or a
file whose sha256 differs from the one recorded is refused with a :class:`BundleError`, so a robot
never runs half a bundle. ``content_hash`` identifies what the network computes (ONNX bytes plus
the input and output contract); place maps record it and refuse to be searched with another model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpr_ros.errors import BundleError
from vpr_ros.io.fileio import require

SCHEMA = "vpr_ros.model_bundle/1"
ONNX_FILE = "model.onnx"
TORCH_FILE = "model.pt2"
META_FILE = "model.json"
ENGINE_DIR = "engines"
RESIZE_POLICIES = ("stretch",)  # resize to exactly H x W, aspect ratio not kept (GCL's Resize((H, W)))
INTERPOLATIONS = ("area",)  # cv2.INTER_AREA, what training.datasets.images uses
_CHUNK = 1 << 20


def default_model_dir() -> Path:
    """The bundle shipped in the package: MobileNetV2-GeM fine-tuned with GCL on the synthetic
    world, PCA-whitened to 256-D (README, "The default model", has the command that makes it)."""
    return Path(__file__).resolve().parent / "models" / "default"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(onnx_sha256: str, input_spec: dict[str, Any], output_spec: dict[str, Any]) -> str:
    """What a descriptor depends on: the graph's bytes and the input/output contract (not dates,
    file names or training notes), so re-exporting the same network gives the same hash."""
    canonical = json.dumps(
        {"onnx_sha256": onnx_sha256, "input": input_spec, "output": output_spec}, sort_keys=True
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class InputSpec:
    """How images become the network's input tensor."""

    name: str
    height: int
    width: int
    resize: str
    interpolation: str

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width


@dataclass(frozen=True)
class ModelBundle:
    """A bundle read from disk and checked; ``meta`` is the full ``model.json``."""

    path: Path
    meta: dict[str, Any]
    input: InputSpec
    output_name: str
    descriptor_dim: int
    content_hash: str
    onnx_sha256: str

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def torch_path(self) -> Path | None:
        return self.path / TORCH_FILE if TORCH_FILE in self.meta["files"] else None

    @property
    def engine_dir(self) -> Path:
        return self.path / ENGINE_DIR

    @property
    def similarity_threshold(self) -> float | None:
        """The "unknown place" threshold suggested at export (None: none was calibrated)."""
        value = self.meta.get("localization", {}).get("similarity_threshold")
        return None if value is None else float(value)

    def summary(self) -> str:
        arch = self.meta.get("architecture", {})
        return (
            f"{arch.get('backbone', '?')}-{arch.get('pooling', '?')} {self.descriptor_dim}-D at "
            f"{self.input.height}x{self.input.width} ({self.content_hash[:15]})"
        )


def _field(mapping: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    return require(mapping, key, kind, where, BundleError)


def _positive(mapping: dict, key: str, where: str) -> int:
    value = _field(mapping, key, int, where)
    if value < 1:
        raise BundleError(f"{where}: {key!r} must be >= 1, got {value}")
    return value


def read_meta(directory: Path) -> dict[str, Any]:
    """``model.json`` of a bundle directory, parsed, with its schema checked first."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"model bundle {directory}: not a directory")
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise BundleError(f"model bundle {directory}: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"model bundle {directory}: {META_FILE} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"model bundle {directory}: {META_FILE} must hold a JSON object")
    schema = meta.get("schema")
    if schema != SCHEMA:
        raise BundleError(
            f"model bundle {directory}: {META_FILE} has schema {schema!r}; this vpr_ros reads {SCHEMA!r} "
            "(re-export the checkpoint with this version's 'python -m training export')"
        )
    return meta


def load_bundle(directory: Path | str, verify: bool = True) -> ModelBundle:
    """Read and check a bundle. ``verify`` re-hashes every file against ``model.json`` (about a
    second per 100 MB); only skip it for files just written by this process."""
    directory = Path(directory).expanduser()
    meta = read_meta(directory)
    where = f"model bundle {directory}: {META_FILE}"
    files = _field(meta, "files", dict, where)
    if ONNX_FILE not in files:
        raise BundleError(f"{where}: 'files' does not list {ONNX_FILE}")
    for name, entry in files.items():
        if "/" in name or name.startswith("."):
            raise BundleError(f"{where}: file name {name!r} is not a plain file name")
        recorded = _field(entry, "sha256", str, f"{where} files.{name}")
        path = directory / name
        if not path.is_file():
            raise BundleError(f"model bundle {directory}: {name} is missing")
        if verify and sha256_file(path) != recorded:
            raise BundleError(
                f"model bundle {directory}: {name} is corrupt (sha256 differs from {META_FILE}); re-export it"
            )
    inp = _field(meta, "input", dict, where)
    spec = InputSpec(
        name=_field(inp, "name", str, f"{where} input"),
        height=_positive(inp, "height", f"{where} input"),
        width=_positive(inp, "width", f"{where} input"),
        resize=_field(inp, "resize", str, f"{where} input"),
        interpolation=_field(inp, "interpolation", str, f"{where} input"),
    )
    if spec.resize not in RESIZE_POLICIES:
        raise BundleError(f"{where}: input resize {spec.resize!r} is unknown ({', '.join(RESIZE_POLICIES)})")
    if spec.interpolation not in INTERPOLATIONS:
        raise BundleError(
            f"{where}: input interpolation {spec.interpolation!r} is unknown ({', '.join(INTERPOLATIONS)})"
        )
    out = _field(meta, "output", dict, where)
    onnx_sha = files[ONNX_FILE]["sha256"]
    recorded_hash = _field(meta, "content_hash", str, where)
    expected_hash = content_hash(onnx_sha, inp, out)
    if recorded_hash != expected_hash:
        raise BundleError(f"{where}: content_hash does not match the ONNX file and input/output contract")
    return ModelBundle(
        path=directory,
        meta=meta,
        input=spec,
        output_name=_field(out, "name", str, f"{where} output"),
        descriptor_dim=_positive(out, "dim", f"{where} output"),
        content_hash=recorded_hash,
        onnx_sha256=onnx_sha,
    )
