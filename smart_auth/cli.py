"""``fhir-server auth ...``: register clients and users of the authorization server.

They write to the same MongoDB as ``serve`` (``--mongo-url``/``--database``, or the
FHIR_MONGO_URL/FHIR_DATABASE variables). A fresh ``serve`` on the embedded mongod prints
these commands with its URL filled in; they work while that server runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from fhir_server.config import Settings

_TYPES = ("public", "confidential-symmetric", "confidential-asymmetric")
_ROLES = ("admin", "practitioner", "patient", "operator")


def _database(mongo_url: str | None, database: str | None) -> tuple[Any, Any]:
    from pymongo import MongoClient

    from smart_auth.store import ensure_auth_indexes

    overrides: dict[str, Any] = {"mongo_url": mongo_url, "database": database}
    settings = Settings(**{k: v for k, v in overrides.items() if v})
    if not settings.mongo_url:
        raise click.UsageError(
            "no MongoDB: pass --mongo-url (or set FHIR_MONGO_URL); for a server on the "
            "embedded mongod, use the URL `fhir-server serve` printed at start-up"
        )
    client: MongoClient[dict[str, Any]] = MongoClient(
        settings.mongo_url, tz_aware=True, serverSelectionTimeoutMS=10_000
    )
    db = client[settings.database]
    ensure_auth_indexes(db)
    return client, db


def _db_options(fn: Any) -> Any:
    fn = click.option("--database", help="MongoDB database [env: FHIR_DATABASE; default: fhir].")(
        fn
    )
    return click.option("--mongo-url", help="MongoDB connection string [env: FHIR_MONGO_URL].")(fn)


@click.group()
def auth() -> None:
    """Manage the SMART authorization server: clients and users."""


@auth.command("create-client")
@_db_options
@click.option("--client-id", required=True, help="The client_id apps will send.")
@click.option("--type", "client_type", required=True, type=click.Choice(_TYPES))
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Exact redirect URI.")
@click.option("--launch-url", help="The app's EHR launch URL (shown on /auth/ehr-launch).")
@click.option("--scope", help="Scopes the client may ever get (default: no restriction).")
@click.option("--jwks-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--jwks-uri", help="URL of the client's JWK Set (fetched and cached).")
@click.option("--name", help="Name shown on the consent page.")
def create_client_command(
    mongo_url: str | None,
    database: str | None,
    client_id: str,
    client_type: str,
    redirect_uris: tuple[str, ...],
    launch_url: str | None,
    scope: str | None,
    jwks_file: Path | None,
    jwks_uri: str | None,
    name: str | None,
) -> None:
    """Register (or replace) a client; prints {"client_id", "client_secret"} as JSON
    (the secret, for confidential-symmetric clients only, is shown this once)."""
    from smart_auth.clients import ClientError, create_client

    jwks = None
    if jwks_file is not None:
        try:
            jwks = json.loads(jwks_file.read_text())
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--jwks-file") from None
        if not isinstance(jwks, dict):
            raise click.BadParameter("must hold a JWK Set object", param_hint="--jwks-file")
    client, db = _database(mongo_url, database)
    try:
        out = create_client(
            db,
            client_id,
            client_type,
            redirect_uris=list(redirect_uris),
            launch_url=launch_url,
            scope=scope,
            jwks=jwks,
            jwks_uri=jwks_uri,
            name=name,
        )
    except ClientError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    finally:
        client.close()
    click.echo(json.dumps(out))


@auth.command("create-user")
@_db_options
@click.option("--username", required=True)
@click.option("--password", required=True, help="At least 8 characters.")
@click.option("--role", required=True, type=click.Choice(_ROLES))
@click.option("--fhir-user", help="Linked record: Practitioner/123 or Patient/456.")
@click.option("--totp", is_flag=True, help="Require a TOTP second factor (secret printed).")
@click.option("--must-reset-password", is_flag=True, help="Ask for a new password at login.")
@click.option("--email", help="The user's e-mail address.")
def create_user_command(
    mongo_url: str | None,
    database: str | None,
    username: str,
    password: str,
    role: str,
    fhir_user: str | None,
    totp: bool,
    must_reset_password: bool,
    email: str | None,
) -> None:
    """Create a user; prints it as JSON (with the TOTP secret and URI when --totp)."""
    from smart_auth.users import UserError, create_user

    client, db = _database(mongo_url, database)
    try:
        out = create_user(db, username, password, role, fhir_user, totp, must_reset_password, email)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    finally:
        client.close()
    click.echo(json.dumps(out))


def first_start_hint(mongo_url: str, database: str) -> str | None:
    """What to run when the server has no client yet (printed by ``serve``)."""
    from pymongo import MongoClient

    from smart_auth.store import CLIENTS, USERS

    client: MongoClient[dict[str, Any]]
    with MongoClient(mongo_url, serverSelectionTimeoutMS=10_000) as client:
        db: Any = client[database]
        if db[CLIENTS].estimated_document_count() and db[USERS].estimated_document_count():
            return None
    base = f"fhir-server auth {{}} --mongo-url '{mongo_url}' --database {database}"
    return "\n".join(
        [
            "SMART authorization is on and no client or user is registered yet. Create them:",
            "  "
            + base.format("create-user")
            + " --username admin --password '<a strong password>' --role admin",
            "  "
            + base.format("create-client")
            + " --client-id my-app --type public --redirect-uri https://app.example/callback",
            "  "
            + base.format("create-client")
            + " --client-id my-backend --type confidential-asymmetric --jwks-file keys.json"
            " --scope 'system/*.rs'",
            "(or run with --no-auth for local development)",
        ]
    )
