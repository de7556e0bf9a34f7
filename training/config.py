"""Training configuration: typed sections loaded from YAML, validated, overridable from the CLI.

A recipe is a YAML file with the sections below; ``key=value`` overrides (``train.steps=500``,
``model.backbone=resnet50``, ``data.train.cities=[cph,sf]``) are parsed as YAML values and applied
after the file. Unknown keys and wrong types are refused with one line naming the file and the
key, before anything is trained. The validated config is stored in every checkpoint, so a run
can be resumed or evaluated without the original file.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.errors import UserError

FORMATS = ("msls", "pittsburgh", "tbplaces", "trajectory", "vpr_folder")
LOSSES = ("gcl", "contrastive", "sare_joint", "sare_ind", "triplet")


@dataclass
class DataSource:
    """Where one dataset lives and which part of it to use.

    ``format``: msls (``root`` = MSLS root, ``cities``, ``split``), pittsburgh (``root``, ``split``,
    ``variant``), tbplaces (``root``, ``database_set``, ``query_set``), trajectory (``database`` and
    ``queries``: lists of rosbag2 folders), vpr_folder (``root`` = a ``query/`` + ``ref/`` image
    folder, ``layout`` pairs or route, ``frame_spacing_m`` and ``tolerance`` for a route,
    ``index_range`` [start, stop] to keep part of it: :mod:`training.datasets.vpr_folders`).
    ``query_tags`` keeps only the queries whose tag (MSLS sequence key, traverse name) is listed;
    ``query_conditions`` does the same by synthetic-world condition name (read from ``world.json``
    next to ``root``).
    """

    format: str = "msls"
    root: str = ""
    cities: list[str] | None = None
    split: str = "train"
    variant: str = "30k"
    database_set: str = ""
    query_set: str = ""
    database: list[str] | None = None
    queries: list[str] | None = None
    query_tags: list[str] | None = None
    query_conditions: list[str] | None = None
    layout: str = "pairs"
    frame_spacing_m: float = 10.0
    tolerance: int = 0
    index_range: list[int] | None = None


@dataclass
class DataConfig:
    """``train`` and every ``extra_train`` source are trained on together (labels never span two
    sources); ``val`` chooses the best checkpoint."""

    train: DataSource = field(default_factory=DataSource)
    extra_train: list[DataSource] = field(default_factory=list)
    val: DataSource | None = None
    cache_dir: str = "runs/cache"  # graded labels and images extracted from bags


@dataclass
class ModelSection:
    backbone: str = "mobilenet_v2"
    pooling: str = "gem"
    gem_p: float = 3.0
    netvlad_clusters: int = 64
    weights: str = "imagenet"
    train_blocks: int = 2
    whiten_dim: int | None = None
    input_size: list[int] = field(default_factory=lambda: [240, 320])  # H, W


@dataclass
class LabelConfig:
    """Graded FoV labels; None = the dataset's protocol (MSLS 50 m / 90 deg, TB-Places 3.5 m)."""

    radius_m: float | None = None
    fov_deg: float | None = None


@dataclass
class LossConfig:
    name: str = "gcl"
    margin: float | None = None  # None = the loss's paper default (GCL/contrastive 0.5, triplet 0.1)
    kernel: str = "gaussian"  # SARE


@dataclass
class SamplingConfig:
    """Graded batch composition (GCL, no mining) or NetVLAD-style hard-negative mining (SARE)."""

    strategy: str = "A"
    binary_threshold: float = 0.5  # contrastive with binary labels: psi >= t is a positive
    n_negatives: int = 10
    negative_pool: int = 1000
    refresh_every: int = 250  # optimizer steps between descriptor-cache refreshes


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    step_size: int = 1000  # StepLR, in optimizer steps
    gamma: float = 0.1
    l2_sp: float = 0.0  # weight of the L2-SP penalty towards the initial (pre-trained) weights


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32  # pairs (GCL/contrastive) or tuples (SARE/triplet) per optimizer step
    accumulation: int = 1  # micro-batches per step
    val_every: int = 100
    ckpt_every: int = 100
    seed: int = 0
    workers: int = 2  # image-loading threads
    amp: str = "auto"  # auto (CUDA only) | on | off
    device: str = "auto"  # auto | cpu | cuda
    select_metric: str = "recall@5"  # best checkpoint, as the GCL code does
    freeze_bn: bool = False  # all BatchNorm layers keep their (ImageNet) running statistics


@dataclass
class EvalConfig:
    recall_ns: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    pca_dims: list[int] = field(default_factory=list)
    batch_size: int = 32


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (dataclass, list[x], x | None, scalars)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _convert(value, inner[0], key, source)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{source}: {key} must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key, source)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{source}: {key} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is float and number:
        return float(value)
    ok = (
        isinstance(value, bool)
        if tp is bool
        else number and isinstance(value, int)
        if tp is int
        else isinstance(value, tp)
    )
    if not ok:
        raise UserError(f"{source}: {key} must be {_describe(tp)}, got {value!r}")
    return value


