"""``fhir-server view run``: the command line of views/local_run.py (what it runs over,
its errors), with where the rows go and the progress bar. Imports of the view engine
wait for the command to run, so that ``fhir-server`` starts as fast without it."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from fhir_server.config import Settings
from fhir_server.progress import stderr_progress

if TYPE_CHECKING:
    from rich.progress import Progress

# The names of views/output.py FORMATS (not imported here: see above).
FORMAT_CHOICES = ("json", "ndjson", "csv", "parquet")


@click.group("view")
def view_group() -> None:
    """SQL on FHIR views (docs/views.md)."""


@view_group.command("run")
@click.argument("view_file", metavar="FILE.json", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMAT_CHOICES),
    default="json",
    show_default=True,
    help="Output format (as $viewdefinition-run's _format).",
)
@click.option("--no-header", is_flag=True, help="CSV: no header row.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N rows.")
@click.option(
    "--resources",
    type=click.Path(path_type=Path),
    default=None,
    metavar="FILE",
    help="Run over this file only (*.ndjson or *.jsonl: a resource per line; any "
    "other: JSON, a Bundle's entries, an array of resources or one resource), "
    "without a server or database.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    default=None,
    help="Write the rows to PATH (replaced only once the run succeeds) instead of stdout.",
)
@click.option("--mongo-url", default=None, help="MongoDB URL [env: FHIR_MONGO_URL].")
@click.option("--database", default=None, help="MongoDB database [env: FHIR_DATABASE].")
@click.option("--data-dir", default=None, help="Embedded mongod data dir [env: FHIR_DATA_DIR].")
@click.option("--mongod-bin", default=None, help="The mongod to start [env: FHIR_MONGOD_BIN].")
def run_command(
    view_file: Path,
    fmt: str,
    no_header: bool,
    limit: int | None,
    resources: Path | None,
    output: Path | None,
    **options: Any,
) -> None:
    """Run the ViewDefinition in FILE.json and write its rows to stdout (or --output).

    Without --resources it runs over the server's database (--mongo-url, or the
    embedded mongod on --data-dir as serve does, so not while a server uses it),
    every current resource of the view's type, with no SMART restriction. A progress
    bar goes to stderr when it is a terminal. Exit code: 0 done; 1 bad input (not
    JSON, an invalid ViewDefinition, not resources) or a failed run; 2 a missing
    file or no MongoDB.
    """
    from fhir_server.views.local_run import CommandError, read_view, run_files, run_stored
    from fhir_server.views.output import FORMATS
    from fhir_server.views.run import RunRequest

    if output is not None and str(output) == "-":
        output = None
    try:
        view = read_view(view_file)
        if resources is not None and not resources.is_file():
            raise CommandError(f"{resources}: no such file", 2)
        if fmt == "parquet" and output is None and sys.stdout.isatty():
            raise CommandError("Parquet is binary: write it with --output PATH (or a pipe)", 2)
        req = RunRequest(view, "ViewDefinition", FORMATS[fmt], not no_header, limit=limit)
        with rows_output(output) as sink, progress_bar() as bar:
            if resources is not None:
                asyncio.run(run_files(req, resources, sink, bar))
            else:
                from fhir_server.cli import mongo_url

                settings = Settings(**{k: v for k, v in options.items() if v is not None})
                with mongo_url(settings) as url:
                    asyncio.run(run_stored(req, url, settings.database, sink, bar))
    except CommandError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # the reader went away (| head): nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


@contextmanager
def rows_output(path: Path | None) -> Iterator[IO[bytes]]:
    """stdout, or a temporary file beside ``path`` renamed to it when the run succeeds
    (a failed run leaves ``path`` as it was, and no partial file). Being a new file,
    it is readable by its owner only (rows are patient data)."""
    from fhir_server.views.local_run import CommandError

    if path is None:
        yield sys.stdout.buffer
        return
    try:
        partial = tempfile.NamedTemporaryFile(  # noqa: SIM115 (renamed or removed below)
            dir=path.parent, prefix=f".{path.name}.", suffix=".partial", delete=False
        )
    except OSError as exc:
        raise CommandError(f"{path}: cannot be written ({exc.strerror or exc})", 2) from None
    try:
        with partial:
            yield partial
        os.replace(partial.name, path)
    except BaseException:
        Path(partial.name).unlink(missing_ok=True)
        raise


class RunProgress:
    """A rich bar: resources read (NDJSON: bytes read) of those there are."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.task = bar.add_task("view", total=None)

    def start(self, total: int) -> None:
        self.bar.update(self.task, total=total)

    def advance(self, done: int) -> None:
        self.bar.update(self.task, advance=done)


@contextmanager
def progress_bar() -> Iterator[RunProgress | None]:
    """A progress bar on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        yield None
        return
    bar = stderr_progress("running view", transient=True)
    with bar:
        yield RunProgress(bar)
