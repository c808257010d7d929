"""Where a volume lives: a folder on a file system, or a prefix in object storage.

A location is a :class:`pathlib.Path` for a local path and a :class:`upath.UPath`
for a URL (``s3://bucket/study/sample.zarr``, through fsspec; credentials and the
endpoint from the usual environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION`` or ``~/.aws``). Both answer ``/``,
``exists``, ``is_file``, ``iterdir``, ``glob``, ``read_text`` and ``write_text``;
what object storage lacks (an atomic rename, a folder that exists on its own,
modification times in nanoseconds) is here.

Object storage has no rename: :func:`move` copies every object and the ``zarr.json``
files last (the top one very last), then removes the source, so a reader sees an
array whole or not at all; a single object's upload is atomic.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

#: Schemes read as local paths.
LOCAL = ("", "file", "local")


def location(path: Any) -> Path:
    """`path` (a str, os.PathLike or URL) as a local :class:`~pathlib.Path` or, for a
    URL, a :class:`upath.UPath`."""
    if hasattr(path, "fs") and is_remote(path):
        return path
    text = os.fspath(path) if not hasattr(path, "fs") else str(path)
    scheme, sep, rest = text.partition("://")
    if sep and scheme not in LOCAL:
        from upath import UPath

        # no listings cache: other processes (the workers) write the same prefixes
        return UPath(text, use_listings_cache=False)
    return Path(rest if sep else text)


def is_remote(path: Any) -> bool:
    """Whether `path` is a location in object storage (any non-local fsspec URL)."""
    if isinstance(path, Path) and not hasattr(path, "fs"):
        return False
    if hasattr(path, "fs") and hasattr(path, "protocol"):
        return path.protocol not in LOCAL
    scheme, sep, _ = os.fspath(path).partition("://")
    return bool(sep) and scheme not in LOCAL


def url(path: Any) -> str:
    """The string zarr and fsspec open `path` by."""
    return str(path) if is_remote(path) else os.fspath(path)


def identity(path: Any) -> str:
    """One name per place, for caches and locks: the real path of a local folder (links
    resolved), the URL of an object-storage prefix."""
    return str(path) if is_remote(path) else os.path.realpath(path)


def key(path: Any) -> str:
    """The path as the fsspec file system names it (no scheme)."""
    return path.path if is_remote(path) else os.fspath(path)


def remove(path: Any) -> None:
    """Remove the file or folder (every object under the prefix) at `path`, if any."""
    path = location(path)
    if not is_remote(path):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return
    fs = path.fs
    fs.invalidate_cache()
    try:
        files = [f for f in fs.find(key(path)) if not f.endswith("/")]
    except FileNotFoundError:
        return
    metadata = [f for f in files if f.rsplit("/", 1)[-1] == "zarr.json"]
    data = [f for f in files if f.rsplit("/", 1)[-1] != "zarr.json"]
    for batch in (metadata, data):   # readers lose the arrays before their data goes
        if batch:
            fs.rm(batch)
    fs.invalidate_cache()


def move(src: Any, dst: Any) -> None:
    """Move `src` to a `dst` that does not exist: a rename on a file system; on object
    storage, a copy of every object with the ``zarr.json`` files last (the shallowest
    last), then the removal of `src`."""
    src, dst = location(src), location(dst)
    if not is_remote(src):
        os.rename(src, dst)
        return
    fs = src.fs
    fs.invalidate_cache()
    root = key(src).rstrip("/")
    files = [f for f in fs.find(root) if not f.endswith("/")]
    target = key(dst).rstrip("/")
    # the data first, then the metadata deepest first, each batch copied concurrently
    batches: dict = {}
    for f in files:
        is_meta = f.rsplit("/", 1)[-1] == "zarr.json"
        batches.setdefault((is_meta, -f.count("/") if is_meta else 0), []).append(f)
    for _, batch in sorted(batches.items()):
        fs.copy(batch, [target + f[len(root):] for f in batch])
    fs.rm(files)
    fs.invalidate_cache()


def version(path: Any) -> Any:
    """What changes when the file at `path` is written again (its modification time
    in ns; an object's ETag), or 0 where there is no file."""
    path = location(path)
    try:
        if not is_remote(path):
            return path.stat().st_mtime_ns
        path.fs.invalidate_cache(key(path))
        info = path.fs.info(key(path))
        return info.get("ETag") or info.get("LastModified") or info.get("mtime") or info.get("size")
    except (OSError, FileNotFoundError):
        return 0


def listing(folder: Any) -> list[str]:
    """The names in `folder` (files and sub-folders; prefixes in object storage), or
    none where it is not there."""
    folder = location(folder)
    if is_remote(folder):
        folder.fs.invalidate_cache(key(folder))
    try:
        return sorted(p.name for p in folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def bucket_error(path: Any) -> str | None:
    """A one-line problem with the object-storage `path` before anything is written
    (its bucket missing, or the store unreachable), or None."""
    path = location(path)
    if not is_remote(path):
        return None
    bucket = key(path).split("/", 1)[0]
    try:
        if path.fs.exists(bucket):
            return None
        problem = f"the bucket {bucket} does not exist"
    except Exception as err:          # credentials, endpoint, network: botocore's many types
        problem = f"{path.protocol}://{bucket} cannot be reached ({type(err).__name__}: {err})"
    return (f"cannot write {path}: {problem}; create it, or check AWS_ENDPOINT_URL and the "
            "credentials in the environment")


__all__ = ["bucket_error", "identity", "is_remote", "key", "listing", "location", "move", "remove", "url",
           "version"]
