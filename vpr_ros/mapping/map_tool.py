"""``vpr-map``: look into a place map, merge maps, crop one - all without the model.

A map outlives the drive that made it: a site is mapped on several days (sessions), maps of
neighbouring areas are joined, a stretch that changed is cut out and mapped again. These work on
what the map directory holds, so they need neither the model bundle nor a GPU. ``info`` says what
a map holds (short aligned text for a README, or ``--json`` for scripts); ``merge`` appends the
sessions of maps of one model and frame (:meth:`PlaceMap.extend`); ``crop`` keeps the keyframes
inside an x/y box and/or of chosen sessions (:meth:`PlaceMap.select`), dropping sessions left empty.

Every map read is checked in full (:meth:`PlaceMap.load`); ``--out`` is checked before any work and
written once, atomically, at the end, so an error or Ctrl-C leaves it as it was. ``--out`` may be
an input map (with ``--overwrite``): the inputs are loaded before the replace, which swaps whole
directories, so a loaded map's memory-mapped ``descriptors.npy`` stays readable (the old file is
unlinked, not rewritten).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.cli import run
from vpr_ros.errors import InputError
from vpr_ros.mapping import map_files
from vpr_ros.mapping.map_files import META_FILE, MapError, check_target, size_on_disk
from vpr_ros.mapping.map_index import ivfpq_shape
from vpr_ros.mapping.place_map import PlaceMap

DESCRIPTION = """\
Inspect, merge and crop place maps (made by vpr-build-map or the mapper node); no model needed.
  info   what a map holds: keyframes, sessions and their cameras, frame, extent, model, index, size
  merge  the sessions of maps of one model and frame, in order, into one map (the first map's index)
  crop   the keyframes inside an x/y box of the map frame and/or of chosen sessions"""

EPILOG = """\
examples:
  vpr-map info maps/site
  vpr-map info maps/site --json
  vpr-map merge maps/site_day maps/site_night --out maps/site
  vpr-map crop maps/site --box -10 -5 40 25 --out maps/yard
  vpr-map crop maps/site --sessions night 2 --out maps/site --overwrite
exit status: 0 done, 2 bad input (one line on stderr, nothing written), 130 interrupted."""

SESSION_COLUMNS = ("#", "name", "keyframes", "camera x y z qx qy qz qw", "created")
_RIGHT_ALIGNED = (0, 2)  # the number columns of SESSION_COLUMNS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpr-map",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="what a map holds", description="What a place map holds.")
    info.add_argument("map", type=Path, metavar="MAP", help="place map directory")
    info.add_argument("--json", action="store_true", help="print the same as one JSON object")
    info.set_defaults(work=_info)

    merge = commands.add_parser(
        "merge",
        help="join maps session by session",
        description="Append the sessions of every MAP, in order, into one map with the first map's index "
        "type. The maps must share the model and the frame.",
    )
    merge.add_argument("maps", nargs="+", type=Path, metavar="MAP", help="place map directories")
    _add_out_arguments(merge)
    merge.set_defaults(work=_merge)

    crop = commands.add_parser(
        "crop",
        help="keep the keyframes in a box and/or of some sessions",
        description="Keep the keyframes whose base position is inside --box and/or whose session is "
        "one of --sessions (both: keyframes that pass both); sessions left without keyframes are "
        "dropped.",
    )
    crop.add_argument("map", type=Path, metavar="MAP", help="place map directory")
    crop.add_argument(
        "--box",
        nargs=4,
        type=float,
        metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
        help="x/y rectangle in the map frame, metres, edges included",
    )
    crop.add_argument(
        "--sessions",
        nargs="+",
        metavar="NAME_OR_INDEX",
        help="sessions to keep, by name (every session of that name) or by index (vpr-map info lists them)",
    )
    _add_out_arguments(crop)
    crop.set_defaults(work=_crop)
    return parser


def _add_out_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="place map directory to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing place map at --out (an input too)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = getattr(args, "out", None)
    return run(
        lambda: args.work(args), "interrupted" if out is None else f"interrupted; nothing written to {out}"
    )


# ---------------------------------------------------------------------- info


def describe(directory: Path) -> dict[str, Any]:
    """What ``vpr-map info`` reports of the map at ``directory`` (its ``--json`` object)."""
    directory = Path(directory).expanduser()
    place_map = PlaceMap.load(directory)
    meta = json.loads((directory / META_FILE).read_text())
    positions = place_map.positions
    bounds = None  # a hand-made map may hold no keyframe
    if len(place_map):
        bounds = {
            axis: [float(positions[:, i].min()), float(positions[:, i].max())] for i, axis in enumerate("xyz")
        }
    params = place_map.index_params
    automatic = [key for key, value in params.items() if value is None]
    if place_map.index_type == "ivfpq":  # the values the index was trained with
        params["nlist"], params["m"] = ivfpq_shape(len(place_map), place_map.descriptor_dim, params)
    sessions = [
        {"index": i, "name": s.name, "keyframes": int(n), "camera_extrinsic": list(s.camera_extrinsic),
         "created": s.created}
        for i, (s, n) in enumerate(zip(place_map.sessions, place_map.session_counts()))
    ]  # fmt: skip
    return {
        "map": str(directory),
        "keyframes": len(place_map),
        "frame_id": place_map.frame_id,
        "bounds_m": bounds,
        "travelled_m": place_map.travelled_m,
        "model": {"content_hash": place_map.model_hash, "summary": place_map.model_summary},
        "descriptor_dim": place_map.descriptor_dim,
        "index": {"type": place_map.index_type, "params": params, "automatic": automatic},
        "size_bytes": size_on_disk(directory),
        "created": map_files.field(meta, "created", str, f"place map {directory}"),
        "sessions": sessions,
    }


def info_text(info: dict[str, Any]) -> str:
    """:func:`describe`'s object as aligned text, one fact per line, then the sessions as a table."""
    bounds = info["bounds_m"]
    extent = "none"
    if bounds is not None:
        extent = "  ".join(f"{axis} {low:.2f}..{high:.2f}" for axis, (low, high) in bounds.items()) + " m"
    index = info["index"]
    params = [f"{k}={v}" + (" (auto)" if k in index["automatic"] else "") for k, v in index["params"].items()]
    short = info["model"]["content_hash"][:15]
    summary = info["model"]["summary"].removesuffix(f" ({short})")  # a bundle's summary ends with it
    facts = [
        ("map", info["map"]),
        ("keyframes", f"{info['keyframes']} in {_count(len(info['sessions']), 'session')}"),
        ("frame", info["frame_id"]),
        ("bounds", extent),
        ("travelled", f"{info['travelled_m']:.1f} m"),
        ("model", f"{summary} ({short})" if summary else short),
        ("descriptors", f"{info['descriptor_dim']}-D"),
        ("index", " ".join([index["type"], *params])),
        ("size", human_size(info["size_bytes"])),
        ("created", info["created"]),
    ]
    width = max(len(label) for label, _ in facts) + 2
    lines = [f"{label:<{width}}{value}" for label, value in facts]
    rows = [SESSION_COLUMNS] + [
        (str(s["index"]), s["name"], str(s["keyframes"]), " ".join(f"{v:g}" for v in s["camera_extrinsic"]),
         s["created"])
        for s in info["sessions"]
    ]  # fmt: skip
    widths = [max(len(row[c]) for row in rows) for c in range(len(SESSION_COLUMNS))]
    for i, row in enumerate(rows):
        cells = [
            cell.rjust(w) if c in _RIGHT_ALIGNED else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(row, widths))
        ]
        lines.append(f"{'sessions' if i == 0 else '':<{width}}{'  '.join(cells)}".rstrip())
    return "\n".join(lines)


