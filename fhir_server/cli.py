"""The ``fhir-server`` command. Options mirror ``Settings``; each one's help names its
environment variable, and the flag wins over the variable."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from fhir_server.config import Settings, settings_error_line
from fhir_server.views.cli import view_group
from fhir_server.workflows.reminders.cli import reminders_group
from importers.cli import import_group
from profiles.cli import profiles_group
from smart_auth.cli import auth as auth_group
from smart_auth.cli import backend_client_options
from terminology.cli import terminology_group

if TYPE_CHECKING:
    from fhir_server.load_journal import Journal
    from fhir_server.loader import Options, Summary
    from smart_auth.backend_client import BackendAuth, BackendClient

_ENV_PREFIX = "FHIR_"


def setting_option(
    name: str, *flags: str, description: str | None = None, **kwargs: Any
) -> Callable[[Any], Any]:
    """A click option documented from the Settings field of the same name (or from
    ``description``, where the field's text speaks of options this command lacks)."""
    field = Settings.model_fields[name]
    env = f"{_ENV_PREFIX}{name.upper()}"
    default = field.default if field.default is not None else "unset"
    help_text = f"{description or field.description} [env: {env}; default: {default}]"
    return click.option(*flags, name, default=None, help=help_text, **kwargs)


class _Main(click.Group):
    """The command group; a bad ``FHIR_*`` setting, met by any command, is one line
    naming the variable (exit 2) rather than pydantic's traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ValidationError as exc:
            if exc.title != Settings.__name__:
                raise
            click.echo(f"error: {settings_error_line(exc)}", err=True)
            ctx.exit(2)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option(
    "--no-auth",
    is_flag=True,
    default=False,
    help="Serve the FHIR API without SMART authorization: anyone can read and write "
    "everything. Local development only (same as FHIR_AUTH_ENABLED=false).",
)
def serve(no_auth: bool = False, **options: Any) -> None:
    """Run the FHIR API (http://HOST:PORT/fhir).

    Without --mongo-url it starts a private mongod (single-node replica set) with its
    data in --data-dir, and stops it on exit. SIGTERM, SIGINT and SIGHUP stop it
    cleanly; its children die with it even on SIGKILL.
    """
    from fhir_server import serving, startup

    # A stop asked for during start-up unwinds what was started, in order.
    signal.signal(signal.SIGTERM, _exit_quietly)
    signal.signal(signal.SIGINT, _exit_quietly)
    signal.signal(signal.SIGHUP, _hang_up)
    # Flags become FHIR_* variables so that every uvicorn worker reads the same Settings.
    for name, value in options.items():
        if value is not None:
            os.environ[f"{_ENV_PREFIX}{name.upper()}"] = str(value)
    if no_auth:
        os.environ["FHIR_AUTH_ENABLED"] = "false"
    settings = Settings()
    problem = serving.port_problem(settings.host, settings.port)
    if problem:  # before mongod and the worker start: nothing to leave behind
        click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    if not settings.auth_enabled:
        click.echo(
            "WARNING: authorization is OFF (--no-auth / FHIR_AUTH_ENABLED=false): every "
            "client can read and change every resource. Use this for local development only.",
            err=True,
        )
    from fhir_server.bulk.embedded import embedded_worker

    with mongo_url(settings) as url, embedded_worker(settings, url):
        os.environ["FHIR_MONGO_URL"] = url
        hint = None
        if settings.auth_enabled:  # a fresh server: say how to register the first client
            from smart_auth.cli import first_start_hint

            hint = first_start_hint(url, settings.database)
        embedded = not settings.mongo_url
        click.echo(
            startup.start_hint(url, settings.database, embedded=embedded, user_example=not hint),
            err=True,
        )
        if hint:  # with the command as it can be typed here
            click.echo(
                hint.replace("fhir-server auth ", f"{startup.command_prefix()} auth "), err=True
            )
        if settings.terminology_load_core:  # first start: the R4 core terminology
            from terminology.cli import run_load_core

            report = asyncio.run(run_load_core(url, settings.database))
            if not report.skipped_run:
                click.echo(report.line(), err=True)
        # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown: _exit_quietly
        # turns that into a normal exit, so leaving mongo_url stops the children in order.
        status = serving.serve(
            settings.host,
            settings.port,
            settings.workers,
            settings.log_level.lower(),
            settings.graceful_timeout_seconds,
        )
    if status:
        sys.exit(status)


def _exit_quietly(signum: int, frame: object) -> None:
    """Stop: unwind (stopping the worker, then mongod), undisturbed by further signals."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise SystemExit(0)


def _hang_up(signum: int, frame: object) -> None:
    """A closed terminal stops the server as SIGTERM does (uvicorn's graceful shutdown
    while it serves, which handles SIGTERM but not SIGHUP)."""
    signal.raise_signal(signal.SIGTERM)


@contextmanager
def mongo_url(settings: Settings) -> Iterator[str]:
    """The MongoDB to use: ``settings.mongo_url``, or else a private mongod with its data
    in ``settings.data_dir``, started here, restarted if it dies, and stopped on exit
    (exits 2 if impossible)."""
    from fhir_server.embedded_mongo import DataDirLocked, EmbeddedMongo, MongodNotFound

    if settings.mongo_url:
        from fhir_server.startup import mongo_problem

        problem = mongo_problem(settings.mongo_url)
        if problem:
            click.echo(f"error: {problem}", err=True)
            sys.exit(2)
        yield settings.mongo_url
        return
    embedded = EmbeddedMongo(settings.data_dir, settings.mongod_bin)
    try:
        url = embedded.start()
    except (MongodNotFound, DataDirLocked) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"embedded MongoDB running with data in {settings.data_dir.resolve()}", err=True)
    from fhir_server.supervisor import supervised

    with supervised("embedded mongod", embedded, settings):
        yield url


@main.command()
@setting_option("data_dir", "--data-dir", type=click.Path(file_okay=False))
@setting_option("mongo_url", "--mongo-url")
@setting_option("database", "--database")
@setting_option("mongod_bin", "--mongod-bin")
@setting_option(
    "base_url",
    "--base-url",
    description="The server's public base URL (as its FHIR_BASE_URL), so that absolute "
    "references to it are indexed as local ones.",
)
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


_NDJSON_HELP = (
    "NDJSON lines are sent as Bundles of --batch-size entries, PUT [type]/[id] for a line "
    "with an id (so ids are kept, references between files resolve, and a re-run or a "
    "retry updates rather than duplicates), POST [type] otherwise. The Bundle type is "
    "'transaction' by default: a server can apply it as one atomic write, which is far "
    "faster than independent entries, and a retry after a lost response never leaves half "
    "a chunk applied. The cost: one bad line fails its whole chunk (reported with its line "
    "number). Use --ndjson-bundle batch to load every good line regardless."
)


def _load_epilog() -> str:
    return "\n\n".join(
        [
            "\b\nInputs (directories recursively, in sorted order; other files skipped):\n"
            "  *.json    a Bundle of type transaction or batch: POST [base], bytes as-is;\n"
            "            any other resource (a document/collection Bundle too):\n"
            "            PUT [type]/[id] if it has an id, else POST [type]\n"
            "  *.ndjson  one resource per line (also *.jsonl)",
            _NDJSON_HELP,
            "Retries 429 and 503 (honouring Retry-After) and connection errors with "
            "exponential backoff, --retries times; a connection lost after a request with "
            "POST entries was sent is reported, not retried, as the server may have applied "
            "it (re-sending could create resources twice). Exit code: 0 when everything loaded, "
            "1 when anything failed (each failure is listed with its file, entry or line, "
            "fullUrl and the server's OperationOutcome diagnostics), 2 for usage errors.",
            "Resuming: every upload the server answered 2xx for is appended to --journal "
            "at once (keyed by base URL, the file's absolute path, size, mtime and the "
            "position and digest of its bytes). A rerun skips those, so a killed load goes "
            "on where it stopped without creating resources twice; a file changed since is "
            "sent again in full. Refused uploads (4xx, 5xx) wrote nothing and are sent "
            "again, as is one that got no answer: the server may have applied it (a request "
            "in flight at a kill), the one case a rerun can duplicate. The journal is kept "
            "after a complete run, so a rerun is a no-op; --restart (or deleting the "
            "journal) sends everything again.",
        ]
    )


@main.command(epilog=_load_epilog())
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--url", "base_url", required=True, metavar="BASE", help="FHIR base URL.")
@click.option(
    "--token",
    envvar="FHIR_LOAD_TOKEN",
    help="Bearer token sent as Authorization [env: FHIR_LOAD_TOKEN].",
)
@backend_client_options
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=4,
    show_default=True,
    help="Requests in flight at once.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=500,
    show_default=True,
    help="NDJSON resources per Bundle.",
)
@click.option(
    "--ndjson-bundle",
    type=click.Choice(["transaction", "batch"]),
    default="transaction",
    show_default=True,
    help="Bundle type for NDJSON lines.",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 20),
    default=5,
    show_default=True,
    help="Retries of one request on 429/503 or a connection error.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds to wait for one response.",
)
@click.option(
    "--journal",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(".fhir-load-journal.ndjson"),
    show_default=True,
    help="Uploads already loaded, for resuming (see below).",
)
@click.option("--restart", is_flag=True, help="Empty the journal and send everything again.")
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr."
)
def load(
    paths: tuple[Path, ...],
    base_url: str,
    token: str | None,
    client_id: str | None,
    key_file: Path | None,
    scope: str,
    concurrency: int,
    batch_size: int,
    ndjson_bundle: str,
    retries: int,
    timeout: float,
    journal: Path,
    restart: bool,
    progress: bool,
) -> None:
    """Upload Bundles, NDJSON and resource files to any FHIR server at BASE.

    Prints a summary (files, requests, resources sent / succeeded / failed, resources/s)
    and every failure. A killed load rerun resumes where it stopped (--journal).
    """
    from fhir_server import loader

    if not base_url.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http:// or https:// URL", param_hint="--url")
    backend = _backend_client(base_url, token, client_id, key_file, scope, timeout)
    options = loader.Options(
        base_url=base_url,
        token=token,
        auth=backend[1] if backend else None,
        concurrency=concurrency,
        batch_size=batch_size,
        ndjson_bundle="batch" if ndjson_bundle == "batch" else "transaction",
        retries=retries,
        timeout_s=timeout,
    )
    try:
        files, skipped = loader.discover(paths)
    except loader.UsageError as exc:
        raise click.UsageError(str(exc)) from None
    from fhir_server.load_journal import Journal
    from smart_auth.backend_client import BackendClientError

    try:
        done = Journal(journal, base_url, restart=restart)
    except OSError as exc:
        raise click.BadParameter(str(exc), param_hint="--journal") from None
    failure: BaseException | None = None
    try:
        summary = asyncio.run(_run_load(files, skipped, options, progress, backend, done))
    except* BackendClientError as group:  # no token at the start, or none when renewing
        failure = group.exceptions[0]
        while isinstance(failure, BaseExceptionGroup):
            failure = failure.exceptions[0]
    finally:
        done.close()
    if failure is not None:
        click.echo(f"error: {failure}", err=True)
        sys.exit(1)
    for line in summary.lines():
        click.echo(line)
    click.echo(
        f"journal: {journal} (a rerun skips what is loaded; --restart sends everything again)"
    )
    sys.exit(0 if summary.ok else 1)


