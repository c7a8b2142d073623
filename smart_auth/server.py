"""authlib's OAuth 2.0 server classes, wired to MongoDB and to SMART's token response.

authlib has no Starlette server integration, so ``OAuth2Request`` is built here from the
method, URL, headers and (already read) form body of a Starlette request, and
``handle_response`` turns authlib's ``(status, body, headers)`` into a Starlette
response. Everything in this module is synchronous (authlib's hooks are); the routes
run it in a worker thread.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    InvalidClientError,
    InvalidScopeError,
    OAuth2Payload,
    OAuth2Request,
    grants,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from fhir_server.config import Settings
from smart_auth import roles
from smart_auth.clients import Client, get_client
from smart_auth.scopes import REFRESH_SCOPES
from smart_auth.store import CODES, JTIS, REFRESH
from smart_auth.tokens import ALGORITHM, REVOKED, KeyRing, issue_access_token, revoke_access_token
from smart_auth.urls import Urls

ASSERTION_ALGORITHMS = ["RS384", "ES384"]
MAX_ASSERTION_LIFETIME = 300
CODE_SECONDS = 300
USER_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
SECRET_REFUSED = (
    "client_credentials needs a signed client assertion (private_key_jwt, RS384 or ES384): "
    "SMART Backend Services does not accept client secrets. Register a backend client "
    "with `fhir-server auth create-client --type backend --generate-key --client-id ID` "
    "and get tokens with `fhir-server auth token --url BASE --client-id ID --key ID.key.pem`"
)


# ----------------------------------------------------------------------------- requests


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._datalist[key].append(value)
        self._data = {k: v[0] for k, v in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class SmartRequest(OAuth2Request):  # type: ignore[misc]
    """An authlib request from the parts of a Starlette request, plus the server URLs."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers | dict[str, str],
        query: list[tuple[str, str]],
        form: list[tuple[str, str]],
        urls: Urls,
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self._args = dict(reversed(query))
        self._form = dict(reversed(form))
        self.payload = _Payload(query + form)
        self.urls = urls

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


# ----------------------------------------------------------------------------- models


@dataclass
class Grantor:
    """Who granted what, and in which launch context: authlib's "user" of a grant."""

    scope: str
    aud: str
    username: str | None = None
    fhir_user: str | None = None
    patient: str | None = None
    encounter: str | None = None
    need_patient_banner: bool = True
    nonce: str | None = None
    auth_time: int | None = None


class AuthorizationCode:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.code_challenge = doc.get("code_challenge")
        self.code_challenge_method = doc.get("code_challenge_method")
        self.grantor = Grantor(**doc["grantor"])

    def get_redirect_uri(self) -> str:
        return str(self.doc["redirect_uri"])

    def get_scope(self) -> str:
        return self.grantor.scope


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class RefreshToken:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.grantor = Grantor(**doc["grantor"])

    def check_client(self, client: Client) -> bool:
        return bool(self.doc["client_id"] == client.client_id)

    def get_scope(self) -> str:
        return self.grantor.scope

    def get_expires_in(self) -> int:
        return int(self.doc["expires"].timestamp() - time.time())

    def is_expired(self) -> bool:
        return self.get_expires_in() <= 0

    def is_revoked(self) -> bool:
        return bool(self.doc.get("revoked") or self.doc.get("rotated"))


class AccessTokenRecord:
    """A verified access token JWT, for introspection and revocation."""

    def __init__(self, claims: dict[str, Any], revoked: bool) -> None:
        self.claims = claims
        self.revoked = revoked

    def check_client(self, client: Client) -> bool:
        return bool(self.claims.get("client_id") == client.client_id)

    def get_scope(self) -> str:
        return str(self.claims.get("scope", ""))

    def is_expired(self) -> bool:
        return int(self.claims["exp"]) <= time.time()

    def is_revoked(self) -> bool:
        return self.revoked


# ----------------------------------------------------------------------------- grants


