"""API rate limits (smart_auth/ratelimit.py) through real ``fhir-server serve`` processes:
two API processes on one database share each client's and user's bucket, in MongoDB
(``auth_rate_limits``) for one pair and in Redis (127.0.0.1:6379) for the other.

Quotas are tiny with a slow refill (the MongoDB pair: 5 per 10 s per client, 3 per 30 s
per user), so a burst past them is refused however slow the machine, and Retry-After is
a second or two. Tokens are signed with the servers' own keys (tests/smart_helpers.py);
a token without a user (``sub`` = client id) is a backend client's.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pymongo import AsyncMongoClient, MongoClient
from smart_helpers import TokenMint

from fhir_server.outcome import FhirError
from fhir_server.testing import ServerProcess
from smart_auth.ratelimit import Backend, Lease, MongoBuckets, Quota, RateLimiter, RedisBuckets
from smart_auth.scopes import ScopeSet
from smart_auth.store import RATE_LIMITS
from smart_auth.tokens import AccessToken

pytestmark = pytest.mark.slow
FHIR_SERVER = Path(sys.executable).parent / "fhir-server"
REDIS_URL = "redis://127.0.0.1:6379/0"
SCOPE = "system/Patient.rs"


@dataclass
class Pair:
    """Two API processes on one database, and a mint for tokens either accepts."""

    servers: tuple[ServerProcess, ...]  # two
    mongo_url: str
    database: str
    mint: TokenMint

    def headers(self, server: int, client_id: str, user: str | None = None) -> dict[str, str]:
        token = self.mint.token(
            SCOPE,
            client_id=client_id,
            subject=user,
            audience=self.servers[server].base_url,
        )
        return {"Authorization": f"Bearer {token}"}

    def get(self, server: int, client_id: str, user: str | None = None) -> httpx.Response:
        return httpx.get(
            f"{self.servers[server].base_url}/Patient",
            params={"_count": "1"},
            headers=self.headers(server, client_id, user),
            timeout=30,
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
        env.update(FHIR_MONGO_URL=self.mongo_url, FHIR_DATABASE=self.database)
        command = [str(FHIR_SERVER), "auth", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def _start_pairs(mongo_url: str, tmp: Path) -> Iterator[tuple[Pair, Pair]]:
    """Both pairs' four processes start at once (each start is mostly waiting)."""
    settings = {
        "mongo": {"FHIR_RATE_LIMIT_CLIENT": "5/10s", "FHIR_RATE_LIMIT_USER": "3/30s"},
        "redis": {
            "FHIR_RATE_LIMIT_CLIENT": "4/8s",
            "FHIR_RATE_LIMIT_USER": "0",  # off
            "FHIR_RATE_LIMIT_REDIS_URL": REDIS_URL,
        },
    }
    names = {kind: f"test_ratelimit_{kind}_{uuid.uuid4().hex[:10]}" for kind in settings}
    processes = {
        kind: tuple(
            ServerProcess(
                mongo_url=mongo_url,
                database=names[kind],
                auth=True,
                env=env,
                log_file=tmp / f"{kind}-{n}.log",
            )
            for n in range(2)
        )
        for kind, env in settings.items()
    }
    every = [p for pair in processes.values() for p in pair]
    try:
        with ThreadPoolExecutor(len(every)) as pool:
            list(pool.map(lambda p: p.start(90), every))
        pairs = {
            kind: Pair(pair, mongo_url, names[kind], TokenMint(mongo_url, names[kind]))
            for kind, pair in processes.items()
        }
        yield pairs["mongo"], pairs["redis"]
        for pair in pairs.values():
            pair.mint.close()
    finally:
        with ThreadPoolExecutor(len(every)) as pool:
            list(pool.map(lambda p: p.stop(), every))
        store = redis.Redis.from_url(REDIS_URL)
        for key in store.scan_iter(f"fhir:ratelimit:{names['redis']}:*"):
            store.delete(key)
        store.close()
        mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
        with mongo:
            for name in names.values():
                mongo.drop_database(name)


@pytest.fixture(scope="module")
def pairs(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pair, Pair]]:
    yield from _start_pairs(mongo_url, tmp_path_factory.mktemp("ratelimit"))


@pytest.fixture(scope="module")
def mongo_pair(pairs: tuple[Pair, Pair]) -> Pair:
    return pairs[0]


