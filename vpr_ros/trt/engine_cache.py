"""The TensorRT engine cache: one engine per GPU, TensorRT version, precision, profile and ONNX file.

An engine is compiled for one GPU architecture and one TensorRT build; one built elsewhere fails
to load at best and computes wrong descriptors at worst. So each engine is stored under a name
that says what it was built for::

    <gpu-slug>-sm<cc>_trt<major.minor.patch>_<fp32|fp16|int8>_b<min>-<opt>-<max>_<H>x<W>_<onnx8>.engine

next to a JSON sidecar (same name, ``.json``) recording the full key field by field (GPU UUID
and full TensorRT version included), the build settings and the engine's sha256. :func:`lookup`
returns an engine only when all of it matches this machine: a stale or foreign engine is rebuilt,
never loaded. :func:`store` writes atomically (temp file in the same directory, fsync, rename,
the sidecar last), so a crash leaves no valid-looking entry; :func:`engine_lock` serialises
builds, so two nodes starting together build an engine once.

Neither TensorRT nor PyTorch is imported here (PyTorch only inside :func:`gpu_identity` and
:func:`cuda_versions`), so the cache logic runs and is tested on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from vpr_ros.bundle import ModelBundle, sha256_file
from vpr_ros.errors import BackendError, InputError
from vpr_ros.io.fileio import fsync_dir

SIDECAR_SCHEMA = "vpr_ros.trt_engine/1"
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"
# Building a large engine on a Jetson takes many minutes; a second node waits that long for it.
DEFAULT_LOCK_TIMEOUT_S = 3600.0
_NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")  # absent on Jetson
_ABSENT = "absent"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuIdentity:
    """The GPU an engine is built for: name, compute capability ("89" for sm_89) and UUID."""

    name: str
    compute_capability: str
    uuid: str

    @property
    def slug(self) -> str:
        """The name as a file-name fragment: "NVIDIA GeForce RTX 4090" -> "nvidia-geforce-rtx-4090"."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        return slug[:48].rstrip("-") or "gpu"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; two engines with equal keys are interchangeable."""

    gpu: GpuIdentity
    trt_version: str  # tensorrt.__version__ as installed, compared in full
    precision: str
    batch: tuple[int, int, int]  # optimization profile: min, opt, max batch size
    height: int
    width: int
    onnx_sha256: str

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"precision {self.precision!r} is unknown ({', '.join(PRECISIONS)})")
        low, opt, high = self.batch
        if not 1 <= low <= opt <= high:
            raise InputError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.batch}")
        short_version(self.trt_version)  # refuses a version string we could not name files with

    @property
    def trt_major(self) -> int:
        return int(short_version(self.trt_version).split(".")[0])

    def filename(self) -> str:
        low, opt, high = self.batch
        return (
            f"{self.gpu.slug}-sm{self.gpu.compute_capability}_trt{short_version(self.trt_version)}_"
            f"{self.precision}_b{low}-{opt}-{high}_{self.height}x{self.width}_{self.onnx_sha256[:8]}{ENGINE_SUFFIX}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The key as recorded in the sidecar (JSON types: the batch profile is a list)."""
        return {
            "gpu_name": self.gpu.name,
            "compute_capability": self.gpu.compute_capability,
            "gpu_uuid": self.gpu.uuid,
            "trt_version": self.trt_version,
            "precision": self.precision,
            "batch": list(self.batch),
            "height": self.height,
            "width": self.width,
            "onnx_sha256": self.onnx_sha256,
        }

    def describe(self) -> str:
        """One line for logs, diagnostics and the CLI."""
        low, opt, high = self.batch
        return (
            f"{self.gpu.name} sm{self.gpu.compute_capability} ({self.gpu.uuid}), "
            f"TensorRT {self.trt_version}, {self.precision}, batch {low}/{opt}/{high}, "
            f"{self.height}x{self.width}, onnx {self.onnx_sha256[:12]}"
        )


def short_version(version: str) -> str:
    """``major.minor.patch`` of a TensorRT version string ("10.3.0.26" -> "10.3.0")."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        raise BackendError(f"cannot read the TensorRT version {version!r}")
    return f"{match[1]}.{match[2]}.{match[3] or 0}"


def engine_key(
    bundle: ModelBundle,
    gpu: GpuIdentity,
    trt_version: str,
    precision: str,
    max_batch: int,
    opt_batch: int = 1,
) -> EngineKey:
    """The key of ``bundle``'s engine on ``gpu``: profile min 1 / opt ``opt_batch`` (1 = live
    localization) / max ``max_batch`` (batched mapping), at the bundle's input size."""
    return EngineKey(
        gpu=gpu,
        trt_version=trt_version,
        precision=precision,
        batch=(1, opt_batch, max_batch),
        height=bundle.input.height,
        width=bundle.input.width,
        onnx_sha256=bundle.onnx_sha256,
    )


