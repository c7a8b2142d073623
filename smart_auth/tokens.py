"""Signing keys and access tokens: the one contract between the authorization server
(which issues tokens) and the FHIR API (which verifies them on every request).

Access tokens are RS256 JWTs signed with the newest key in the ``auth_keys`` collection.
Keys rotate: a key signs for ``rotate_after`` seconds and stays in the JWKS (so tokens
it signed still verify) for as long again plus the longest token lifetime. Revoked
access tokens are recorded by ``jti`` in ``auth_revoked`` (TTL-indexed on expiry).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from joserfc.jwt import JWTClaimsRegistry
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database

from smart_auth.scopes import InvalidScope, ScopeSet

ALGORITHM = "RS256"
KEYS = "auth_keys"
REVOKED = "auth_revoked"
DEFAULT_ROTATE_AFTER = 7 * 24 * 3600
MAX_TOKEN_LIFETIME = 24 * 3600


class InvalidToken(Exception):
    """A bearer token the FHIR API must refuse (RFC 6750 ``invalid_token``)."""


@dataclass(frozen=True)
class AccessToken:
    """What a verified access token lets its bearer do, and in whose context."""

    client_id: str
    subject: str | None
    scopes: ScopeSet
    patient: str | None
    encounter: str | None
    fhir_user: str | None
    jti: str
    expires_at: int
    claims: dict[str, Any]


class KeyRing:
    """The signing keys, kept in MongoDB so every API process and worker shares them."""

    def __init__(self, db: Database[Any], rotate_after: int = DEFAULT_ROTATE_AFTER) -> None:
        self.keys = db[KEYS]
        self.rotate_after = rotate_after

    def signing_key(self) -> RSAKey:
        """The newest key, or a fresh one when the newest is older than ``rotate_after``."""
        now = time.time()
        doc = self.keys.find_one({}, sort=[("created", -1)])
        if doc is not None and now - doc["created"] < self.rotate_after:
            return RSAKey.import_key(doc["jwk"])
        kid = secrets.token_urlsafe(12)
        key = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": ALGORITHM})
        retire = now + 2 * self.rotate_after + MAX_TOKEN_LIFETIME
        self.keys.insert_one(
            {"_id": kid, "created": now, "retire": retire, "jwk": key.as_dict(private=True)}
        )
        self.keys.delete_many({"retire": {"$lt": now}})
        return key

    def jwks(self) -> dict[str, Any]:
        """Public keys of every key not yet retired (RFC 7517 JWK Set)."""
        docs = self.keys.find({"retire": {"$gte": time.time()}}, sort=[("created", -1)])
        return {"keys": [RSAKey.import_key(d["jwk"]).as_dict(private=False) for d in docs]}

    def sign(self, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        key = self.signing_key()
        return jwt.encode({"alg": ALGORITHM, "kid": key.kid, **(header or {})}, claims, key)


def issue_access_token(
    keyring: KeyRing,
    *,
    issuer: str,
    audience: str,
    client_id: str,
    scope: str,
    lifetime: int,
    subject: str | None = None,
    patient: str | None = None,
    encounter: str | None = None,
    fhir_user: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Sign an access token; returns it and its claims (``jti`` identifies it for revocation)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject or client_id,
        "client_id": client_id,
        "scope": scope,
        "iat": now,
        "exp": now + lifetime,
        "jti": secrets.token_urlsafe(16),
    }
    for name, value in (("patient", patient), ("encounter", encounter), ("fhirUser", fhir_user)):
        if value is not None:
            claims[name] = value
    return keyring.sign(claims, {"typ": "at+jwt"}), claims


def revoke_access_token(db: Database[Any], jti: str, expires_at: int) -> None:
    """Refuse the token with this ``jti`` from now until it would have expired anyway."""
    expiry = datetime.fromtimestamp(expires_at, UTC)
    db[REVOKED].update_one({"_id": jti}, {"$set": {"exp": expiry}}, upsert=True)


def ensure_token_indexes(db: Database[Any]) -> None:
    db[REVOKED].create_index("exp", expireAfterSeconds=0)
    db[KEYS].create_index([("created", -1)])


def _unverified_kid(token: str) -> str | None:
    """The ``kid`` of a JWS header, read only to pick the key that will verify it."""
    segment = token.split(".", 1)[0]
    header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


class TokenVerifier:
    """Verifies bearer tokens for the FHIR API. Public keys are cached by ``kid``; an
    unknown ``kid`` triggers one reload, so a key rotated in by another process is found."""

    def __init__(self, db: AsyncDatabase[Any], issuer: str | None = None) -> None:
        self.db = db
        self.issuer = issuer
        self._keys: KeySet = KeySet([])

    async def _key_set(self, kid: str | None) -> KeySet:
        if kid is None or not any(k.kid == kid for k in self._keys.keys):
            docs = await self.db[KEYS].find({"retire": {"$gte": time.time()}}).to_list()
            self._keys = KeySet([RSAKey.import_key(d["jwk"]) for d in docs])
        return self._keys

    async def verify(self, token: str, audience: str) -> AccessToken:
        """The token's grants, or InvalidToken saying why it is refused."""
        try:
            kid = _unverified_kid(token)
            decoded = jwt.decode(token, await self._key_set(kid), algorithms=[ALGORITHM])
        except (JoseError, ValueError, TypeError, UnicodeDecodeError) as exc:
            raise InvalidToken("the access token is malformed or its signature is invalid") from exc
        claims = decoded.claims
        issuer: dict[str, Any] = (
            {"iss": {"essential": True, "value": self.issuer}} if self.issuer else {}
        )
        registry = JWTClaimsRegistry(
            exp={"essential": True},
            jti={"essential": True},
            client_id={"essential": True},
            aud={"essential": True, "value": audience.rstrip("/")},
            **issuer,
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidToken(f"the access token is not valid here: {exc.description}") from exc
        if await self.db[REVOKED].find_one({"_id": claims["jti"]}, {"_id": 1}) is not None:
            raise InvalidToken("the access token has been revoked")
        try:
            scopes = ScopeSet.parse(str(claims.get("scope", "")))
        except InvalidScope as exc:
            raise InvalidToken(str(exc)) from exc
        return AccessToken(
            client_id=str(claims["client_id"]),
            subject=claims.get("sub"),
            scopes=scopes,
            patient=claims.get("patient"),
            encounter=claims.get("encounter"),
            fhir_user=claims.get("fhirUser"),
            jti=str(claims["jti"]),
            expires_at=int(claims["exp"]),
            claims=dict(claims),
        )
