"""What the dataset readers share: path checks, CSV tables with located errors, pose conversions.

Every reader turns a user's file into the planar convention of ``base.py``; the mistakes users make
(a wrong folder, a truncated CSV, a text in a number column) must all end as one :class:`UserError`
line naming the file, and the line where there is one. Keeping that logic here means MSLS, image
folders and any later CSV-based reader report errors the same way.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.errors import UserError

VIEW_AXES = ("x", "z")
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder; otherwise a UserError '<what>: folder <path> not found'."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{what}: folder {path} not found")
    return path


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file; otherwise a UserError '<what>: file <path> not found'."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what}: file {path} not found")
    return path


@dataclass(frozen=True)
class CsvTable:
    """The rows of a CSV by column name, each row remembering its line for error messages."""

    path: Path
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    lines: tuple[int, ...]  # physical line number of each row (1 = header)

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list[str]:
        i = self.header.index(name)
        return [row[i] for row in self.rows]

    def where(self, row: int) -> str:
        """'<file> line <n>' of a row, the prefix of every value error."""
        return f"{self.path} line {self.lines[row]}"

    def floats(self, name: str) -> np.ndarray:
        """A column as finite float64; a text, NaN or infinity is an error naming file and line."""
        out = np.empty(len(self.rows), dtype=np.float64)
        for r, text in enumerate(self.column(name)):
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise UserError(f"{self.where(r)}: column {name!r} is {text!r}, expected a finite number")
            out[r] = value
        return out

    def bools(self, name: str) -> np.ndarray:
        """A column of True/False (any case) or 1/0, as pandas writes booleans."""
        out = np.empty(len(self.rows), dtype=bool)
        for r, text in enumerate(self.column(name)):
            word = text.strip().lower()
            if word not in _TRUE | _FALSE:
                raise UserError(f"{self.where(r)}: column {name!r} is {text!r}, expected True or False")
            out[r] = word in _TRUE
        return out


def read_csv_table(path: Path, required: Sequence[str], what: str = "CSV") -> CsvTable:
    """Read a CSV with a header row; every ``required`` column must be present, rows must be full.

    Extra columns are allowed (real files grow columns). An unnamed first column (pandas' index,
    as in MSLS) is kept as column ``""`` and simply never asked for.
    """
    path = require_file(path, what)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = tuple(name.strip() for name in next(reader, ()))
            rows, lines = [], []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise UserError(
                        f"{path} line {reader.line_num}: {len(row)} fields, the header has {len(header)}"
                    )
                rows.append(tuple(row))
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: not a readable CSV ({exc})") from None
    if not header:
        raise UserError(f"{path}: empty file, expected a header with {', '.join(required)}")
    missing = [name for name in required if name not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (header: {','.join(header)})")
    return CsvTable(path, header, tuple(rows), tuple(lines))


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles in radians wrapped to [-pi, pi)."""
    return np.mod(np.asarray(angle, dtype=np.float64) + np.pi, 2 * np.pi) - np.pi


def check_quaternions(q: np.ndarray, where: Callable[[int], str]) -> np.ndarray:
    """``q`` [N, 4] as float64 if no row is zero or non-finite; else a UserError at ``where(row)``."""
    q = np.asarray(q, dtype=np.float64).reshape(-1, 4)
    bad = np.flatnonzero(~np.isfinite(q).all(axis=1) | (np.linalg.norm(q, axis=1) == 0))
    if bad.size:
        raise UserError(f"{where(int(bad[0]))}: quaternion {q[bad[0]].tolist()} is not a rotation")
    return q


def quaternion_yaw(q: np.ndarray, view_axis: str = "x") -> np.ndarray:
    """Heading (radians CCW from +x) of a camera's viewing direction projected on the ground plane.

    ``q`` is [N, 4] in ROS order (x, y, z, w), the rotation from the camera frame to the map frame
    (z up). ``view_axis`` names the camera-frame axis the camera looks along: ``"x"`` for body or
    ``base_link``-style frames (ROS REP 103, our synthetic poses), ``"z"`` for optical frames
    (REP 103 ``*_optical_frame``, OpenCV, most SLAM outputs). The heading is atan2 of the rotated
    axis' x and y components; NaN where that axis points (almost) straight up or down, because a
    heading of a camera looking at the sky is meaningless rather than zero. Rows must be non-zero
    (:func:`check_quaternions`); they need not be unit length.
    """
    if view_axis not in VIEW_AXES:
        raise UserError(f"view_axis must be one of {', '.join(VIEW_AXES)}, got {view_axis!r}")
    q = np.asarray(q, dtype=np.float64).reshape(-1, 4)
    x, y, z, w = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    if view_axis == "x":  # first column of the rotation matrix
        dx, dy = 1 - 2 * (y * y + z * z), 2 * (x * y + z * w)
    else:  # third column
        dx, dy = 2 * (x * z + y * w), 2 * (y * z - x * w)
    yaw = np.arctan2(dy, dx)
    return np.where(np.hypot(dx, dy) > 1e-6, yaw, np.nan)