def sidecar_path(engine: Path) -> Path:
    return engine.with_suffix(SIDECAR_SUFFIX)


def lock_path(cache_dir: Path, key: EngineKey) -> Path:
    return Path(cache_dir) / f".{key.filename()}.lock"


def timing_cache_path(cache_dir: Path, key: EngineKey) -> Path:
    """One timing cache per GPU model and TensorRT version: it cuts rebuilds (other precisions,
    other batch sizes, a new ONNX) from minutes to seconds and is meaningless anywhere else."""
    return (
        Path(cache_dir)
        / f"{key.gpu.slug}-sm{key.gpu.compute_capability}_trt{short_version(key.trt_version)}.timing"
    )


def calibration_cache_path(cache_dir: Path, key: EngineKey, calibration_sha256: str) -> Path:
    """TensorRT 10's INT8 calibration cache: per network, input size and calibration set."""
    name = f"{key.onnx_sha256[:8]}_{key.height}x{key.width}_calib-{calibration_sha256[:12]}.cache"
    return Path(cache_dir) / name


# --- lookup ---------------------------------------------------------------------------------------


def lookup(cache_dir: Path, key: EngineKey, require: Mapping[str, Any] | None = None) -> Path | None:
    """The cached engine for ``key``, or None (with the reason logged) when there is none that is
    safe to load. ``require`` adds build settings the sidecar must record (for instance the INT8
    calibration-set hash when the caller has a calibration set)."""
    engine = Path(cache_dir) / key.filename()
    problem = entry_problem(engine, key, require)
    if problem is None:
        log.debug("TensorRT engine cache hit: %s", engine)
        return engine
    if problem == _ABSENT:
        log.info("no cached TensorRT engine %s in %s", engine.name, cache_dir)
        _explain_siblings(Path(cache_dir), key)
    else:
        log.warning("TensorRT engine %s is not used (%s): it will be rebuilt, never loaded", engine, problem)
    return None


def entry_problem(engine: Path, key: EngineKey, require: Mapping[str, Any] | None = None) -> str | None:
    """Why the cache entry at ``engine`` must not be loaded for ``key`` (None: it may)."""
    if not engine.is_file():
        return _ABSENT if not sidecar_path(engine).exists() else "incomplete: the sidecar has no engine file"
    meta, problem = read_sidecar(sidecar_path(engine))
    if meta is None:
        return problem
    problem = key_mismatch(meta["key"], key) or _settings_mismatch(meta, require)
    if problem:
        return problem
    if sha256_file(engine) != meta["engine_sha256"]:
        return "corrupt: the engine's sha256 differs from its sidecar (truncated or modified)"
    return None