def _backend_client(
    base_url: str,
    token: str | None,
    client_id: str | None,
    key_file: Path | None,
    scope: str,
    timeout: float,
) -> tuple[BackendClient, BackendAuth] | None:
    """``load``'s backend client (--client-id with --key), or None for --token/no auth."""
    from smart_auth.backend_client import BackendAuth, BackendClient, BackendClientError, read_key

    if client_id is None and key_file is None:
        return None
    if client_id is None or key_file is None:
        raise click.UsageError("--client-id and --key go together")
    if token:
        raise click.UsageError("pass either --token or --client-id/--key, not both")
    try:
        key = read_key(key_file)
    except BackendClientError as exc:
        raise click.BadParameter(str(exc), param_hint="--key") from None
    client = BackendClient(base_url, client_id, key, scope, min(timeout, 60.0))
    return client, BackendAuth(client)


async def _run_load(
    files: list[Path],
    skipped: int,
    options: Options,
    progress: bool,
    backend: tuple[BackendClient, BackendAuth] | None = None,
    journal: Journal | None = None,
) -> Summary:
    from fhir_server import loader

    if backend is not None:  # the first token before any file is read: fail at once
        await backend[0].token()
    if not progress:
        return await loader.load_files(files, options, skipped=skipped, journal=journal)
    with loader.ProgressBar(loader.total_bytes(files)) as bar:
        return await loader.load_files(files, options, bar, skipped=skipped, journal=journal)