def human_size(size: int) -> str:
    """Decimal units, as the README writes sizes: 532 B, 48.2 kB, 1.3 MB."""
    value, unit = float(size), "B"
    for bigger in ("kB", "MB", "GB", "TB"):
        if value < 999.95:
            break
        value, unit = value / 1000, bigger
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _info(args: argparse.Namespace) -> str:
    info = describe(args.map)
    return json.dumps(info) if args.json else info_text(info)


# ---------------------------------------------------------------------- merge and crop


def _merge(args: argparse.Namespace) -> str:
    out = args.out.expanduser()
    check_target(out, args.overwrite, f"--out {out}", "pass --overwrite")
    first, *others = args.maps
    merged = PlaceMap.load(first)
    for path in others:
        other = PlaceMap.load(path)
        try:
            merged.extend(other)
        except MapError as exc:
            raise MapError(f"cannot merge {path} into {first}: {exc}") from None
    _save(merged, out, args.overwrite)
    maps, sessions = _count(len(args.maps), "map"), _count(len(merged.sessions), "session")
    return f"merged {maps}: {len(merged)} keyframes in {sessions} -> {out}"


def _crop(args: argparse.Namespace) -> str:
    if args.box is None and args.sessions is None:
        raise InputError("crop: pass --box, --sessions or both to say which keyframes to keep")
    if args.box is not None:
        _check_box(args.box)
    out = args.out.expanduser()
    check_target(out, args.overwrite, f"--out {out}", "pass --overwrite")
    place_map = PlaceMap.load(args.map)
    keep = np.ones(len(place_map), dtype=bool)
    wanted = []
    if args.box is not None:
        xmin, ymin, xmax, ymax = args.box
        x, y = place_map.positions[:, 0], place_map.positions[:, 1]
        keep &= (xmin <= x) & (x <= xmax) & (ymin <= y) & (y <= ymax)
        wanted.append(f"inside --box {' '.join(f'{v:g}' for v in args.box)}")
    if args.sessions is not None:
        keep &= np.isin(place_map.session_ids, _session_indices(place_map, args.sessions, args.map))
        wanted.append(f"in --sessions {' '.join(args.sessions)}")
    if not keep.any():
        raise InputError(f"no keyframe of map {args.map} is {' and '.join(wanted)}; nothing written")
    cropped = place_map.select(keep)
    _save(cropped, out, args.overwrite)
    return (
        f"kept {len(cropped)} of {len(place_map)} keyframes, {len(cropped.sessions)} of "
        f"{len(place_map.sessions)} sessions -> {out}"
    )


