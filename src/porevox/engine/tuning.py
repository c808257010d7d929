"""The tuned configuration written by ``porevox bench --tune`` and read by later runs.

The file lives at ``$POREVOX_CONFIG`` if set, else ``~/.config/porevox/tuned.yaml``::

    layout: {n_workers: 2, threads_per_worker: 1}   # the LocalCluster layout
    chunk_bytes: 16777216                           # the chunk target (bytes)
    measured: '2025-01-31T12:00:00+00:00'
    machine: {cores: 2, memory: 25769803776, hostname: box}
    scheduler: null                                 # or the cluster it was measured on

:func:`porevox.engine.cluster.default_layout` takes its workers and threads from it
(only when it was measured on a LocalCluster: ``scheduler: null``) and
:func:`porevox.engine.cluster.chunk_bytes_budget` its default chunk size; explicit
arguments always win. A file measured on another machine (hostname or core count
differ) is ignored with a logged note, a malformed one with a warning.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from pathlib import Path

import psutil
import yaml

logger = logging.getLogger(__name__)

#: The environment variable naming the tuned configuration file.
ENV = "POREVOX_CONFIG"
DEFAULT_PATH = Path("~/.config/porevox/tuned.yaml")

# path -> (the file's bytes, what load_tuned made of them): a file is parsed, and its
# use logged, once per content (timestamps are too coarse to tell quick rewrites apart)
_cache: dict[Path, tuple[bytes, dict | None]] = {}


def config_path() -> Path:
    """Where the tuned configuration lives: ``$POREVOX_CONFIG``, else
    ``~/.config/porevox/tuned.yaml``."""
    return Path(os.environ.get(ENV) or DEFAULT_PATH).expanduser()


def machine() -> dict:
    """This machine as the tuned file records it: cores, memory (bytes), hostname."""
    return {"cores": os.cpu_count() or 1, "memory": int(psutil.virtual_memory().total),
            "hostname": socket.gethostname()}


def make_config(n_workers: int, threads_per_worker: int, chunk_bytes: int,
                scheduler: str | None = None) -> dict:
    """A tuned configuration measured now, on this machine."""
    return {"layout": {"n_workers": int(n_workers), "threads_per_worker": int(threads_per_worker)},
            "chunk_bytes": int(chunk_bytes),
            "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(), "scheduler": scheduler}


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def check_config(cfg) -> dict:
    """`cfg` if it is a tuned configuration (see the module docstring), else ValueError
    naming what is wrong."""
    if not isinstance(cfg, dict):
        raise ValueError(f"expected a mapping; got {type(cfg).__name__}")
    layout = cfg.get("layout")
    if not isinstance(layout, dict):
        raise ValueError(f"layout must be a mapping with n_workers and threads_per_worker; got {layout!r}")
    _positive_int(layout.get("n_workers"), "layout.n_workers")
    _positive_int(layout.get("threads_per_worker"), "layout.threads_per_worker")
    _positive_int(cfg.get("chunk_bytes"), "chunk_bytes")
    found = cfg.get("machine")
    if not isinstance(found, dict) or not {"cores", "hostname"} <= set(found):
        raise ValueError(f"machine must be a mapping with cores, memory and hostname; got {found!r}")
    scheduler = cfg.get("scheduler")
    if scheduler is not None and not isinstance(scheduler, str):
        raise ValueError(f"scheduler must be an address or null; got {scheduler!r}")
    return cfg


def _parse(path: Path, data: bytes) -> dict | None:
    try:
        cfg = check_config(yaml.safe_load(data.decode()))
    except (UnicodeDecodeError, yaml.YAMLError, ValueError) as err:
        reason = " ".join(str(err).split())
        logger.warning("ignoring the tuned configuration %s: %s; rerun `porevox bench --tune` "
                       "or delete it", path, reason[:200])
        return None
    here, there = machine(), cfg["machine"]
    if (there.get("hostname"), there.get("cores")) != (here["hostname"], here["cores"]):
        logger.info("ignoring the tuned configuration %s: measured on %s (%s cores), this is "
                    "%s (%s cores); rerun `porevox bench --tune` here", path, there.get("hostname"),
                    there.get("cores"), here["hostname"], here["cores"])
        return None
    layout = cfg["layout"]
    logger.info("using the tuned configuration %s (measured %s%s): %d workers x %d threads, "
                "chunks of %.0f MiB", path, cfg.get("measured"),
                f" on {cfg['scheduler']}" if cfg.get("scheduler") else "", layout["n_workers"],
                layout["threads_per_worker"], cfg["chunk_bytes"] / 2**20)
    return cfg


def load_tuned(path: str | os.PathLike | None = None) -> dict | None:
    """The tuned configuration (`path`, default :func:`config_path`), or None where
    there is none, it is malformed (a warning is logged) or it was measured on another
    machine (a note is logged). Never raises."""
    path = Path(path).expanduser() if path is not None else config_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        _cache.pop(path, None)
        return None
    except OSError as err:
        data = b""
        if _cache.get(path, (None,))[0] != data:
            logger.warning("ignoring the tuned configuration %s: cannot read it (%s)", path, err)
        _cache[path] = (data, None)
        return None
    cached = _cache.get(path)
    if cached is None or cached[0] != data:
        cached = (data, _parse(path, data))
        _cache[path] = cached
    cfg = cached[1]
    return None if cfg is None else {**cfg, "layout": dict(cfg["layout"])}


def save_tuned(cfg: dict, path: str | os.PathLike | None = None) -> Path:
    """Write `cfg` (checked) to `path` (default :func:`config_path`) atomically: a
    temporary file beside it, then ``os.replace``. Returns the path."""
    check_config(cfg)
    path = Path(path).expanduser() if path is not None else config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


__all__ = ["DEFAULT_PATH", "ENV", "check_config", "config_path", "load_tuned", "machine",
           "make_config", "save_tuned"]
