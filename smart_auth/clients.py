"""Registered OAuth clients (SMART apps and backend services) in ``auth_clients``.

Three kinds, as SMART App Launch names them: ``public`` (no secret; PKCE),
``confidential-symmetric`` (a client secret, stored as its SHA-256: the secret is 256
random bits, so a slow hash adds nothing) and ``confidential-asymmetric`` (a JWK Set,
inline or at a ``jwks_uri``; used for ``private_key_jwt`` and backend services).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from authlib.oauth2.rfc6749 import ClientMixin
from pymongo.database import Database

from smart_auth.ratelimit import normalise_quota
from smart_auth.scopes import InvalidScope, ResourceScope, ScopeSet, parse_scope
from smart_auth.store import CLIENTS

ClientType = Literal["public", "confidential-symmetric", "confidential-asymmetric"]
CLIENT_TYPES: tuple[str, ...] = ("public", "confidential-symmetric", "confidential-asymmetric")
_AUTH_METHODS = {
    "public": ("none",),
    "confidential-symmetric": ("client_secret_basic", "client_secret_post"),
    "confidential-asymmetric": ("private_key_jwt",),
}


class ClientError(ValueError):
    """A client registration that cannot be accepted."""


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def scope_covered(requested: str, allowed: ScopeSet) -> bool:
    """Whether one requested scope lies within ``allowed``: a resource scope is covered
    by an allowed one of the same context whose type is ``*`` or the same, whose
    interactions include the requested ones, and whose search parameters (if any) the
    requested scope repeats; any other scope must be allowed literally."""
    try:
        parsed = parse_scope(requested)
    except InvalidScope:
        return False
    if parsed is None:
        return requested in allowed.other
    return any(_covers(a, parsed) for a in allowed.resource)


def _covers(allowed: ResourceScope, wanted: ResourceScope) -> bool:
    return (
        allowed.context == wanted.context
        and allowed.resource_type in ("*", wanted.resource_type)
        and wanted.interactions <= allowed.interactions
        and set(allowed.params) <= set(wanted.params)
    )


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    """A registered client, as authlib's grants and endpoints consult it."""

    client_id: str
    client_type: str
    redirect_uris: list[str] = field(default_factory=list)
    launch_url: str | None = None
    scope: str | None = None
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    name: str = ""
    secret_hash: str | None = None
    rate_limit: str | None = None  # "600/60s", "0" (none); None: FHIR_RATE_LIMIT_CLIENT

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Client:
        return cls(
            client_id=doc["_id"],
            client_type=doc["type"],
            redirect_uris=list(doc.get("redirect_uris", [])),
            launch_url=doc.get("launch_url"),
            scope=doc.get("scope"),
            jwks=doc.get("jwks"),
            jwks_uri=doc.get("jwks_uri"),
            name=doc.get("name") or doc["_id"],
            secret_hash=doc.get("secret_hash"),
            rate_limit=doc.get("rate_limit"),
        )

    @property
    def is_public(self) -> bool:
        return self.client_type == "public"

    def allowed_scopes(self) -> ScopeSet | None:
        """The scopes this client may ever get; None: no restriction beyond the roles."""
        return None if self.scope is None else ScopeSet.parse(self.scope)

    def filter_scope(self, requested: list[str]) -> list[str]:
        allowed = self.allowed_scopes()
        if allowed is None:
            return list(requested)
        return [s for s in requested if scope_covered(s, allowed)]

    # authlib ClientMixin
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        return " ".join(self.filter_scope((scope or "").split()))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris  # exact match, never a prefix

    def check_client_secret(self, client_secret: str) -> bool:
        if self.secret_hash is None:
            return False
        return hmac.compare_digest(self.secret_hash, _hash_secret(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in _AUTH_METHODS[self.client_type]

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and bool(self.redirect_uris)

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type == "client_credentials":
            return self.client_type == "confidential-asymmetric"
        return grant_type in ("authorization_code", "refresh_token")


def get_client(db: Database[Any], client_id: str) -> Client | None:
    doc = db[CLIENTS].find_one({"_id": client_id})
    return Client.from_doc(doc) if doc else None


def create_client(
    db: Database[Any],
    client_id: str,
    client_type: str,
    *,
    redirect_uris: list[str] | tuple[str, ...] = (),
    launch_url: str | None = None,
    scope: str | None = None,
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
    name: str | None = None,
    rate_limit: str | None = None,
) -> dict[str, Any]:
    """Register a client; returns ``{"client_id", "client_secret"}`` (the secret only for
    confidential-symmetric clients: it is shown once and stored hashed)."""
    if client_type not in CLIENT_TYPES:
        raise ClientError(f"client type must be one of {', '.join(CLIENT_TYPES)}")
    if not client_id or len(client_id) > 200:
        raise ClientError("client_id must be 1 to 200 characters")
    for uri in [*redirect_uris, *([launch_url] if launch_url else [])]:
        if not uri.startswith(("https://", "http://")) or "#" in uri:
            raise ClientError(f"not an absolute http(s) URI without fragment: {uri}")
    if client_type == "confidential-asymmetric":
        if (jwks is None) == (jwks_uri is None):
            raise ClientError(
                "a confidential-asymmetric client needs exactly one of jwks, jwks_uri"
            )
        if jwks is not None and not isinstance(jwks.get("keys"), list):
            raise ClientError('jwks must be a JWK Set: {"keys": [...]}')
    elif jwks is not None or jwks_uri is not None:
        raise ClientError("only confidential-asymmetric clients have a JWK Set")
    if scope is not None:
        try:
            ScopeSet.parse(scope)
        except InvalidScope as exc:
            raise ClientError(str(exc)) from exc
    if rate_limit is not None:
        try:
            rate_limit = normalise_quota(rate_limit)
        except ValueError as exc:
            raise ClientError(f"rate limit: {exc}") from None
    secret = secrets.token_urlsafe(32) if client_type == "confidential-symmetric" else None
    doc: dict[str, Any] = {
        "_id": client_id,
        "type": client_type,
        "redirect_uris": list(redirect_uris),
        "launch_url": launch_url,
        "scope": scope,
        "jwks": jwks,
        "jwks_uri": jwks_uri,
        "name": name or client_id,
        "secret_hash": _hash_secret(secret) if secret else None,
        "rate_limit": rate_limit,
        "created": time.time(),
    }
    db[CLIENTS].replace_one({"_id": client_id}, doc, upsert=True)
    return {"client_id": client_id, "client_secret": secret}


def all_clients(db: Database[Any]) -> list[Client]:
    return [Client.from_doc(d) for d in db[CLIENTS].find().sort("_id", 1)]


def launchable_clients(db: Database[Any]) -> list[Client]:
    """Clients an EHR user can launch: those registered with a launch URL."""
    docs = db[CLIENTS].find({"launch_url": {"$type": "string"}}).sort("_id", 1)
    return [Client.from_doc(d) for d in docs]