@main.command()
@setting_option(
    "mongo_url",
    "--mongo-url",
    description="The server's MongoDB connection string (required).",
)
@setting_option("database", "--database")
@setting_option(
    "celery_broker_url",
    "--broker-url",
    description="The server's Celery broker (redis://... or amqp://...). Unset: the "
    "MongoDB of --mongo-url (kombu's MongoDB transport).",
)
@setting_option("celery_queue", "--queue")
@setting_option("log_level", "--log-level")
def worker(**options: Any) -> None:
    """Run a worker (Celery, one task at a time; start more to go faster): bulk and
    view exports, subscription deliveries, appointment reminders, and slot generation
    from Schedules' hours (beat threads queue these when due).

    It needs the server's MongoDB (--mongo-url) and, unless the server uses MongoDB as
    its broker (no FHIR_CELERY_BROKER_URL), the same --broker-url as the server.
    """
    from fhir_server.bulk.tasks import run_worker
    from fhir_server.startup import mongo_problem

    settings = Settings(**{k: v for k, v in options.items() if v is not None})
    if not settings.mongo_url:
        raise click.UsageError("a worker needs --mongo-url (or FHIR_MONGO_URL)")
    problem = mongo_problem(settings.mongo_url)
    if problem:
        click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    run_worker(settings, settings.log_level)


main.add_command(import_group)
main.add_command(auth_group)
main.add_command(terminology_group)
main.add_command(profiles_group)
main.add_command(reminders_group)
main.add_command(view_group)

if __name__ == "__main__":
    main()
