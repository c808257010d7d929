"""Exception types. Every error caused by bad input names the problem and the fix."""


class PorevoxError(Exception):
    """Base class of porevox's own errors."""


class InvalidVolumeError(PorevoxError, ValueError):
    """A volume, a source stack or a parameter describing it is not usable."""


class VolumeNotFoundError(PorevoxError, FileNotFoundError):
    """A path that should hold a volume or a source stack does not exist."""


class StudyFileError(InvalidVolumeError):
    """A study file (``study.yaml``) is malformed or names missing data; the message
    reads ``file:line: field: problem; fix``."""


class ChunkError(InvalidVolumeError):
    """A chunk of a stored array is corrupt or missing."""


class StageError(PorevoxError, RuntimeError):
    """A pipeline stage could not complete (not caused by bad input)."""


class OutputError(PorevoxError, ValueError):
    """An output path cannot be written, or holds something porevox did not write."""