def _build(cls: type, values: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise UserError(f"{source}: unknown key '{where}' (known: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _convert(value, hints[name], f"{prefix}.{name}" if prefix else name, source)
    return cls(**kwargs)


def set_dotted(tree: dict, dotted: str, value: Any, source: str) -> None:
    """Set ``a.b.c`` in a nested dict, creating sections on the way."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"{source}: cannot set '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``key=value`` strings to (key, YAML-parsed value) pairs."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected key=value, e.g. train.steps=500")
        try:
            parsed.append((key.strip(), yaml.safe_load(raw)))
        except yaml.YAMLError:
            raise UserError(f"override {item!r}: value is not valid YAML") from None
    return parsed


def from_dict(tree: dict, source: str = "config") -> Config:
    """Validate a nested dict (YAML content, or the copy stored in a checkpoint)."""
    config = _build(Config, tree, "", source)
    validate(config, source)
    return config


def with_overrides(tree: dict, overrides: list[str], source: str) -> Config:
    """Apply ``key=value`` overrides to a config tree (e.g. a checkpoint's) and validate it."""
    tree = copy.deepcopy(tree)
    for key, value in parse_overrides(list(overrides)):
        set_dotted(tree, key, value, f"{source} (override {key})")
    return from_dict(tree, source)


def load_config(path: Path | str | None, overrides: list[str] = ()) -> Config:
    """Read a YAML recipe (None = defaults), apply ``key=value`` overrides, validate everything."""
    tree: dict = {}
    source = "config"
    if path is not None:
        source = f"config {path}"
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"{source}: file not found") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise UserError(f"{source}: not valid YAML{where}") from None
        if not isinstance(tree, dict):
            raise UserError(f"{source}: the top level must be a mapping of sections")
    return with_overrides(tree, overrides, source)


def validate(cfg: Config, source: str) -> None:
    """Range and choice checks that types alone cannot express."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(f"{source}: {message}")

    sources = [("data.train", cfg.data.train), ("data.val", cfg.data.val)]
    sources += [(f"data.extra_train[{i}]", src) for i, src in enumerate(cfg.data.extra_train)]
    for name, src in sources:
        if src is None:
            continue
        need(src.format in FORMATS, f"{name}.format must be one of {', '.join(FORMATS)}, got {src.format!r}")
        if src.format == "trajectory":
            need(
                bool(src.database) and bool(src.queries),
                f"{name}: trajectory needs database and queries bags",
            )
        else:
            need(bool(src.root), f"{name}.root is required for format {src.format}")
        if src.format == "vpr_folder":
            need(src.layout in ("pairs", "route"), f"{name}.layout must be pairs or route")
            need(src.frame_spacing_m > 0, f"{name}.frame_spacing_m must be > 0")
            need(src.tolerance >= 0, f"{name}.tolerance must be >= 0")
            need(
                src.index_range is None
                or (len(src.index_range) == 2 and 0 <= src.index_range[0] < src.index_range[1]),
                f"{name}.index_range must be [start, stop] with 0 <= start < stop",
            )
    need(cfg.loss.name in LOSSES, f"loss.name must be one of {', '.join(LOSSES)}, got {cfg.loss.name!r}")
    need(
        cfg.loss.kernel in ("gaussian", "cauchy", "exponential"),
        f"loss.kernel {cfg.loss.kernel!r} is unknown",
    )
    need(cfg.sampling.strategy in ("A", "B", "C", "D"), "sampling.strategy must be A, B, C or D")
    need(0 < cfg.sampling.binary_threshold <= 1, "sampling.binary_threshold must be in (0, 1]")
    need(cfg.optim.name in ("sgd", "adam"), f"optim.name must be sgd or adam, got {cfg.optim.name!r}")
    need(cfg.optim.lr > 0, "optim.lr must be > 0")
    need(cfg.optim.l2_sp >= 0, "optim.l2_sp must be >= 0")
    need(
        len(cfg.model.input_size) == 2 and min(cfg.model.input_size) >= 32,
        "model.input_size must be [H, W] >= 32",
    )
    t = cfg.train
    need(
        t.steps > 0 and t.batch_size > 0 and t.accumulation > 0,
        "train.steps, batch_size, accumulation must be > 0",
    )
    need(t.batch_size % t.accumulation == 0, "train.batch_size must be a multiple of train.accumulation")
    need(t.val_every > 0 and t.ckpt_every > 0, "train.val_every and train.ckpt_every must be > 0")
    need(t.amp in ("auto", "on", "off"), "train.amp must be auto, on or off")
    need(t.device in ("auto", "cpu", "cuda"), "train.device must be auto, cpu or cuda")
    need(t.select_metric.startswith("recall@"), "train.select_metric must look like recall@5")
    need(
        cfg.sampling.n_negatives > 0 and cfg.sampling.negative_pool >= cfg.sampling.n_negatives,
        "sampling.negative_pool must be >= sampling.n_negatives > 0",
    )