@pytest.fixture(scope="module")
def redis_pair(pairs: tuple[Pair, Pair]) -> Pair:
    return pairs[1]


def _assert_throttled(r: httpx.Response, limit: str) -> int:
    assert r.status_code == 429, r.text
    outcome: dict[str, Any] = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["code"] == "throttled"
    assert issue["expression"] == ["Authorization"]
    assert f"this {limit}'s rate limit" in issue["diagnostics"]
    retry_after = r.headers["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
    return int(retry_after)


def _spread_until_refused(pair: Pair, client_id: str, quota: int, rate: float) -> int:
    """Requests alternate between the two processes until one is refused: the shared
    bucket admits the quota, plus at most what refilled meanwhile (slices are single
    tokens at these sizes, so no process holds tokens back)."""
    started = time.monotonic()
    admitted = 0
    for n in range(quota * 4):
        r = pair.get(n % 2, client_id)
        if r.status_code != 200:
            retry_after = _assert_throttled(r, "client")
            break
        admitted += 1
    else:
        raise AssertionError(f"never refused after {quota * 4} requests")
    refilled = math.ceil((time.monotonic() - started) * rate)
    assert quota <= admitted <= quota + refilled, (admitted, refilled)
    assert 1 <= retry_after <= math.ceil(1 / rate)
    # the other process refuses too: the bucket is one
    _assert_throttled(pair.get((n + 1) % 2, client_id), "client")
    return retry_after


def _recovers(pair: Pair, client_id: str, retry_after: int) -> None:
    time.sleep(retry_after)
    r = pair.get(0, client_id)
    assert r.status_code == 200, r.text
    assert r.json()["resourceType"] == "Bundle"


def test_mongodb_quota_shared_by_two_processes(mongo_pair: Pair) -> None:
    retry_after = _spread_until_refused(mongo_pair, "spread-app", 5, 5 / 10)
    _recovers(mongo_pair, "spread-app", retry_after)
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_pair.mongo_url)
    with mongo:
        bucket = mongo[mongo_pair.database][RATE_LIMITS].find_one({"_id": "c:spread-app"})
    assert bucket is not None and 0 <= bucket["tokens"] < 1, bucket


def test_redis_quota_shared_by_two_processes(redis_pair: Pair) -> None:
    retry_after = _spread_until_refused(redis_pair, "spread-app", 4, 4 / 8)
    _recovers(redis_pair, "spread-app", retry_after)
    store = redis.Redis.from_url(REDIS_URL)
    try:
        assert store.exists(f"fhir:ratelimit:{redis_pair.database}:c:spread-app") == 1
    finally:
        store.close()
    mongo: MongoClient[dict[str, Any]] = MongoClient(redis_pair.mongo_url)
    with mongo:  # nothing went to MongoDB
        assert mongo[redis_pair.database][RATE_LIMITS].count_documents({}) == 0


