"""``fhir-server import``: sample legacy databases and migrations into FHIR servers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from importers.schemas import SCHEMAS
from smart_auth.cli import backend_client_options

BUILTIN = SCHEMAS  # each legacy schema has its built-in mapping of the same name


@contextmanager
def _exit_on_source_errors() -> Iterator[None]:
    """A broken mapping or an unreachable source ends the command with exit code 2 and
    one line saying why (row-level problems go to the report instead)."""
    from sqlalchemy.exc import SQLAlchemyError

    from importers.mapping.expressions import MappingError

    try:
        yield
    except MappingError as exc:
        click.echo(f"mapping error: {exc}", err=True)
        sys.exit(2)
    except SQLAlchemyError as exc:
        click.echo(f"source database error: {str(exc).splitlines()[0]}", err=True)
        sys.exit(2)


@click.group("import")
def import_group() -> None:
    """Migrate legacy clinic databases (MySQL/MariaDB, PostgreSQL) into a FHIR server."""


@import_group.command("make-sample")
@click.option("--schema", type=click.Choice(SCHEMAS), required=True, help="Legacy schema.")
@click.option("--patients", type=click.IntRange(1, 10_000_000), default=100, show_default=True)
@click.option(
    "--source",
    required=True,
    metavar="URL",
    help="SQLAlchemy URL of the database to create and fill, e.g. "
    "mysql+pymysql://root@127.0.0.1:3306/clinica?charset=utf8mb4",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Same seed, same data.")
@click.option("--replace", is_flag=True, help="Drop the schema's tables first if they exist.")
def make_sample(schema: str, patients: int, source: str, seed: int, replace: bool) -> None:
    """Create SCHEMA's legacy tables and fill them with realistic, dirty data."""
    from sqlalchemy.exc import SQLAlchemyError

    from importers.sample import make_sample as make

    try:
        counts = make(source, schema, patients, seed=seed, replace=replace)
    except (SQLAlchemyError, ValueError) as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    for table, count in counts.items():
        click.echo(f"{table}: {count}")


_SOURCE = click.option(
    "--source", required=True, metavar="URL", help="SQLAlchemy URL of the legacy DB."
)
_MAPPING = click.option(
    "--mapping",
    required=True,
    metavar="NAME|FILE",
    help=f"Built-in mapping ({', '.join(BUILTIN)}) or a mapping YAML file.",
)
_OVERRIDES = click.option(
    "--mapping-overrides",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="YAML/JSON file of code-map entries completing the mapping (what `import "
    "profile --skeleton` wrote, filled in).",
)


@import_group.command("run")
@_SOURCE
@_MAPPING
@_OVERRIDES
@click.option(
    "--fhir-url",
    metavar="BASE",
    help="FHIR base URL. With --dry-run it is optional: given, every resource is checked "
    "by that server's $validate (its profiles and required profiles included), nothing "
    "written; without it, only against the R4 base definitions.",
)
@click.option("--token", envvar="FHIR_IMPORT_TOKEN", help="Bearer token [env: FHIR_IMPORT_TOKEN].")
@backend_client_options
@click.option("--dry-run", is_flag=True, help="Map and validate everything, write nothing.")
@click.option(
    "--since",
    metavar="TIMESTAMP",
    help="Only rows updated at or after TIMESTAMP (ISO 8601; without an offset it is local "
    "time of the mapping's zone), for mappings with an update column.",
)
@click.option("--incremental", is_flag=True, help="Only rows updated since the last run.")
@click.option("--restart", is_flag=True, help="Do not resume an interrupted run.")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=200, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".fhir-import"),
    show_default=True,
    help="Where the state (watermarks, resume point) and reports are kept.",
)
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), help="Report CSV.")
@click.option(
    "--validate-first",
    is_flag=True,
    help="Validate every resource before sending it (by default the server validates, and "
    "only the resources of a bundle it refuses are checked here).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def run(
    source: str,
    mapping: str,
    mapping_overrides: Path | None,
    fhir_url: str | None,
    token: str | None,
    client_id: str | None,
    key_file: Path | None,
    scope: str,
    dry_run: bool,
    since: str | None,
    incremental: bool,
    restart: bool,
    batch_size: int,
    concurrency: int,
    state_dir: Path,
    report: Path | None,
    validate_first: bool,
    progress: bool,
) -> None:
    """Migrate the legacy database at --source into the FHIR server at --fhir-url.

    Exit code 0 when every row went in, 1 when any row failed (see the report), 2 for
    usage or mapping errors.
    """
    from datetime import datetime

    from importers.run import RunOptions, run_import

    if not dry_run and not fhir_url:
        raise click.UsageError("--fhir-url is required (or use --dry-run)")
    if fhir_url and not fhir_url.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http:// or https:// URL", param_hint="--fhir-url")
    if since:
        try:
            datetime.fromisoformat(since)
        except ValueError:
            raise click.BadParameter("not an ISO 8601 timestamp", param_hint="--since") from None
    backend = None
    if client_id is not None or key_file is not None:
        if not fhir_url:
            raise click.UsageError("--client-id/--key need --fhir-url")
        from fhir_server.cli import _backend_client  # (not at import: it imports this)

        backend = _backend_client(fhir_url, token, client_id, key_file, scope, 60.0)
    options = RunOptions(
        source_url=source,
        mapping=mapping,
        mapping_overrides=mapping_overrides,
        fhir_url=fhir_url,
        token=token,
        auth=backend[1] if backend else None,
        dry_run=dry_run,
        since=since,
        incremental=incremental,
        restart=restart,
        batch_size=batch_size,
        concurrency=concurrency,
        state_dir=state_dir,
        report=report,
        validate_first=validate_first,
    )
    from smart_auth.backend_client import BackendClientError

    failure: BaseException | None = None
    try:
        with _exit_on_source_errors():
            summary = run_import(options, progress=progress)
    except* BackendClientError as group:  # no token at the start, or none when renewing
        failure = group.exceptions[0]
        while isinstance(failure, BaseExceptionGroup):
            failure = failure.exceptions[0]
    if failure is not None:
        click.echo(f"error: {failure}", err=True)
        sys.exit(1)
    for line in summary.lines():
        click.echo(line)
    sys.exit(0 if summary.ok else 1)


