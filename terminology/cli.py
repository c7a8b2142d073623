"""``fhir-server terminology``: load terminology content into the server's MongoDB."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, TextIO

import click

from fhir_server.config import Settings


@click.group("terminology")
def terminology_group() -> None:
    """Load code systems, value sets and concept maps (CodeSystem/$lookup, ValueSet/$expand...)."""


@terminology_group.command("load-core")
@click.option("--mongo-url", default=None, help="MongoDB URL [env: FHIR_MONGO_URL].")
@click.option("--database", default=None, help="MongoDB database [env: FHIR_DATABASE].")
@click.option("--data-dir", default=None, help="Embedded mongod data dir [env: FHIR_DATA_DIR].")
@click.option("--force", is_flag=True, help="Check every resource even if loaded before.")
def load_core_command(force: bool, **options: Any) -> None:
    """Load the R4 core code systems, value sets and concept maps (FHIR, v3, v2).

    Idempotent: resources whose url + version are already stored are left alone. Without
    --mongo-url it starts the embedded mongod on --data-dir, as serve does.
    """
    from fhir_server.cli import mongo_url

    settings = Settings(**{k: v for k, v in options.items() if v is not None})
    with mongo_url(settings) as url:
        click.echo(asyncio.run(run_load_core(url, settings.database, force)).line())


async def run_load_core(url: str, database: str, force: bool = False) -> Any:
    """Load the core content into ``database`` (also what `serve` runs on first start)."""
    from pymongo import AsyncMongoClient

    from fhir_server.search.registry import Registry
    from fhir_server.storage import Storage
    from terminology.core import load_core

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    try:
        return await load_core(Storage(client, database), Registry.from_definitions(), force=force)
    finally:
        await client.close()


@terminology_group.command("import")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["snomed", "loinc", "icd10"]),
    required=True,
    help="Release format: snomed (RF2 snapshot folder), loinc (folder with Loinc.csv), "
    "icd10 (ClaML XML or tabular CSV, ICD-10 or CIE-10).",
)
@click.option("--version", default=None, help="Release version (LOINC: else from the folder name).")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--mongo-url", default=None, help="MongoDB URL [env: FHIR_MONGO_URL].")
@click.option("--database", default=None, help="MongoDB database [env: FHIR_DATABASE].")
@click.option("--data-dir", default=None, help="Embedded mongod data dir [env: FHIR_DATA_DIR].")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--stop-after-batches", type=int, default=None, hidden=True)  # tests: a kill
def import_command(
    fmt: str,
    path: Path,
    version: str | None,
    batch_size: int,
    progress: bool,
    stop_after_batches: int | None,
    **options: Any,
) -> None:
    """Import a terminology release from files you are licensed to hold.

    Resumable (a killed import started again continues where it stopped) and idempotent
    (the same release again changes nothing). The concepts go to the concept store and
    the code system gets a CodeSystem resource (content not-present).
    """
    from fhir_server.cli import mongo_url
    from terminology import icd10, loinc, snomed
    from terminology.importing import ImportStopped

    try:
        if fmt == "snomed":
            release = snomed.read_release(path)
        elif fmt == "loinc":
            release = loinc.read_release(path, version)
        else:
            release = icd10.read_release(path, version)
    except (snomed.ReleaseError, loinc.ReleaseError, icd10.ReleaseError, KeyError, OSError) as exc:
        click.echo(f"error: not a readable {fmt} release: {exc}", err=True)
        sys.exit(2)
    click.echo(
        f"read {len(release.concepts)} concepts of {release.url} {release.version}", err=True
    )
    settings = Settings(**{k: v for k, v in options.items() if v is not None})
    with mongo_url(settings) as url:
        try:
            report = asyncio.run(
                _run_import(
                    url, settings.database, release, batch_size, progress, stop_after_batches
                )
            )
        except ImportStopped as exc:
            click.echo(f"import interrupted: {exc}; run the command again to resume", err=True)
            sys.exit(3)
    click.echo(report.line(release))


async def _run_import(
    url: str,
    database: str,
    release: Any,
    batch_size: int,
    progress: bool,
    stop_after: int | None,
) -> Any:
    from pymongo import AsyncMongoClient

    from fhir_server.search.registry import Registry
    from fhir_server.storage import Storage
    from terminology.importing import import_release

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    shown = ImportProgress(sys.stderr) if progress else None
    try:
        return await import_release(
            Storage(client, database),
            Registry.from_definitions(),
            release,
            batch_size=batch_size,
            progress=shown,
            stop_after=stop_after,
        )
    finally:
        if shown is not None:
            shown.close()
        await client.close()


class ImportProgress:
    """The import's progress on ``out``: click's bar on a terminal; elsewhere (a log
    file, CI) a line at each tenth of the batches, since click's bar off a terminal
    prints only its label once."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.bar: Any = None
        self.tenths = -1

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.out.isatty():
            if self.bar is None:
                self.bar = click.progressbar(length=total, label="importing", file=self.out)
            self.bar.update(done - self.bar.pos)
            return
        tenths = done * 10 // max(total, 1)
        if tenths > self.tenths:
            self.tenths = tenths
            click.echo(f"importing: {done}/{total} {stage} ({done * 100 // total}%)", self.out)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.render_finish()
