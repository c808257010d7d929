"""What porevox may replace: its own outputs, and nothing else.

porevox proves an output is its own before it removes or replaces it:

- a porevox volume (a Zarr group whose ``zarr.json`` holds the ``porevox`` block);
- a name listed in the marker file (``.porevox-output``) of its folder, or anything
  under such a name: a command records its output names there *before* it writes
  them, so a run killed half-way still owns what it left;
- a whole folder only when every entry in it is listed in its own marker (a user's
  note added to porevox's folder makes the folder the user's too).

Anything else at an output path is refused with a one-line error naming it. An
output is never one of the command's inputs, nor inside one, nor holding one.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

from .._version import __version__
from ..errors import OutputError
from .location import bucket_error, is_remote, listing, location

MARKER = ".porevox-output"
_LOCK = threading.Lock()


def is_volume(path: str | os.PathLike) -> bool:
    """Whether `path` is a porevox volume (read from its ``zarr.json`` alone)."""
    try:
        meta = json.loads((location(path) / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("attributes", {}).get("porevox"), dict)


def listed(folder: str | os.PathLike) -> set[str]:
    """The names porevox recorded as its outputs in `folder`."""
    try:
        data = json.loads((location(folder) / MARKER).read_text(encoding="utf-8"))
        return {str(n) for n in data.get("names", [])}
    except (OSError, ValueError, AttributeError):
        return set()


def own(path: str | os.PathLike) -> bool:
    """Whether porevox can prove `path` is its own output (see the module docstring)."""
    if is_remote(path):
        path = location(path)
        return is_volume(path) or any(
            p.name in listed(p.parent) or (p != path and is_volume(p))
            for p in (path, *path.parents) if p.name)
    path = Path(os.path.abspath(path))
    if is_volume(path):
        return True
    if path.is_dir() and (path / MARKER).is_file():
        names = listed(path) | {MARKER}
        if all(entry.name in names for entry in path.iterdir()):
            return True
    for p in (path, *path.parents):
        if p.name and (p.name in listed(p.parent) or (p != path and is_volume(p))):
            return True
    return False


def record(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Add `names` to `folder`'s marker (created with the folder if missing)."""
    folder = location(folder)
    with _LOCK:
        if not is_remote(folder):
            folder.mkdir(parents=True, exist_ok=True)
        have = listed(folder)
        new = have | {str(n) for n in names}
        if new == have and (folder / MARKER).is_file():
            return
        text = json.dumps({"porevox": __version__, "names": sorted(new)}, indent=1) + "\n"
        if is_remote(folder):          # one upload: atomic
            (folder / MARKER).write_text(text)
            return
        tmp = folder / f"{MARKER}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.write_text(text)
        os.replace(tmp, folder / MARKER)


def _within(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _real(path) -> Path:
    return location(path) if is_remote(path) else Path(os.path.realpath(path))


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise :class:`OutputError` unless `path` can be created or replaced: its
    nearest existing ancestor is a folder this process may write in (in object
    storage: its bucket exists and answers)."""
    if is_remote(path):
        problem = bucket_error(path)
        if problem:
            raise OutputError(problem)
        return location(path)
    path = Path(os.path.abspath(path))
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write the {what} {path}: {parent} is a file, not a folder; "
                                  "give an output path in a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"cannot write the {what} {path}: {parent} is not writable "
                                  "(permission denied); give an output path in a writable folder")
            break
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"cannot write the {what} {path}: permission denied; "
                          "give an output path in a writable folder")
    return path


def check_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (),
                 what: str = "output", fix: str = "give a new output path") -> Path:
    """Check `path` before any work: writable, not one of `inputs` (nor inside or
    around one), and either absent or porevox's own. Returns it absolute."""
    path = check_writable(path, what)
    real = _real(path)
    for src in inputs:
        src = _real(src)
        if type(src) is type(real) and (_within(real, src) or _within(src, real)):
            raise OutputError(f"the {what} {path} is, or holds, the input {src}; "
                              "porevox never writes over its input: give another output path")
    if is_remote(path):
        there, empty = path.exists(), not listing(path)
    else:
        there = os.path.lexists(path)
        empty = path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    if there and not empty and not own(path):
        raise OutputError(f"{path} exists and is not porevox's own output; porevox replaces only "
                          f"what it wrote itself: {fix}, or move {path.name} away")
    return path


def claim(folder: str | os.PathLike, names: Iterable[str], *,
          inputs: Iterable[str | os.PathLike] = (), what: str = "output") -> None:
    """Check each of `names` in `folder` with :func:`check_output`, then record them
    all, before anything is written."""
    folder = location(folder)
    names = list(names)
    for name in names:
        check_output(folder / name, inputs=inputs, what=what,
                     fix=f"move it, or run on a copy of {folder}")
    record(folder, names)


__all__ = ["MARKER", "check_output", "check_writable", "claim", "is_volume", "listed",
           "own", "record"]