class _SmartTokens:
    """Routes authlib's token generation to SmartServer.issue (which needs the request)."""

    request: SmartRequest
    server: SmartServer

    def generate_token(
        self,
        user: Grantor | None = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        return self.server.issue(self.request, self.request.client, user, scope or "")


class AuthorizationCodeGrant(_SmartTokens, grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = USER_AUTH_METHODS

    def save_authorization_code(self, code: str, request: SmartRequest) -> None:
        grantor: Grantor = request.user
        data = request.payload.data
        self.server.db[CODES].insert_one(
            {
                "_id": _hash(code),
                "client_id": request.client.client_id,
                "redirect_uri": data.get("redirect_uri") or "",
                "code_challenge": data.get("code_challenge"),
                "code_challenge_method": data.get("code_challenge_method"),
                "grantor": asdict(grantor),
                "expires": datetime.fromtimestamp(time.time() + CODE_SECONDS, UTC),
            }
        )

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        # Single use: the code is deleted as it is read, so a replay finds nothing even
        # when two requests race (RFC 6749 section 4.1.2).
        doc = self.server.db[CODES].find_one_and_delete(
            {"_id": _hash(code), "client_id": client.client_id}
        )
        if doc is None or doc["expires"].replace(tzinfo=UTC).timestamp() < time.time():
            return None
        return AuthorizationCode(doc)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        pass  # already deleted by query_authorization_code

    def authenticate_user(self, authorization_code: AuthorizationCode) -> Grantor:
        return authorization_code.grantor


class SmartCodeChallenge(CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 only (SMART 2.2: ``plain`` must not be supported)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"


class RefreshTokenGrant(_SmartTokens, grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = USER_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def _validate_request_client(self) -> Client:
        """A public client may refresh without naming itself (RFC 6749 section 6 has no
        ``client_id``; fhirclient sends none): the token then names its client, which
        must be public. Anyone else authenticates as usual."""
        request = self.request
        anonymous = not (
            request.payload.client_id
            or request.headers.get("Authorization")
            or request.form.get("client_assertion")
        )
        token = request.form.get("refresh_token")
        if anonymous and isinstance(token, str):
            doc = self.server.db[REFRESH].find_one({"_id": _hash(token)}, {"client_id": 1})
            client = self.server.query_client(doc["client_id"]) if doc else None
            if client is not None and client.is_public:
                request.auth_method = "none"
                return client
        return super()._validate_request_client()  # type: ignore[no-any-return]

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshToken | None:
        """Rotation: the token is marked used as it is redeemed; presenting a used one
        again means it leaked, so its whole family (every token descended from the same
        authorization) is revoked."""
        db = self.server.db
        key = _hash(refresh_token)
        client_id = self.request.client.client_id  # authenticated before this is called
        doc = db[REFRESH].find_one_and_update(
            {"_id": key, "client_id": client_id, "rotated": False, "revoked": False},
            {"$set": {"rotated": True}},
        )
        if doc is None:
            old = db[REFRESH].find_one({"_id": key, "client_id": client_id})
            if old is not None and old.get("rotated"):
                self.server.revoke_family(old["family"])
            return None
        token = RefreshToken(doc)
        if token.get_expires_in() <= 0:
            return None
        return token

    def authenticate_user(self, refresh_token: RefreshToken) -> Grantor:
        return refresh_token.grantor

    def revoke_old_credential(self, refresh_token: RefreshToken) -> None:
        pass  # marked as rotated when redeemed


class BackendServicesGrant(_SmartTokens, grants.ClientCredentialsGrant):  # type: ignore[misc]
    """SMART Backend Services: client credentials with a signed JWT assertion, for
    ``system/`` scopes only."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]

    def authenticate_token_endpoint_client(self) -> Client:
        """A client secret is refused here, as SMART says: the symmetric profile "is not
        intended for SMART Backend Services clients" (client-confidential-symmetric), so
        the answer says how to register an asymmetric client instead."""
        try:
            return super().authenticate_token_endpoint_client()  # type: ignore[no-any-return]
        except InvalidClientError as exc:
            request = self.request
            basic = request.headers.get("Authorization", "").lower().startswith("basic ")
            if not (basic or request.form.get("client_secret")):
                raise
            raise InvalidClientError(
                status_code=401 if basic else exc.status_code,  # RFC 6749 section 5.2
                description=SECRET_REFUSED,
            ) from exc

    def validate_requested_scope(self) -> None:
        requested = (self.request.payload.scope or "").split()
        granted = self.request.client.filter_scope(roles.system_scopes(requested))
        if not granted:
            raise InvalidScopeError("no system/ scope this client may have was requested")
        self.request.scope = " ".join(granted)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        token = self.generate_token(scope=self.request.scope, include_refresh_token=False)
        return 200, token, self.TOKEN_RESPONSE_HEADER


# ----------------------------------------------------------------------------- client auth


class JwksCache:
    """Client JWK Sets fetched from their ``jwks_uri``, kept for ``ttl`` seconds and
    refetched at once when an assertion names a ``kid`` the cached set lacks."""

    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._sets: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, uri: str, kid: str | None) -> KeySet:
        with self._lock:
            cached = self._sets.get(uri)
        fresh = cached is not None and time.monotonic() - cached[0] < self.ttl
        if (
            cached
            and fresh
            and (kid is None or any(k.get("kid") == kid for k in cached[1]["keys"]))
        ):
            return KeySet.import_key_set(cached[1])  # type: ignore[arg-type]
        try:
            response = httpx.get(uri, timeout=10, follow_redirects=False)
            response.raise_for_status()
            jwks = response.json()
            keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        except (httpx.HTTPError, ValueError, JoseError, TypeError, KeyError) as exc:
            raise InvalidClientError(
                description=f"cannot use the client's jwks_uri: {exc}"
            ) from exc
        with self._lock:
            self._sets[uri] = (time.monotonic(), jwks)
        return keys


class PrivateKeyJwt(JWTBearerClientAssertion):  # type: ignore[misc]
    """RFC 7523 client authentication as SMART Backend Services profiles it: RS384 or
    ES384 only, ``aud`` = the token endpoint, ``exp`` at most five minutes ahead and
    every ``jti`` used once (remembered until the assertion expires)."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, db: Database[Any], jwks_cache: JwksCache) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self.db = db
        self.jwks_cache = jwks_cache
        self._local = threading.local()

    def __call__(self, query_client: Any, request: SmartRequest) -> Client | None:
        self._local.request = request
        self._local.header = {}
        return super().__call__(query_client, request)  # type: ignore[no-any-return]

    def get_audiences(self) -> list[str]:
        urls: Urls = self._local.request.urls
        return [urls.token]

    def extract_assertion(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        header, claims = super().extract_assertion(assertion)
        if header.get("alg") not in ASSERTION_ALGORITHMS:
            raise InvalidClientError(
                description="client assertions must be signed with RS384 or ES384"
            )
        self._local.header = header
        return header, claims

    def process_assertion_claims(self, assertion: str, key: Any) -> dict[str, Any]:
        try:
            token = jwt.decode(assertion, key, algorithms=ASSERTION_ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description=f"invalid client assertion: {exc}") from exc
        self.verify_claims(token.claims)
        return dict(token.claims)

    def verify_claims(self, claims: dict[str, Any]) -> None:
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise InvalidClientError(description="the client assertion has no exp")
        if exp > time.time() + MAX_ASSERTION_LIFETIME + self.leeway:
            raise InvalidClientError(
                description="the client assertion's exp is more than 5 minutes in the future"
            )
        super().verify_claims(claims)

    def validate_jti(self, claims: dict[str, Any], jti: Any) -> bool:
        try:
            self.db[JTIS].insert_one(
                {
                    "_id": f"{claims['iss']}|{jti}",
                    "expires": datetime.fromtimestamp(float(claims["exp"]) + 60, UTC),
                }
            )
        except DuplicateKeyError:
            return False
        return True

    def resolve_client_public_key(self, client: Client) -> KeySet:
        if client.jwks is not None:
            try:
                return KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError, KeyError) as exc:
                raise InvalidClientError(description="the client's JWK Set is invalid") from exc
        if client.jwks_uri:
            return self.jwks_cache.get(client.jwks_uri, self._local.header.get("kid"))
        raise InvalidClientError(description="the client has no public keys")


# ----------------------------------------------------------------------------- endpoints


class _TokenLookup:
    server: SmartServer

    def query_token(
        self, token_string: str, token_type_hint: str | None
    ) -> AccessTokenRecord | RefreshToken | None:
        if token_type_hint != "refresh_token":
            record = self.server.verify_access_token(token_string)
            if record is not None:
                return record
        doc = self.server.db[REFRESH].find_one({"_id": _hash(token_string)})
        return RefreshToken(doc) if doc else None


class SmartIntrospection(_TokenLookup, IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662. Confidential clients (resource servers among them) may introspect any
    token; a public client only its own."""

    CLIENT_AUTH_METHODS = USER_AUTH_METHODS

    def check_permission(self, token: Any, client: Client, request: SmartRequest) -> bool:
        return not client.is_public or bool(token.check_client(client))

    def introspect_token(self, token: AccessTokenRecord | RefreshToken) -> dict[str, Any]:
        if isinstance(token, AccessTokenRecord):
            c = token.claims
            out: dict[str, Any] = {
                "active": True,
                "token_type": "Bearer",
                **{
                    k: c[k]
                    for k in ("scope", "client_id", "sub", "exp", "iat", "iss", "aud")
                    if k in c
                },
            }
            for name in ("patient", "encounter", "fhirUser"):
                if name in c:
                    out[name] = c[name]
            return out
        return {
            "active": True,
            "token_type": "refresh_token",
            "scope": token.get_scope(),
            "client_id": token.doc["client_id"],
            "exp": int(token.doc["expires"].replace(tzinfo=UTC).timestamp()),
            **({"sub": token.grantor.username} if token.grantor.username else {}),
        }


class SmartRevocation(_TokenLookup, RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009: access tokens by ``jti`` (the FHIR API then refuses them), refresh
    tokens with their whole family."""

    CLIENT_AUTH_METHODS = USER_AUTH_METHODS

    def revoke_token(self, token: AccessTokenRecord | RefreshToken, request: SmartRequest) -> None:
        if isinstance(token, AccessTokenRecord):
            revoke_access_token(self.server.db, token.claims["jti"], int(token.claims["exp"]))
        else:
            self.server.revoke_family(token.doc["family"])


# ----------------------------------------------------------------------------- server


class SmartServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, db: Database[Any], settings: Settings) -> None:
        super().__init__()
        self.db = db
        self.settings = settings
        self.keyring = KeyRing(db, settings.auth_key_rotation_seconds)
        self.jwks_cache = JwksCache()
        self.register_client_auth_method("private_key_jwt", PrivateKeyJwt(db, self.jwks_cache))
        self.register_grant(AuthorizationCodeGrant, [SmartCodeChallenge(required=True)])
        self.register_grant(RefreshTokenGrant)
        self.register_grant(BackendServicesGrant)
        self.register_endpoint(SmartIntrospection)
        self.register_endpoint(SmartRevocation)

    def query_client(self, client_id: str) -> Client | None:
        if not isinstance(client_id, str):
            return None
        return get_client(self.db, client_id)

    def save_token(self, token: dict[str, Any], request: SmartRequest) -> None:
        pass  # refresh tokens are stored as they are issued (SmartServer.issue)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def handle_response(
        self, status: int, body: Any, headers: list[tuple[str, str]] | dict[str, str]
    ) -> Response:
        header_map = dict(headers)
        if isinstance(body, dict):
            return JSONResponse(body, status, {**header_map, **_NO_STORE})
        return Response(body or b"", status, header_map)

    def create_oauth2_request(self, request: SmartRequest) -> SmartRequest:
        return request

    def create_json_request(self, request: SmartRequest) -> SmartRequest:
        return request

    # ------------------------------------------------------------------ tokens

    def issue(
        self, request: SmartRequest, client: Client, grantor: Grantor | None, scope: str
    ) -> dict[str, Any]:
        """The SMART token response: access token, context, refresh and id tokens."""
        urls = request.urls
        aud = grantor.aud if grantor else urls.fhir
        lifetime = self.settings.auth_access_token_seconds
        access, _ = issue_access_token(
            self.keyring,
            issuer=urls.issuer,
            audience=aud,
            client_id=client.client_id,
            scope=scope,
            lifetime=lifetime,
            subject=grantor.username if grantor else None,
            patient=grantor.patient if grantor else None,
            encounter=grantor.encounter if grantor else None,
            fhir_user=grantor.fhir_user if grantor else None,
        )
        out: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": scope,
        }
        if grantor is None:
            return out
        words = set(scope.split())
        if grantor.patient:
            out["patient"] = grantor.patient
        if grantor.encounter:
            out["encounter"] = grantor.encounter
        out["need_patient_banner"] = grantor.need_patient_banner
        if grantor.fhir_user and "fhirUser" in words:
            out["fhirUser"] = f"{urls.fhir}/{grantor.fhir_user}"
        if "openid" in words and words & {"fhirUser", "profile"} and grantor.username:
            out["id_token"] = self._id_token(urls, client, grantor)
        refresh = words & REFRESH_SCOPES
        if refresh:
            out["refresh_token"] = self._store_refresh(request, client, grantor, scope, refresh)
        return out

    def _id_token(self, urls: Urls, client: Client, grantor: Grantor) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": urls.issuer,
            "sub": grantor.username,
            "aud": client.client_id,
            "iat": now,
            "exp": now + self.settings.auth_access_token_seconds,
        }
        if grantor.auth_time:
            claims["auth_time"] = grantor.auth_time
        if grantor.nonce:
            claims["nonce"] = grantor.nonce
        if grantor.fhir_user:
            claims["fhirUser"] = f"{urls.fhir}/{grantor.fhir_user}"
        return self.keyring.sign(claims, {"typ": "JWT"})

    def _store_refresh(
        self,
        request: SmartRequest,
        client: Client,
        grantor: Grantor,
        scope: str,
        kinds: set[str],
    ) -> str:
        token = secrets.token_urlsafe(32)
        previous: RefreshToken | None = request.refresh_token
        family = previous.doc["family"] if previous else secrets.token_urlsafe(12)
        seconds = (
            self.settings.auth_refresh_token_seconds
            if "offline_access" in kinds
            else self.settings.auth_online_refresh_token_seconds
        )
        if previous is not None:  # rotation never extends the family's lifetime
            expires = previous.doc["expires"].replace(tzinfo=UTC)
        else:
            expires = datetime.fromtimestamp(time.time() + seconds, UTC)
        self.db[REFRESH].insert_one(
            {
                "_id": _hash(token),
                "family": family,
                "client_id": client.client_id,
                "grantor": asdict(Grantor(**{**asdict(grantor), "scope": scope, "nonce": None})),
                "expires": expires,
                "rotated": False,
                "revoked": False,
            }
        )
        return token

    def revoke_family(self, family: str) -> None:
        self.db[REFRESH].update_many({"family": family}, {"$set": {"revoked": True}})

    def verify_access_token(self, token: str) -> AccessTokenRecord | None:
        """An access token this server signed (any audience), or None."""
        try:
            keys = KeySet.import_key_set(self.keyring.jwks())  # type: ignore[arg-type]
            decoded = jwt.decode(token, keys, algorithms=[ALGORITHM])
        except (JoseError, ValueError, TypeError, KeyError, UnicodeDecodeError):
            return None
        claims = dict(decoded.claims)
        if not {"jti", "exp", "client_id"} <= claims.keys():
            return None
        revoked = self.db[REVOKED].find_one({"_id": claims["jti"]}) is not None
        return AccessTokenRecord(claims, revoked)