@import_group.command("profile")
@_SOURCE
@_MAPPING
@_OVERRIDES
@click.option(
    "--skeleton",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the code-map entries the mapping lacks here (.json: JSON, else YAML), to "
    "fill in and pass back with --mapping-overrides.",
)
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the whole profile as JSON.",
)  # fmt: skip
@click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True)
def profile(
    source: str,
    mapping: str,
    mapping_overrides: Path | None,
    skeleton: Path | None,
    json_out: Path | None,
    top: int,
) -> None:
    """Show what the legacy database holds in every column the mapping checks, before
    importing: distinct values with counts, values no code map handles, NULL and empty
    counts, unreadable dates and times, orphan keys, duplicate cédulas and row keys.

    Read-only. Exit code 0 when the mapping refuses or drops nothing, 1 otherwise, 2 for
    usage, mapping or database errors.
    """
    import json

    from importers.mapping.model import load_mapping
    from importers.profile import profile_source, report_lines, write_skeleton

    with _exit_on_source_errors():
        m = load_mapping(mapping, mapping_overrides)
        found = profile_source(m, source, top)
    for line in report_lines(found):
        click.echo(line)
    try:
        if skeleton is not None:
            n = write_skeleton(found, m, skeleton)
            click.echo(f"{n} code-map entries to fill in written to {skeleton}")
        if json_out is not None:
            json_out.write_text(json.dumps(found.as_json(), ensure_ascii=False, indent=1))
    except OSError as exc:
        click.echo(f"cannot write {exc.filename}: {exc.strerror}", err=True)
        sys.exit(2)
    sys.exit(0 if found.clean else 1)


@import_group.command("check-mapping")
@click.argument("mapping", metavar="NAME|FILE")
def check_mapping(mapping: str) -> None:
    """Load and check a mapping (schema, expressions, reference order) without a database."""
    from importers.mapping.expressions import MappingError
    from importers.mapping.model import load_mapping

    try:
        m = load_mapping(mapping)
    except MappingError as exc:
        click.echo(f"mapping error: {exc}", err=True)
        sys.exit(2)
    for r in m.resources:
        click.echo(f"{r.name}: {r.where()} -> {r.resource_type} ({r.system})")


@import_group.command("users")
@click.option("--source", required=True, metavar="URL", help="SQLAlchemy URL of the legacy DB.")
@click.option("--mapping", required=True, metavar="NAME|FILE", help="Mapping with a users: part.")
@click.option("--fhir-url", required=True, metavar="BASE", help="Where the records went.")
@click.option("--token", envvar="FHIR_IMPORT_TOKEN", help="Bearer token [env: FHIR_IMPORT_TOKEN].")
@backend_client_options
@click.option("--mongo-url", envvar="FHIR_MONGO_URL", required=True, help="[env: FHIR_MONGO_URL]")
@click.option("--database", envvar="FHIR_DATABASE", default="fhir", show_default=True)
def users(
    source: str,
    mapping: str,
    fhir_url: str,
    token: str | None,
    client_id: str | None,
    key_file: Path | None,
    scope: str,
    mongo_url: str,
    database: str,
) -> None:
    """Copy legacy users and roles into the SMART authorization server's users.

    Run it after `import run`: each user is linked to its migrated Practitioner or
    Patient and must choose a new password (legacy hashes are not carried over). The
    records are looked up with --token or, like `import run`, as a backend client
    (--client-id/--key, tokens renewed).
    """
    from pymongo import MongoClient

    from fhir_server.cli import _backend_client  # (not at import: it imports this)
    from importers.mapping.model import load_mapping
    from importers.users import import_users
    from smart_auth.backend_client import BackendClientError
    from smart_auth.store import ensure_auth_indexes

    if not fhir_url.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http:// or https:// URL", param_hint="--fhir-url")
    backend = _backend_client(fhir_url, token, client_id, key_file, scope, 60.0)
    client: MongoClient[dict[str, object]] = MongoClient(mongo_url, tz_aware=True)
    try:
        with _exit_on_source_errors():
            db = client[database]
            ensure_auth_indexes(db)
            auth = backend[1] if backend else None
            summary = import_users(load_mapping(mapping), source, fhir_url, db, token, auth)
    except BackendClientError as exc:  # no token at the start, or none when renewing
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        client.close()
    for line in summary.lines():
        click.echo(line)
    sys.exit(0 if summary.failed == 0 else 1)
