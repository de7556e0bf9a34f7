"""Small file helpers the on-disk artifacts share (model bundle, place map, engine cache, report).

Directory artifacts (a place map, an evaluation report) are replaced atomically, so a reader or a
crash never meets half of one: the new version is written in a hidden sibling
(:func:`staging_directory`), made durable, then swapped in by :func:`replace_directory` - in one
step with Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere the old version is renamed aside, the new
one renamed in and the old one deleted. A kill between those two renames leaves the old version
whole in the aside sibling, which :func:`sweep_leftovers` (called by the next writer) puts back.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vpr_ros.errors import InputError

# The hidden siblings: ".<name>.staging-<pid>-<hex>" (being written) and ".<name>.old-<pid>-<hex>" (aside).
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>staging|old)-(?P<pid>\d+)-[0-9a-f]+$")


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


# ---------------------------------------------------------------------- atomic directory replacement


def _sibling(directory: Path, kind: str) -> Path:
    """A hidden sibling on the same filesystem (so renames are atomic), named for the sweep."""
    return directory.with_name(f".{directory.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


@contextmanager
def staging_directory(directory: Path) -> Iterator[Path]:
    """A new, empty hidden sibling of ``directory`` to build its replacement in; removed on the way
    out with whatever it then holds: the partial version after a failure, the replaced old version
    after :func:`replace_directory` swapped it in there."""
    staging = _sibling(directory, "staging")
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_directory(staging: Path, directory: Path) -> None:
    """Make everything in ``staging`` durable, then put it at ``directory`` (see the module doc); a
    replaced version ends up in ``staging``, for :func:`staging_directory` to delete."""
    _fsync_tree(staging)
    if not directory.exists():
        os.rename(staging, directory)
    elif not exchange_paths(staging, directory):
        aside = _sibling(directory, "old")
        os.rename(directory, aside)
        try:
            os.rename(staging, directory)
        except BaseException:
            os.rename(aside, directory)
            raise
        os.rename(aside, staging)
    fsync_dir(directory.parent)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root`` and ``root`` itself, so that a version that
    becomes visible after a crash is never one of empty files."""
    for path in root.rglob("*"):
        if path.is_dir():
            fsync_dir(path)
        elif path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(root)


def sweep_leftovers(directory: Path) -> None:
    """Remove the hidden siblings that killed writers of ``directory`` left; an aside copy of the
    old version is put back first if the kill came between the fallback's two renames."""
    for path, kind in _leftovers(directory):
        if kind == "old" and not directory.exists():
            os.rename(path, directory)
        else:
            shutil.rmtree(path, ignore_errors=True)


def interrupted_replacement(directory: Path) -> Path | None:
    """Where a killed replacement left the previous version of a now missing ``directory``, if it did."""
    return next((path for path, kind in _leftovers(directory) if kind == "old"), None)


def _leftovers(directory: Path) -> list[tuple[Path, str]]:
    """(path, kind) of the hidden siblings of ``directory`` whose writer is no longer running."""
    if not directory.parent.is_dir():
        return []
    found = []
    for path in directory.parent.iterdir():
        match = _LEFTOVER.match(path.name)
        if match and match["name"] == directory.name and not _alive(int(match["pid"])):
            found.append((path, match["kind"]))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_replaceable(
    directory: Path,
    overwrite: bool,
    is_ours: Callable[[Path], bool],
    where: str,
    kind: str,
    hint: str = "pass --overwrite",
    error: type[Exception] = InputError,
) -> None:
    """Refuse, before any work is done, a ``directory`` a save could not or should not replace: a
    file, a non-empty directory without ``overwrite``, and - even with it - a directory that is not
    a ``kind`` (``is_ours`` says), which may be someone's folder. Absent or empty is fine."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise error(f"{where}: exists and is not a directory")
    if not any(directory.iterdir()):
        return  # an empty directory (made by the user) holds nothing to lose
    if not overwrite:
        raise error(f"{where}: exists and is not empty; {hint} to replace the {kind} there")
    if not is_ours(directory):
        raise error(f"{where}: exists and is not a {kind}; refusing to replace it")


def has_schema(directory: Path, meta_file: str, family: str) -> bool:
    """Does ``directory`` hold ``meta_file`` whose "schema" is of ``family`` (e.g. ``vpr_ros.place_map``,
    any version)? What :func:`check_replaceable` asks before replacing a directory."""
    try:
        schema = json.loads((directory / meta_file).read_text()).get("schema", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(schema, str) and schema.startswith(family + "/")
