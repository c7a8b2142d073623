"""Progress bars of the command line (``load``, ``view run``): rich, on stderr, so that
stdout holds only the command's output. rich is imported when a bar is made, which
keeps ``fhir-server`` quick to start."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn


def stderr_progress(label: str, *extra: ProgressColumn, transient: bool = False) -> Progress:
    """A bar: ``label``, the bar, the percentage, ``extra`` columns, elapsed, remaining."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(label),
        BarColumn(),
        TaskProgressColumn(),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        transient=transient,
    )
