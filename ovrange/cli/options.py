"""Option types shared by commands (Typer ``Annotated`` aliases) and the progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

Device = Annotated[Optional[str], typer.Option("--device", help="OpenVINO device: CPU, GPU, NPU, AUTO. Default: CPU.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing result.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
DataPath = Annotated[Optional[Path], typer.Option("--data", "-d", help="Image folder, .npy or .npz file.")]


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr; yields the ``progress(done, total)`` callback the library calls."""
    if not enabled:
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
