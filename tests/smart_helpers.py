"""Real access tokens for tests: signed with the keys the server under test verifies
with (``smart_auth.tokens.KeyRing`` on the test database), no bypass of any check. And
the data the SMART enforcement tests run against: two patients, each with a laboratory
and a vital-signs Observation and an Encounter, and a Practitioner (shared reference
data) who performed every laboratory Observation."""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi.testclient import TestClient
from pymongo import MongoClient

from fhir_server.app import create_app
from fhir_server.config import Settings
from smart_auth.tokens import KeyRing, issue_access_token, revoke_access_token

AUDIENCE = "http://testserver/fhir"
ISSUER = "http://testserver/auth"


class TokenMint:
    """Issues tokens into a test database's key ring."""

    def __init__(self, mongo_url: str, database: str, audience: str = AUDIENCE) -> None:
        self.mongo = MongoClient(mongo_url)
        self.db = self.mongo[database]
        self.keyring = KeyRing(self.db)
        self.audience = audience

    def close(self) -> None:
        self.mongo.close()

    def issue(
        self,
        scope: str,
        *,
        patient: str | None = None,
        fhir_user: str | None = None,
        lifetime: int = 300,
        audience: str | None = None,
        client_id: str = "test-app",
        subject: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        return issue_access_token(
            self.keyring,
            issuer=ISSUER,
            audience=audience or self.audience,
            client_id=client_id,
            scope=scope,
            lifetime=lifetime,
            subject=subject or ("user-1" if fhir_user else None),
            patient=patient,
            fhir_user=fhir_user,
        )

    def token(self, scope: str, **options: Any) -> str:
        return self.issue(scope, **options)[0]

    def headers(self, scope: str, **options: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(scope, **options)}"}

    def revoke(self, claims: dict[str, Any]) -> None:
        revoke_access_token(self.db, claims["jti"], claims["exp"])


def unsigned_token(claims: dict[str, Any]) -> str:
    """A JWT with ``alg: none`` (RFC 7519 "unsecured"): must always be refused."""

    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def claims_for(scope: str, audience: str = AUDIENCE) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": audience,
        "sub": "x",
        "client_id": "test-app",
        "scope": scope,
        "iat": now,
        "exp": now + 300,
        "jti": f"none-{now}",
    }


# --- the test world ------------------------------------------------------------

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
IDENT = "urn:test:obs"


def observation(oid: str, patient: str, category: str, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "identifier": [{"system": IDENT, "value": oid}],
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": f"code-{oid}"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "encounter": {"reference": f"Encounter/e{patient[-1]}"},
    }
    if category == "laboratory":
        resource["performer"] = [{"reference": "Practitioner/dr"}]
    resource.update(extra)
    return resource


def world() -> list[dict[str, Any]]:
    return [
        {"resourceType": "Practitioner", "id": "dr", "name": [{"family": "Shared"}]},
        {"resourceType": "Patient", "id": "pa", "name": [{"family": "Alpha"}]},
        {"resourceType": "Patient", "id": "pb", "name": [{"family": "Bravo"}]},
        {
            "resourceType": "Encounter",
            "id": "ea",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "Patient/pa"},
        },
        {
            "resourceType": "Encounter",
            "id": "eb",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "Patient/pb"},
        },
        # pa's lab result points at pb's (a cross-patient link, for _include leaks)
        observation("oa-lab", "pa", "laboratory", hasMember=[{"reference": "Observation/ob-lab"}]),
        observation("oa-vital", "pa", "vital-signs"),
        observation("ob-lab", "pb", "laboratory"),
        observation("ob-vital", "pb", "vital-signs"),
    ]


ADMIN = "system/*.cruds"


def seed(client: TestClient, mint: TokenMint) -> None:
    headers = mint.headers(ADMIN)
    for resource in world():
        url = f"/fhir/{resource['resourceType']}/{resource['id']}"
        r = client.put(url, json=resource, headers=headers)
        assert r.status_code == 201, r.text


@contextlib.contextmanager
def smart_client(mongo_url: str, **overrides: Any) -> Iterator[tuple[TestClient, TokenMint]]:
    """A client on the real app with authorization on, its own seeded database, and a
    mint for tokens the app accepts (``overrides``: other settings)."""
    settings = Settings(
        mongo_url=mongo_url,
        database=f"test_{uuid.uuid4().hex[:12]}",
        auth_enabled=True,
        **overrides,
    )
    mint = TokenMint(mongo_url, settings.database)
    try:
        with TestClient(create_app(settings), base_url="http://testserver") as client:
            seed(client, mint)
            yield client, mint
    finally:
        mint.close()
        with MongoClient(mongo_url) as mc:
            mc.drop_database(settings.database)


def ids(bundle: dict[str, Any], mode: str | None = None) -> set[str]:
    """``Type/id`` of a Bundle's entries (of one search mode when given)."""
    found = set()
    for e in bundle.get("entry", []):
        if mode is not None and e.get("search", {}).get("mode") != mode:
            continue
        r = e.get("resource")
        if r is not None:
            found.add(f"{r['resourceType']}/{r['id']}")
    return found
