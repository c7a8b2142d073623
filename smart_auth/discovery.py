"""Discovery documents: SMART's ``.well-known/smart-configuration`` (SMART App Launch
2.2, "Metadata") and OpenID Connect discovery. The capabilities listed are the ones the
tests exercise; nothing is advertised that does not work."""

from __future__ import annotations

from typing import Any

from smart_auth.roles import NON_RESOURCE_SCOPES
from smart_auth.server import ASSERTION_ALGORITHMS
from smart_auth.urls import Urls

CAPABILITIES = [
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "sso-openid-connect",
]
AUTH_METHODS = ["private_key_jwt", "client_secret_basic", "client_secret_post", "none"]
SCOPES = [
    *sorted(NON_RESOURCE_SCOPES),
    *(f"{c}/*.{p}" for c in ("patient", "user", "system") for p in ("cruds", "read", "write")),
]


def smart_configuration(urls: Urls) -> dict[str, Any]:
    return {
        "issuer": urls.issuer,
        "jwks_uri": urls.auth("jwks"),
        "authorization_endpoint": urls.auth("authorize"),
        "token_endpoint": urls.token,
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "introspection_endpoint": urls.auth("introspect"),
        "revocation_endpoint": urls.auth("revoke"),
        "userinfo_endpoint": urls.auth("userinfo"),
        "capabilities": CAPABILITIES,
        "code_challenge_methods_supported": ["S256"],
    }


def openid_configuration(urls: Urls) -> dict[str, Any]:
    return {
        "issuer": urls.issuer,
        "authorization_endpoint": urls.auth("authorize"),
        "token_endpoint": urls.token,
        "jwks_uri": urls.auth("jwks"),
        "userinfo_endpoint": urls.auth("userinfo"),
        "introspection_endpoint": urls.auth("introspect"),
        "revocation_endpoint": urls.auth("revoke"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "scopes_supported": SCOPES,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser"],
        "code_challenge_methods_supported": ["S256"],
    }
