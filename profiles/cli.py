"""``fhir-server profiles``: install implementation-guide packages (profiles/packages.py)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from fhir_server.config import Settings


@click.group("profiles")
def profiles_group() -> None:
    """Implementation-guide packages: profiles, value sets, code systems..."""


@profiles_group.command("install")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--mongo-url", default=None, help="MongoDB URL [env: FHIR_MONGO_URL].")
@click.option("--database", default=None, help="MongoDB database [env: FHIR_DATABASE].")
@click.option("--data-dir", default=None, help="Embedded mongod data dir [env: FHIR_DATA_DIR].")
def install_command(paths: tuple[Path, ...], **options: Any) -> None:
    """Install FHIR npm packages (PATH.tgz), in the order given.

    Stores their conformance resources (StructureDefinition, ValueSet, CodeSystem,
    SearchParameter, ...) as validated, versioned resources, idempotently by url +
    version, and records each package as name#version. A package whose dependencies
    (other than hl7.fhir.r4.core) are not installed yet is refused, as is one with an
    invalid resource: nothing of it is written. Exit code 0 when all are installed, 1
    when one is refused, 2 when a file is not a readable package. Without --mongo-url it
    starts the embedded mongod on --data-dir, as serve does.
    """
    from fhir_server.cli import mongo_url
    from profiles.packages import PackageError, read_package

    try:
        packages = [read_package(p) for p in paths]
    except PackageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    settings = Settings(**{k: v for k, v in options.items() if v is not None})
    with mongo_url(settings) as url:
        status = asyncio.run(_install(url, settings, packages))
    sys.exit(status)


async def _install(url: str, settings: Settings, packages: list[Any]) -> int:
    from pymongo import AsyncMongoClient

    from fhir_server.search.registry import Registry
    from fhir_server.service.resources import ResourceService
    from fhir_server.service.search import SearchService
    from fhir_server.storage import Storage
    from profiles.packages import PackageError, describe, install_package
    from terminology.membership import Membership

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    try:
        storage = Storage(client, settings.database)
        await storage.ensure_indexes()
        search = SearchService(storage, Registry.from_definitions())
        bindings = (
            Membership(storage, settings.terminology_max_expansion)
            if settings.validate_bindings
            else None
        )
        service = ResourceService(storage, settings, search, None, bindings)
        for package in packages:
            click.echo(describe(package), err=True)
            try:
                report = await install_package(service, package)
            except PackageError as exc:
                click.echo(f"error: {exc}", err=True)
                return 1
            click.echo(report.line())
        return 0
    finally:
        await client.close()
