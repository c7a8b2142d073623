"""``fhir-server terminology``: load terminology content into the server's MongoDB."""

from __future__ import annotations

import asyncio
from typing import Any

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