def read_sidecar(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(sidecar, "") or (None, why it cannot be used)."""
    if not path.is_file():
        return None, "incomplete: no sidecar (an interrupted build?)"
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"corrupt sidecar {path.name} ({exc})"
    if not isinstance(meta, dict) or meta.get("schema") != SIDECAR_SCHEMA:
        schema = meta.get("schema") if isinstance(meta, dict) else None
        return None, f"sidecar schema {schema!r}, this vpr_ros reads {SIDECAR_SCHEMA!r}"
    if not isinstance(meta.get("key"), dict) or not isinstance(meta.get("engine_sha256"), str):
        return None, f"corrupt sidecar {path.name} (no key or engine_sha256)"
    return meta, ""


def key_mismatch(recorded: Mapping[str, Any], key: EngineKey) -> str | None:
    """The first difference between a sidecar's key and ``key``, worded for the log (None: same)."""
    expected = key.to_dict()
    for field, value in expected.items():
        found = recorded.get(field)
        if found == value:
            continue
        if field == "trt_version":
            return f"stale: built with TensorRT {found}, this is TensorRT {value}"
        if field == "onnx_sha256":
            return f"stale: built from another ONNX (sha256 {str(found)[:12]}, the bundle's is {value[:12]})"
        if field in ("gpu_name", "compute_capability", "gpu_uuid"):
            return (
                f"foreign: built on {recorded.get('gpu_name')} sm{recorded.get('compute_capability')} "
                f"({recorded.get('gpu_uuid')}), "
                f"this is {key.gpu.name} sm{key.gpu.compute_capability} ({key.gpu.uuid})"
            )
        return f"{field} is {found!r}, expected {value!r}"
    return None


def _settings_mismatch(meta: Mapping[str, Any], require: Mapping[str, Any] | None) -> str | None:
    builder = meta.get("builder") if isinstance(meta.get("builder"), dict) else {}
    for name, value in (require or {}).items():
        if builder.get(name) != value:
            return f"stale: built with {name} {builder.get(name)!r}, {value!r} is wanted"
    return None


def _explain_siblings(cache_dir: Path, key: EngineKey) -> None:
    """Say why engines of the same model geometry in the directory do not fit (after a TensorRT
    upgrade, a new bundle or a GPU swap), so an unexpected rebuild is explained in the log."""
    if not cache_dir.is_dir():
        return
    geometry = ("precision", "batch", "height", "width")
    expected = key.to_dict()
    for path in sorted(cache_dir.glob("*" + SIDECAR_SUFFIX)):
        meta, _ = read_sidecar(path)
        if meta is None or any(meta["key"].get(f) != expected[f] for f in geometry):
            continue
        reason = key_mismatch(meta["key"], key)
        if reason:
            log.info("cached engine %s does not fit (%s)", path.with_suffix(ENGINE_SUFFIX).name, reason)


# --- store ----------------------------------------------------------------------------------------


def store(cache_dir: Path, key: EngineKey, engine_bytes: bytes, settings: Mapping[str, Any]) -> Path:
    """Write the engine and its sidecar atomically; returns the engine's path.

    The engine is renamed into place first and the sidecar last: until the sidecar lands, the
    entry has no sidecar (or an old one whose engine sha256 no longer matches) and is refused.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    engine = cache_dir / key.filename()
    sidecar = {
        "schema": SIDECAR_SCHEMA,
        "engine": engine.name,
        "engine_sha256": _sha256_bytes(engine_bytes),
        "engine_bytes": len(engine_bytes),
        "key": key.to_dict(),
        "tensorrt_version": key.trt_version,
        "gpu": {"name": key.gpu.name, "uuid": key.gpu.uuid, "compute_capability": key.gpu.compute_capability},
        "onnx_sha256": key.onnx_sha256,
        **cuda_versions(),
        "builder": dict(settings),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write(engine, engine_bytes)
    atomic_write(sidecar_path(engine), (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    fsync_dir(cache_dir)
    log.info("stored TensorRT engine %s", engine)
    return engine


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide engines from other users' nodes
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- lock -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def engine_lock(
    cache_dir: Path, key: EngineKey, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S, poll_s: float = 0.2
) -> Iterator[Path]:
    """Hold the build lock of ``key`` (``<cache_dir>/.<engine name>.lock``, ``fcntl.flock``).

    The kernel drops the lock when its holder exits, so a crashed build never blocks the next
    one. While held, the file names the holder (pid, host, start time) for waiters' messages.
    The lock file itself is never deleted: unlinking a flock file lets two holders in at once.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = lock_path(cache_dir, key)
    with open(path, "a+") as f:
        _acquire(f, path, timeout_s, poll_s)
        try:
            f.truncate(0)
            since = datetime.now().isoformat(timespec="seconds")
            f.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}\n")
            f.flush()
            yield path
        finally:
            f.truncate(0)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _acquire(f: TextIO, path: Path, timeout_s: float, poll_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    announced = False
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _holder(path)
        if time.monotonic() >= deadline:
            raise BackendError(
                f"timed out after {timeout_s:.0f} s waiting for the engine build lock {path} "
                f"(held by {holder}); another process is still building this engine: wait for it or stop it"
            )
        if not announced:
            log.warning("waiting for the engine build lock %s: %s is building this engine", path, holder)
            announced = True
        time.sleep(poll_s)


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "a process that has not written its name yet"
    except OSError:
        return "an unknown process"


# --- this machine ---------------------------------------------------------------------------------


def gpu_identity(device_id: int = 0) -> GpuIdentity:
    """Name, compute capability and UUID of CUDA device ``device_id``, read through PyTorch."""
    try:
        import torch
    except ImportError as exc:
        raise BackendError(f"cannot identify the GPU: PyTorch is not importable ({exc})") from None
    if not torch.cuda.is_available():
        raise BackendError(
            "no CUDA device: torch.cuda.is_available() is False (no NVIDIA GPU or driver visible to this "
            "process, or a CPU-only PyTorch build)"
        )
    count = torch.cuda.device_count()
    if not 0 <= device_id < count:
        raise BackendError(
            f"CUDA device {device_id} does not exist ({count} visible; see CUDA_VISIBLE_DEVICES)"
        )
    props = torch.cuda.get_device_properties(device_id)
    uuid = str(getattr(props, "uuid", "") or "unknown")
    return GpuIdentity(
        name=props.name,
        compute_capability=f"{props.major}{props.minor}",
        uuid=uuid if uuid.startswith(("GPU-", "MIG-")) or uuid == "unknown" else f"GPU-{uuid}",
    )


def cuda_versions() -> dict[str, str | None]:
    """CUDA runtime (PyTorch's) and NVIDIA driver versions for the sidecar, None where unknown."""
    try:
        import torch

        runtime = torch.version.cuda
    except ImportError:
        runtime = None
    try:
        match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", _NVIDIA_DRIVER_FILE.read_text())
        driver = match[1] if match else None
    except OSError:
        driver = None
    return {"cuda_version": runtime, "driver_version": driver}
