"""Every change the admin console can make, one function per action, so each is a single
call site (where an audit record of the action belongs). They reuse the services the
``fhir-server auth`` CLI uses (smart_auth.clients, smart_auth.users, smart_auth.backend_client);
revoking a client, resetting a password and unlocking a user have no CLI command yet and
live here until one shares them.

Each takes the acting admin (``Actor``: username and the request's audit recorder) and
the synchronous auth database, and leaves an audit record of what it did
(docs/audit.md)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from pymongo.database import Database

from smart_auth.audit import Recorder
from smart_auth.backend_client import generate_key
from smart_auth.clients import ClientError, create_client, get_client
from smart_auth.store import CLIENTS, LOGIN_THROTTLE, REFRESH, USERS
from smart_auth.users import create_user

_HASHER = PasswordHasher()


class ActionError(ValueError):
    """An action refused as asked; the text is shown on the page (already in words)."""


@dataclass(frozen=True)
class Actor:
    """The signed-in admin acting, and where the record of the action goes."""

    username: str
    audit: Recorder

    def did(self, kind: str, detail: str, client_id: str | None = None) -> None:
        self.audit.record(kind, True, username=self.username, client_id=client_id, detail=detail)


@dataclass(frozen=True)
class NewClient:
    client_id: str
    secret: str | None = None  # confidential-symmetric: shown once
    private_key_pem: str | None = None  # backend: shown once, never stored
    kid: str | None = None


def register_client(
    db: Database[Any],
    actor: Actor,
    *,
    client_id: str,
    kind: str,
    name: str | None,
    redirect_uris: list[str],
    launch_url: str | None,
    scope: str | None,
    rate_limit: str | None,
    alg: str,
) -> NewClient:
    """Register a new client (never replace one: ``create_client`` would). ``kind`` is
    ``public``, ``confidential-symmetric`` or ``backend`` (a key pair made here, as
    ``auth create-client --type backend --generate-key`` does)."""
    key = None
    jwks = None
    client_type = kind
    if kind == "backend":
        client_type = "confidential-asymmetric"
        client_id = client_id or f"backend-{secrets.token_hex(4)}"
        key = generate_key(alg)
        jwks = key.public_jwks()
    if client_id and get_client(db, client_id) is not None:
        raise ActionError("client_exists")
    out = create_client(
        db,
        client_id,
        client_type,
        redirect_uris=redirect_uris,
        launch_url=launch_url,
        scope=scope,
        jwks=jwks,
        name=name,
        rate_limit=rate_limit,
    )
    client_id = str(out.get("client_id", client_id))
    actor.did("client-registered", f"client {client_id} ({kind}) registered", client_id)
    if key is None:
        return NewClient(client_id, out.get("client_secret"))
    return NewClient(client_id, None, key.pem().decode(), key.kid)


def revoke_client(db: Database[Any], actor: Actor, client_id: str) -> None:
    """Remove the registration (no new tokens, no client_credentials) and revoke every
    refresh token issued to it. Access tokens already issued run to their expiry."""
    removed = db[CLIENTS].delete_one({"_id": client_id})
    if removed.deleted_count == 0:
        raise ActionError("client_unknown")
    db[REFRESH].update_many({"client_id": client_id}, {"$set": {"revoked": True}})
    actor.did("client-revoked", f"client {client_id} revoked", client_id)


def add_user(
    db: Database[Any],
    actor: Actor,
    *,
    username: str,
    password: str,
    role: str,
    fhir_user: str | None,
    totp: bool,
    must_reset: bool,
    email: str | None,
) -> dict[str, Any]:
    """``smart_auth.users.create_user``, as ``auth create-user``; raises UserError."""
    created = create_user(db, username, password, role, fhir_user, totp, must_reset, email)
    actor.did("user-created", f"user {username} ({role}) created")
    return created


def reset_password(db: Database[Any], actor: Actor, username: str) -> str:
    """Give the user a random temporary password (returned, shown once) that only lets
    them choose a new one at their next sign-in (the ``must_reset_password`` flow of
    ``auth create-user --must-reset-password``), and revoke the refresh tokens apps hold
    for them: a reset is what one does to an account that may be in other hands."""
    temporary = secrets.token_urlsafe(12)
    done = db[USERS].update_one(
        {"_id": username},
        {"$set": {"password": _HASHER.hash(temporary), "must_reset_password": True}},
    )
    if done.matched_count == 0:
        raise ActionError("user_unknown")
    db[REFRESH].update_many({"grantor.username": username}, {"$set": {"revoked": True}})
    actor.did("password-reset", f"password of {username} reset")
    return temporary


def unlock_user(db: Database[Any], actor: Actor, username: str) -> None:
    """Forget the user's failed logins from every address (smart_auth/throttle.py)."""
    if db[USERS].find_one({"_id": username}, {"_id": 1}) is None:
        raise ActionError("user_unknown")
    db[LOGIN_THROTTLE].delete_many({"_id.u": username})
    actor.did("user-unlocked", f"user {username} unlocked")


__all__ = [
    "ActionError",
    "Actor",
    "ClientError",
    "NewClient",
    "add_user",
    "register_client",
    "reset_password",
    "revoke_client",
    "unlock_user",
]
