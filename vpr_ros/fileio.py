"""Small file helpers the on-disk artifacts share (model bundle, place map, engine cache)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vpr_ros.errors import InputError


def fsync_dir(directory: Path) -> None:
    """Make a rename or new entry in ``directory`` durable (POSIX needs the directory fsynced)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def require(
    mapping: Any, key: str, kind: type | tuple[type, ...], where: str, error: type[InputError] = InputError
) -> Any:
    """``mapping[key]`` if present and of ``kind`` (bools never count as numbers), else ``error``."""
    if not isinstance(mapping, dict) or key not in mapping:
        raise error(f"{where}: missing key {key!r}")
    value = mapping[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise error(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value
