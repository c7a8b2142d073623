"""``fhir-server auth ...``: register clients and users of the authorization server.

They write to the same MongoDB as ``serve`` (``--mongo-url``/``--database``, or the
FHIR_MONGO_URL/FHIR_DATABASE variables). A fresh ``serve`` on the embedded mongod prints
these commands with its URL filled in; they work while that server runs.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fhir_server.config import Settings
from smart_auth.backend_client import (
    ALGORITHMS,
    DEFAULT_SCOPE,
    BackendClient,
    BackendClientError,
    SigningKey,
    read_key,
    write_key,
)
from smart_auth.backend_client import generate_key as new_key

F = TypeVar("F", bound=Callable[..., Any])


def backend_client_options(command: F) -> F:
    """``--client-id``, ``--key`` and ``--scope``: a command (``load``, ``import run``)
    that authenticates as a SMART backend client instead of a fixed ``--token``."""
    for option in reversed(
        (
            click.option(
                "--client-id",
                help="Authenticate as this SMART backend client instead of --token: tokens "
                "are fetched with --key and renewed before they expire, so a long run "
                "outlives them.",
            ),
            click.option(
                "--key",
                "key_file",
                type=click.Path(dir_okay=False, path_type=Path),
                help="The backend client's private key (PEM), as written by "
                "`fhir-server auth create-client --type backend --generate-key`.",
            ),
            click.option(
                "--scope",
                default="system/*.cruds",
                show_default=True,
                help="Scopes the backend client asks for (with --client-id).",
            ),
        )
    ):
        command = option(command)
    return command


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
    """Manage the SMART authorization server (clients, users); get backend tokens."""


@auth.command("create-client")
@_db_options
@click.option(
    "--client-id",
    help="The client_id apps will send (required, except with --generate-key: then a "
    "random backend-... id is made up and printed).",
)
@click.option(
    "--type",
    "client_type",
    required=True,
    type=click.Choice((*_TYPES, "backend")),
    help="backend: a SMART Backend Services client, i.e. confidential-asymmetric.",
)
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Exact redirect URI.")
@click.option("--launch-url", help="The app's EHR launch URL (shown on /auth/ehr-launch).")
@click.option("--scope", help="Scopes the client may ever get (default: no restriction).")
@click.option("--jwks-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--jwks-uri", help="URL of the client's JWK Set (fetched and cached).")
@click.option("--name", help="Name shown on the consent page.")
@click.option(
    "--rate-limit",
    help="This client's quota instead of FHIR_RATE_LIMIT_CLIENT: N/period (600/60s, "
    "50000/1h), or 0 for none.",
)
@click.option(
    "--generate-key",
    is_flag=True,
    help="Make the key pair here (backend and confidential-asymmetric clients): register "
    "the public key, write the private key to --key-out (mode 0600).",
)
@click.option(
    "--alg",
    type=click.Choice(ALGORITHMS),
    default="ES384",
    show_default=True,
    help="Signing algorithm of the generated key (EC P-384 or RSA 3072).",
)
@click.option(
    "--key-out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory for the generated private key, written as <client-id>.key.pem.",
)
def create_client_command(
    mongo_url: str | None,
    database: str | None,
    client_id: str | None,
    client_type: str,
    redirect_uris: tuple[str, ...],
    launch_url: str | None,
    scope: str | None,
    jwks_file: Path | None,
    jwks_uri: str | None,
    name: str | None,
    rate_limit: str | None,
    generate_key: bool,
    alg: str,
    key_out: Path,
) -> None:
    """Register (or replace) a client; prints {"client_id", "client_secret"} as JSON
    (the secret, for confidential-symmetric clients only, is shown this once).

    With --generate-key it also prints "key_file", "kid" and the registered public
    "jwks"; get tokens with the key: fhir-server auth token --url BASE --client-id ID
    --key FILE.
    """
    from smart_auth.clients import ClientError, create_client
    from smart_auth.ratelimit import normalise_quota

    if client_type == "backend":
        client_type = "confidential-asymmetric"
    if rate_limit is not None:
        try:
            rate_limit = normalise_quota(rate_limit)
        except ValueError as exc:
            click.echo(f"error: --rate-limit: {exc}", err=True)
            sys.exit(2)
    key: SigningKey | None = None
    key_file: Path | None = None
    if generate_key:
        if client_type != "confidential-asymmetric":
            raise click.UsageError(
                "--generate-key needs --type backend (or confidential-asymmetric)"
            )
        if jwks_file is not None or jwks_uri is not None:
            raise click.UsageError(
                "--generate-key registers its own key: drop --jwks-file/--jwks-uri"
            )
        client_id = client_id or f"backend-{secrets.token_hex(4)}"
        key_file = key_out / f"{_file_safe(client_id)}.key.pem"
    elif not client_id:
        raise click.UsageError("Missing option '--client-id'.")
    jwks = None
    if jwks_file is not None:
        try:
            jwks = json.loads(jwks_file.read_text())
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--jwks-file") from None
        if not isinstance(jwks, dict):
            raise click.BadParameter("must hold a JWK Set object", param_hint="--jwks-file")
    client, db = _database(mongo_url, database)
    written: Path | None = None
    try:
        if key_file is not None:
            if not key_out.is_dir():
                raise BackendClientError(f"--key-out {key_out} is not a directory")
            key = new_key(alg)
            jwks = key.public_jwks()
            write_key(key_file, key)
            written = key_file
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
            rate_limit=rate_limit,
        )
    except (ClientError, BackendClientError) as exc:
        if written is not None:
            written.unlink()  # the key of a client that was never registered
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except BaseException:
        if written is not None:
            written.unlink()
        raise
    finally:
        client.close()
    if rate_limit is not None:
        out["rate_limit"] = rate_limit
    if key is not None and key_file is not None:
        out.update(key_file=str(key_file.resolve()), alg=key.alg, kid=key.kid, jwks=jwks)
        click.echo(json.dumps(out))
        click.echo(
            f"private key written to {key_file} (mode 0600); get a token with:\n"
            f"  fhir-server auth token --url <FHIR base URL> --client-id {client_id} "
            f"--key {key_file}",
            err=True,
        )
        return
    click.echo(json.dumps(out))


@auth.command("list-clients")
@_db_options
def list_clients_command(mongo_url: str | None, database: str | None) -> None:
    """Print the registered clients, one JSON object per line: client_id, type, name,
    scope, redirect_uris, launch_url and rate_limit (null: FHIR_RATE_LIMIT_CLIENT)."""
    from smart_auth.clients import all_clients

    client, db = _database(mongo_url, database)
    try:
        found = all_clients(db)
    finally:
        client.close()
    for c in found:
        shown = {
            "client_id": c.client_id,
            "type": c.client_type,
            "name": c.name,
            "scope": c.scope,
            "redirect_uris": c.redirect_uris,
            "launch_url": c.launch_url,
            "rate_limit": c.rate_limit,
        }
        click.echo(json.dumps(shown))


def _file_safe(client_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", client_id).lstrip(".") or "client"


@auth.command("token")
@click.option(
    "--url",
    "base_url",
    required=True,
    metavar="BASE",
    help="FHIR base URL; the token endpoint is read from BASE/.well-known/smart-configuration.",
)
@click.option("--client-id", required=True, help="The backend client's client_id.")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(path_type=Path),
    help="Its private key (PEM: EC P-384 signs ES384, RSA signs RS384).",
)
@click.option("--scope", default=DEFAULT_SCOPE, show_default=True, help="Scopes to ask for.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole token response as JSON.")
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=30.0, show_default=True, help="Seconds."
)
def token_command(
    base_url: str, client_id: str, key_file: Path, scope: str, as_json: bool, timeout: float
) -> None:
    """Get an access token as a SMART Backend Services client (client_credentials with
    a signed private_key_jwt assertion) and print it, alone, on stdout:
    TOKEN=$(fhir-server auth token ...). Errors are one line on stderr, exit code 1."""
    if not base_url.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http:// or https:// URL", param_hint="--url")
    try:
        backend = BackendClient(base_url, client_id, read_key(key_file), scope, timeout)
        body = asyncio.run(backend.fetch())
    except BackendClientError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(json.dumps(body) if as_json else body["access_token"])


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
            + " --client-id my-backend --type backend --generate-key --scope 'system/*.rs'",
            "(or run with --no-auth for local development)",
        ]
    )
