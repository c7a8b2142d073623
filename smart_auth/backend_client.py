"""The client side of SMART Backend Services: a key pair, the signed client assertion,
and access tokens fetched with it and renewed before they expire.

``fhir-server auth create-client --generate-key`` writes the private key,
``fhir-server auth token`` prints one token, and ``fhir-server load --client-id --key``
keeps a long upload authorized past the token lifetime (``BackendAuth``). Keys and JWTs
go through joserfc (on ``cryptography``); nothing here is hand-written crypto.

What the assertion carries follows SMART Backend Services ("Protocol details",
client-confidential-asymmetric): ``iss`` = ``sub`` = client id, ``aud`` = the token
endpoint, ``exp`` no more than five minutes ahead, a ``jti`` never reused, signed RS384
or ES384 with the ``kid`` of a key in the client's registered JWK Set.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("ES384", "RS384")
ASSERTION_SECONDS = 300  # SMART: exp "no more than five minutes in the future"
DEFAULT_SCOPE = "system/*.rs"


class BackendClientError(Exception):
    """A failure worth one line to the user: it names the URL or file concerned."""


@dataclass(frozen=True)
class SigningKey:
    """A private key and the algorithm it signs assertions with; its ``kid`` is the
    RFC 7638 thumbprint, so the key file alone reproduces the registered ``kid``."""

    key: ECKey | RSAKey
    alg: str

    @property
    def kid(self) -> str:
        return self.key.thumbprint()

    def public_jwks(self) -> dict[str, Any]:
        """The JWK Set to register: the public half only."""
        public = self.key.as_dict(private=False)
        return {"keys": [{**public, "kid": self.kid, "alg": self.alg, "use": "sig"}]}

    def pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.key.as_pem(private=True)


def generate_key(alg: str = "ES384") -> SigningKey:
    """A new key: P-384 for ES384, 3072-bit RSA for RS384."""
    if alg == "ES384":
        return SigningKey(ECKey.generate_key("P-384"), alg)
    if alg == "RS384":
        return SigningKey(RSAKey.generate_key(3072), alg)
    raise ValueError(f"unsupported algorithm {alg}; use one of {', '.join(ALGORITHMS)}")


def write_key(path: Path, key: SigningKey) -> None:
    """Write the private key readable by its owner only (mode 0600, set at creation so it
    is never readable by others); an existing file is never overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackendClientError(
            f"{path} already exists: remove it or choose another --key-out"
        ) from None
    except OSError as exc:
        raise BackendClientError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(key.pem())


def read_key(path: Path) -> SigningKey:
    """The signing key in a PEM file: EC P-384 signs ES384, RSA (2048 bits or more) RS384."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackendClientError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        private = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise BackendClientError(
            f"{path} is not an unencrypted PEM private key (EC P-384 or RSA)"
        ) from None
    if isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1):
        return SigningKey(ECKey.import_key(data), "ES384")
    if isinstance(private, rsa.RSAPrivateKey) and private.key_size >= 2048:
        return SigningKey(RSAKey.import_key(data), "RS384")
    raise BackendClientError(
        f"{path}: SMART Backend Services signs with ES384 (an EC P-384 key) or RS384 "
        "(an RSA key of 2048 bits or more); this key is neither"
    )


def client_assertion(key: SigningKey, client_id: str, token_url: str) -> str:
    """A fresh signed assertion for one token request (new ``jti`` every time)."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": now,
        "exp": now + ASSERTION_SECONDS,
        "jti": secrets.token_urlsafe(24),
    }
    header = {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key.key, algorithms=[key.alg])


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict) and "error" in body:
        description = body.get("error_description")
        return f"{body['error']}: {description}" if description else str(body["error"])
    return response.text.strip()[:200]


class BackendClient:
    """Gets access tokens for one backend client and keeps one fresh: the token endpoint
    comes from ``BASE/.well-known/smart-configuration``; a cached token is renewed once
    less than a fifth of its lifetime (at most a minute) remains, so a request never
    leaves with a token about to expire. Safe to share between concurrent tasks."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        key: SigningKey,
        scope: str = DEFAULT_SCOPE,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.key = key
        self.scope = scope
        self.timeout = timeout
        self.token_url: str | None = None
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def _discover(self, http: httpx.AsyncClient) -> str:
        url = f"{self.base_url}/.well-known/smart-configuration"
        try:
            r = await http.get(url, headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            raise BackendClientError(f"cannot reach {url}: {exc or type(exc).__name__}") from None
        if r.status_code != 200:
            raise BackendClientError(
                f"{url} answered HTTP {r.status_code}: is {self.base_url} the FHIR base URL "
                "of a SMART server?"
            )
        try:
            endpoint = r.json().get("token_endpoint")
        except (ValueError, AttributeError):
            endpoint = None
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise BackendClientError(f"{url} names no token_endpoint")
        return endpoint

    async def fetch(self) -> dict[str, Any]:
        """A new token response (``access_token``, ``expires_in``, ``scope`` ...)."""
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as http:
            if self.token_url is None:
                self.token_url = await self._discover(http)
            form = {
                "grant_type": "client_credentials",
                "scope": self.scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": client_assertion(self.key, self.client_id, self.token_url),
            }
            try:
                r = await http.post(self.token_url, data=form)
            except httpx.TransportError as exc:
                raise BackendClientError(
                    f"cannot reach {self.token_url}: {exc or type(exc).__name__}"
                ) from None
        if r.status_code != 200:
            raise BackendClientError(
                f"{self.token_url} refused client {self.client_id!r} "
                f"(HTTP {r.status_code}): {_error_text(r)}"
            )
        try:
            body = r.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise BackendClientError(f"{self.token_url} answered without an access_token")
        self.fetches += 1
        return body

    async def token(self, stale: str | None = None) -> str:
        """The current access token, fetched or renewed when due. ``stale``: a token the
        server refused (401); it is replaced unless another task already did so."""
        async with self._lock:
            due = time.monotonic() >= self._renew_at
            if self._token is None or due or (stale is not None and stale == self._token):
                body = await self.fetch()
                lifetime = float(body.get("expires_in") or 300)
                self._token = str(body["access_token"])
                self._renew_at = time.monotonic() + lifetime - min(60.0, lifetime / 5)
            return self._token


class BackendAuth(httpx.Auth):
    """httpx authentication with a ``BackendClient``: every request carries a fresh
    token, and a 401 (a token revoked, or expired in flight) is retried once with a new
    one. Asynchronous clients only."""

    def __init__(self, client: BackendClient) -> None:
        self.client = client

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.client.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            token = await self.client.token(stale=token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request
