"""Failed logins, attacked (issue 11, finding 9): the lockout was per username, so anyone
could lock ``admin`` out by typing wrong passwords. The throttle is per username + client
IP with a doubling delay: the attacker's address waits, the admin's does not.

OWASP Authentication Cheat Sheet, "Account Lockout": an attacker "can abuse the lockout
mechanism to lock out a large number of accounts"; throttling per source avoids that.
Two TestClients on one app play two client addresses (request.client, which uvicorn
fills from the socket or a trusted proxy's X-Forwarded-For)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from pymongo import MongoClient
from smart_as_helpers import ROOT, login

from fhir_server.app import create_app
from fhir_server.config import Settings
from smart_auth.users import create_user

ATTACKER = ("203.0.113.66", 40000)
ADMIN_DESK = ("198.51.100.7", 40000)


@pytest.fixture
def clients(mongo_url: str) -> Iterator[tuple[TestClient, TestClient]]:
    settings = Settings(
        mongo_url=mongo_url, database=f"test_{uuid.uuid4().hex[:12]}", auth_enabled=True
    )
    app = create_app(settings)
    with TestClient(app, base_url=ROOT, follow_redirects=False, client=ATTACKER) as attacker:
        # Same app, same state (opened by the first client's lifespan), another address.
        desk = TestClient(app, base_url=ROOT, follow_redirects=False, client=ADMIN_DESK)
        create_user(attacker.app.state.auth.db, "admin", "admin-password", "admin")
        yield attacker, desk
    with MongoClient(mongo_url) as mc:
        mc.drop_database(settings.database)


def attempt(c: TestClient, password: str, username: str = "admin") -> httpx.Response:
    return login(c, c.get("/auth/login"), username, password)


def test_attacker_cannot_lock_admin_out_from_another_address(
    clients: tuple[TestClient, TestClient],
) -> None:
    attacker, desk = clients
    statuses = [attempt(attacker, f"guess-{i}").status_code for i in range(12)]
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}  # the attacker's own address waits
    r = attempt(desk, "admin-password")
    assert r.status_code == 303, r.text  # the admin, elsewhere, logs in at once


def test_failures_from_one_address_wait_longer_each_time_and_success_resets(
    clients: tuple[TestClient, TestClient],
) -> None:
    attacker, _ = clients
    for _ in range(5):
        assert attempt(attacker, "wrong-password").status_code == 401
    throttled = attempt(attacker, "admin-password")  # even the right password waits
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "1"
    assert 'role="alert"' in throttled.text
    time.sleep(1.05)
    assert attempt(attacker, "wrong-password").status_code == 401  # allowed again, fails
    longer = attempt(attacker, "wrong-password")
    assert longer.status_code == 429
    assert longer.headers["Retry-After"] == "2"  # doubled
    time.sleep(2.05)
    assert attempt(attacker, "admin-password").status_code == 303
    # Success cleared the count: the next failure is an ordinary 401, not a wait.
    fresh = attempt(TestClient(attacker.app, base_url=ROOT, client=ATTACKER), "wrong-password")
    assert fresh.status_code == 401


def test_unknown_usernames_are_throttled_alike(clients: tuple[TestClient, TestClient]) -> None:
    attacker, _ = clients
    statuses = [attempt(attacker, "x" * 8, username="nobody").status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]


def test_an_ipv6_host_cannot_escape_by_changing_address(mongo_url: str) -> None:
    """A host gets a whole /64 and can pick any address in it: one throttle for them."""
    settings = Settings(
        mongo_url=mongo_url, database=f"test_{uuid.uuid4().hex[:12]}", auth_enabled=True
    )
    app = create_app(settings)
    with TestClient(app, base_url=ROOT, follow_redirects=False) as c:
        create_user(app.state.auth.db, "admin", "admin-password", "admin")
        statuses = []
        for i in range(6):
            here = ("2001:db8:1:2::%x" % (i + 1), 40000)
            statuses.append(
                attempt(TestClient(app, base_url=ROOT, client=here), "guess").status_code
            )
        assert statuses == [401] * 5 + [429]
        elsewhere = TestClient(
            app, base_url=ROOT, follow_redirects=False, client=("2001:db8:9::1", 1)
        )
        assert attempt(elsewhere, "admin-password").status_code == 303
        assert c.get("/fhir/metadata").status_code == 200
    with MongoClient(mongo_url) as mc:
        mc.drop_database(settings.database)