def test_user_limit_apart_from_client_limit(mongo_pair: Pair) -> None:
    made = mongo_pair.cli(
        "create-client", "--client-id", "ward-app", "--type", "public",
        "--redirect-uri", "http://localhost:3000/cb", "--rate-limit", "5/60s",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    # ana's bucket (3 per 30 s) empties before her app's (5 per 60 s)
    for n in range(3):
        assert mongo_pair.get(n % 2, "ward-app", "ana").status_code == 200
    _assert_throttled(mongo_pair.get(1, "ward-app", "ana"), "user")
    # the refused request cost the app nothing: another user still has its two tokens
    assert mongo_pair.get(0, "ward-app", "ben").status_code == 200
    assert mongo_pair.get(1, "ward-app", "ben").status_code == 200
    _assert_throttled(mongo_pair.get(0, "ward-app", "ben"), "client")
    # a user's bucket is the user's in every app
    _assert_throttled(mongo_pair.get(0, "lab-app", "ana"), "user")
    assert mongo_pair.get(1, "lab-app", "carla").status_code == 200


def test_client_override_from_registration(mongo_pair: Pair) -> None:
    commands = [
        ("create-client", "--client-id", "tight-app", "--type", "public",
         "--redirect-uri", "http://localhost:3000/cb", "--rate-limit", "2 / 1m"),
        ("create-client", "--client-id", "bulk-loader", "--type", "public",
         "--redirect-uri", "http://localhost:3000/cb", "--rate-limit", "0"),
        ("create-client", "--client-id", "odd-app", "--type", "public", "--rate-limit", "fast"),
    ]  # fmt: skip
    with ThreadPoolExecutor(len(commands)) as pool:
        tight, unlimited, bad = pool.map(lambda args: mongo_pair.cli(*args), commands)
    assert tight.returncode == 0, tight.stderr
    assert '"rate_limit": "2/60s"' in tight.stdout
    assert unlimited.returncode == 0, unlimited.stderr
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--rate-limit" in bad.stderr, bad.stderr
    listed = mongo_pair.cli("list-clients")
    assert listed.returncode == 0, listed.stderr
    assert '"client_id": "tight-app"' in listed.stdout and '"rate_limit": "2/60s"' in listed.stdout
    assert "odd-app" not in listed.stdout

    assert mongo_pair.get(0, "tight-app").status_code == 200
    assert mongo_pair.get(1, "tight-app").status_code == 200
    assert _assert_throttled(mongo_pair.get(0, "tight-app"), "client") >= 25  # 1 per 30 s
    # "0": no client limit, though the default is 5 per 10 s
    for n in range(12):
        r = mongo_pair.get(n % 2, "bulk-loader")
        assert r.status_code == 200, (n, r.text)


def test_limits_off_never_refuse(redis_pair: Pair) -> None:
    made = redis_pair.cli(
        "create-client", "--client-id", "unlimited", "--type", "public",
        "--redirect-uri", "http://localhost:3000/cb", "--rate-limit", "0",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    # FHIR_RATE_LIMIT_USER=0 and this client's quota 0: nothing limits dora
    for n in range(12):
        r = redis_pair.get(n % 2, "unlimited", "dora")
        assert r.status_code == 200, (n, r.text)


async def _two_processes_drain(backend_kind: str, mongo_url: str) -> tuple[int, int, int]:
    """Two limiters on one shared bucket (as two API processes hold them), the first
    charged three times as often as the second, until both refuse: (requests admitted,
    admitted before the first refusal, leases taken)."""
    database = f"test_ratelimit_drain_{uuid.uuid4().hex[:10]}"
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    db = mongo[database]
    prefix = f"fhir:ratelimit:{database}:"
    leases = 0

    class Counted:
        def __init__(self) -> None:
            self.inner: Backend = (
                MongoBuckets(db) if backend_kind == "mongodb" else RedisBuckets(REDIS_URL, prefix)
            )

        async def lease(self, key: str, quota: Quota) -> Lease:
            nonlocal leases
            leases += 1
            return await self.inner.lease(key, quota)

        async def close(self) -> None:
            await self.inner.close()

    quota = Quota(100, 3600.0)  # a slice is 10; the refill (1 per 36 s) stays out of it
    limiters = [RateLimiter(Counted(), db, quota, None) for _ in range(2)]
    token = AccessToken("drain-app", "drain-app", ScopeSet.parse(SCOPE), None, None, None,
                        "jti", 0, {})  # fmt: skip
    admitted = 0
    first_refusal = -1
    refused = [False, False]
    try:
        for n in range(400):
            which = 1 if n % 4 == 3 else 0
            try:
                await limiters[which].charge(token)
                admitted += 1
            except FhirError as exc:
                assert exc.status == 429
                refused[which] = True
                first_refusal = admitted if first_refusal < 0 else first_refusal
            if all(refused):
                break
        for limiter in limiters:
            await limiter.close()
    finally:
        if backend_kind == "redis":
            store = redis.Redis.from_url(REDIS_URL)
            store.delete(prefix + "c:drain-app")
            store.close()
        await mongo.drop_database(database)
        await mongo.close()
    return admitted, first_refusal, leases


@pytest.mark.parametrize("backend_kind", ["mongodb", "redis"])
def test_leased_slices_admit_exactly_the_quota(backend_kind: str, mongo_url: str) -> None:
    """Two processes together admit the quota exactly (none over, no token lost in a
    lease) in far fewer round trips than requests; and as slices shrink when the shared
    bucket runs low, the busy one is not refused while the idle one holds more than a
    token or two (with slices of 10 to the end, it was refused at 93)."""
    admitted, first_refusal, leases = asyncio.run(_two_processes_drain(backend_kind, mongo_url))
    assert admitted == 100
    assert first_refusal >= 98, first_refusal
    assert leases < 40, leases
