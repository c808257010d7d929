"""A rich progress bar on stderr for the models' training loops."""

from __future__ import annotations


def bar(enabled: bool, label: str):
    """A ``rich.progress.Progress`` (a context manager) labelled `label`; silent
    unless `enabled`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.description}"), console=Console(stderr=True),
                    disable=not enabled, transient=False)


__all__ = ["bar"]
