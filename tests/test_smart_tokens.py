"""Access tokens: the contract between the authorization server and the FHIR API."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient

from smart_auth.scopes import InvalidScope, ScopeSet
from smart_auth.tokens import (
    InvalidToken,
    KeyRing,
    TokenVerifier,
    ensure_token_indexes,
    issue_access_token,
    revoke_access_token,
)

AUD = "http://testserver/fhir"


@pytest.fixture
def db_name(mongo_url: str) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    with MongoClient(mongo_url) as mc:
        mc.drop_database(name)


def verify(mongo_url: str, db_name: str, token: str, audience: str = AUD) -> Any:
    async def run() -> Any:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_url)
        try:
            return await TokenVerifier(client[db_name]).verify(token, audience)
        finally:
            await client.close()

    return asyncio.run(run())


def issue(mongo_url: str, db_name: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    with MongoClient(mongo_url) as mc:
        ensure_token_indexes(mc[db_name])
        args: dict[str, Any] = {
            "issuer": "http://testserver/auth",
            "audience": AUD,
            "client_id": "app",
            "scope": "patient/Observation.rs launch/patient",
            "lifetime": 300,
            "patient": "p1",
        }
        args.update(kwargs)
        return issue_access_token(KeyRing(mc[db_name]), **args)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_round_trip(mongo_url: str, db_name: str) -> None:
    token, claims = issue(mongo_url, db_name)
    access = verify(mongo_url, db_name, token)
    assert access.client_id == "app"
    assert access.patient == "p1"
    assert access.jti == claims["jti"]
    assert access.scopes.allows("Observation", "r")
    assert not access.scopes.allows("Observation", "c")
    assert access.scopes.has("launch/patient")


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda t: t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB"), id="sig"),
        pytest.param(
            lambda t: ".".join([t.split(".")[0], b64({"aud": AUD, "exp": 2**40}), t.split(".")[2]]),
            id="payload",
        ),
        pytest.param(
            lambda t: ".".join([b64({"alg": "none"}), t.split(".")[1], ""]), id="alg-none"
        ),
        pytest.param(lambda t: "not-a-jwt", id="garbage"),
        pytest.param(lambda t: "a.b.c", id="bad-segments"),
    ],
)
def test_tampered_tokens_are_refused(mongo_url: str, db_name: str, mutate: Any) -> None:
    token, _ = issue(mongo_url, db_name)
    with pytest.raises(InvalidToken):
        verify(mongo_url, db_name, mutate(token))


def test_wrong_audience_expired_and_revoked(mongo_url: str, db_name: str) -> None:
    token, claims = issue(mongo_url, db_name)
    with pytest.raises(InvalidToken):
        verify(mongo_url, db_name, token, "http://elsewhere/fhir")
    expired, _ = issue(mongo_url, db_name, lifetime=-10)
    with pytest.raises(InvalidToken):
        verify(mongo_url, db_name, expired)
    with MongoClient(mongo_url) as mc:
        revoke_access_token(mc[db_name], claims["jti"], claims["exp"])
    with pytest.raises(InvalidToken, match="revoked"):
        verify(mongo_url, db_name, token)


def test_rotated_keys_still_verify_older_tokens(mongo_url: str, db_name: str) -> None:
    old, _ = issue(mongo_url, db_name)
    with MongoClient(mongo_url) as mc:
        ring = KeyRing(mc[db_name], rotate_after=0)
        time.sleep(0.01)
        new_key = ring.signing_key()
        assert new_key.kid in [k["kid"] for k in ring.jwks()["keys"]]
        assert len(ring.jwks()["keys"]) == 2
        assert all("d" not in k for k in ring.jwks()["keys"])  # never publish private parts
    verify(mongo_url, db_name, old)


@pytest.mark.parametrize(
    ("scope", "type_", "interaction", "allowed"),
    [
        ("patient/Observation.rs", "Observation", "r", True),
        ("patient/Observation.rs", "Observation", "s", True),
        ("patient/Observation.rs", "Observation", "u", False),
        ("patient/Observation.rs", "Patient", "r", False),
        ("user/*.cruds", "Encounter", "d", True),
        ("patient/*.read", "Condition", "s", True),  # v1 read = rs
        ("patient/*.read", "Condition", "c", False),
        ("system/Patient.write", "Patient", "u", True),  # v1 write = cud
        ("system/Patient.write", "Patient", "r", False),
        ("user/Patient.*", "Patient", "d", True),
        ("patient/Observation.rs?category=laboratory", "Observation", "s", True),
    ],
)
def test_scope_grants(scope: str, type_: str, interaction: str, allowed: bool) -> None:
    assert ScopeSet.parse(scope).allows(type_, interaction) is allowed


def test_granular_scope_keeps_its_parameters() -> None:
    scopes = ScopeSet.parse("patient/Observation.rs?category=laboratory&code=1234-5 openid")
    (grant,) = scopes.grants("Observation", "s")
    assert grant.params == (("category", "laboratory"), ("code", "1234-5"))
    assert scopes.has("openid")


@pytest.mark.parametrize(
    "bad", ["patient/Observation.xyz", "patient/Observation.", "user/Observation.sr", "user/obs.r"]
)
def test_malformed_resource_scopes(bad: str) -> None:
    with pytest.raises(InvalidScope):
        ScopeSet.parse(bad)
