"""The ``fhir-server`` command. Options mirror ``Settings``; each one's help names its
environment variable, and the flag wins over the variable."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from fhir_server.config import Settings

_ENV_PREFIX = "FHIR_"


def setting_option(name: str, *flags: str, **kwargs: Any) -> Callable[[Any], Any]:
    """A click option documented from the Settings field of the same name."""
    field = Settings.model_fields[name]
    env = f"{_ENV_PREFIX}{name.upper()}"
    default = field.default if field.default is not None else "unset"
    help_text = f"{field.description} [env: {env}; default: {default}]"
    return click.option(*flags, name, default=None, help=help_text, **kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fhir-server")
def main() -> None:
    """A FHIR R4 server on MongoDB."""


_SERVE_FLAGS = (
    "host",
    "port",
    "data_dir",
    "mongo_url",
    "database",
    "mongod_bin",
    "base_url",
    "workers",
    "log_level",
)


def _environment_only_settings() -> str:
    lines = ["\b", "Further settings, by environment variable only:"]
    for name, field in Settings.model_fields.items():
        if name not in _SERVE_FLAGS:
            lines.append(
                f"  {_ENV_PREFIX}{name.upper()}: {field.description} (default: {field.default})"
            )
    return "\n".join(lines)


@main.command(epilog=_environment_only_settings())
@setting_option("host", "--host")
@setting_option("port", "--port", type=int)
@setting_option("data_dir", "--data-dir", type=click.Path(file_okay=False))
@setting_option("mongo_url", "--mongo-url")
@setting_option("database", "--database")
@setting_option("mongod_bin", "--mongod-bin")
@setting_option("base_url", "--base-url")
@setting_option("workers", "--workers", type=int)
@setting_option("log_level", "--log-level")
def serve(**options: Any) -> None:
    """Run the FHIR API (http://HOST:PORT/fhir).

    Without --mongo-url it starts a private mongod (single-node replica set) with its
    data in --data-dir, and stops it on exit.
    """
    import uvicorn

    # Flags become FHIR_* variables so that every uvicorn worker reads the same Settings.
    for name, value in options.items():
        if value is not None:
            os.environ[f"{_ENV_PREFIX}{name.upper()}"] = str(value)
    settings = Settings()
    with mongo_url(settings) as url:
        os.environ["FHIR_MONGO_URL"] = url
        # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; turn that into a
        # normal exit so that leaving mongo_url still stops the embedded mongod cleanly.
        signal.signal(signal.SIGTERM, _exit_quietly)
        uvicorn.run(
            "fhir_server.app:create_app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level.lower(),
            proxy_headers=True,
        )


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


@contextmanager
def mongo_url(settings: Settings) -> Iterator[str]:
    """The MongoDB to use: ``settings.mongo_url``, or else a private mongod with its data
    in ``settings.data_dir``, started here and stopped on exit (exits 2 if impossible)."""
    from fhir_server.embedded_mongo import DataDirLocked, EmbeddedMongo, MongodNotFound

    if settings.mongo_url:
        yield settings.mongo_url
        return
    embedded = EmbeddedMongo(settings.data_dir, settings.mongod_bin)
    try:
        url = embedded.start()
    except (MongodNotFound, DataDirLocked) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"embedded MongoDB running with data in {settings.data_dir.resolve()}")
    try:
        yield url
    finally:
        embedded.stop()


@main.command()
@setting_option("data_dir", "--data-dir", type=click.Path(file_okay=False))
@setting_option("mongo_url", "--mongo-url")
@setting_option("database", "--database")
@setting_option("mongod_bin", "--mongod-bin")
@setting_option("base_url", "--base-url")
@click.option(
    "--type",
    "types",
    multiple=True,
    metavar="TYPE",
    help="Resource type to re-index (repeatable). Default: every stored type.",
)
def reindex(types: tuple[str, ...], **options: Any) -> None:
    """Rebuild the search index fields of stored resources.

    Run it after the search parameters or their extraction change. Resources written
    meanwhile keep the index their write computed. Without --mongo-url it starts the
    embedded mongod on --data-dir, as serve does (so not while a server uses it).
    """
    from fhir_server.resource_types import is_resource_type

    unknown = [t for t in types if not is_resource_type(t)]
    if unknown:
        raise click.BadParameter(
            f"not R4 resource types: {', '.join(unknown)}", param_hint="--type"
        )
    settings = Settings(**{k: v for k, v in options.items() if v is not None})
    with mongo_url(settings) as url:
        counts = asyncio.run(
            _reindex(url, settings.database, list(types) or None, settings.base_url)
        )
    for resource_type, count in counts.items():
        click.echo(f"{resource_type}: {count}")
    click.echo(f"reindexed {sum(counts.values())} resources of {len(counts)} types")


async def _reindex(
    url: str, database: str, types: list[str] | None, base_url: str | None
) -> dict[str, int]:
    from pymongo import AsyncMongoClient

    from fhir_server.search.registry import Registry
    from fhir_server.search.reindex import reindex as run_reindex
    from fhir_server.storage import Storage

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    try:
        storage = Storage(client, database)
        return await run_reindex(storage, Registry.from_definitions(), types, base_url=base_url)
    finally:
        await client.close()


if __name__ == "__main__":
    main()