def _check_box(box: list[float]) -> None:
    if not all(math.isfinite(v) for v in box):
        raise InputError(f"--box: XMIN YMIN XMAX YMAX must be finite numbers, got {' '.join(map(str, box))}")
    xmin, ymin, xmax, ymax = box
    for axis, low, high in (("x", xmin, xmax), ("y", ymin, ymax)):
        if low > high:
            raise InputError(f"--box: {axis}min {low:g} is greater than {axis}max {high:g}")


def _session_indices(place_map: PlaceMap, tokens: list[str], where: Path) -> list[int]:
    """The sessions ``tokens`` name: by name (every session of it; a name wins over an index) or index."""
    names = [s.name for s in place_map.sessions]
    chosen = []
    for token in tokens:
        by_name = [i for i, name in enumerate(names) if name == token]
        if by_name:
            chosen += by_name
        elif token.isdecimal() and int(token) < len(names):
            chosen.append(int(token))
        else:
            listing = ", ".join(f"{i} '{name}'" for i, name in enumerate(names))
            raise InputError(f"--sessions: map {where} has no session '{token}'; its sessions are {listing}")
    return chosen


def _save(place_map: PlaceMap, out: Path, overwrite: bool) -> None:
    try:
        place_map.save(out, overwrite=overwrite)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write the map ({exc})") from None


if __name__ == "__main__":
    sys.exit(main())
