"""Per-request cost of the API rate limiter (smart_auth/ratelimit.py); target: 0.2 ms.

    .venv/bin/python benchmarks/ratelimit.py                 # embedded mongod, Redis on 6379
    .venv/bin/python benchmarks/ratelimit.py --calls 20000 --http 2000
    .venv/bin/python benchmarks/ratelimit.py --mongo-url mongodb://... --redis-url redis://...

In-process: ``--calls`` sequential ``RateLimiter.charge`` calls (what the bearer check
awaits per request), each timed, for each backend and scenario:

- ``off``: both defaults 0 (the client's registered quota is still looked up, cached);
- ``client``: a backend client (no user) at the default 30000/60s;
- ``client+user``: the defaults (30000/60s per client, 3000/60s per user), the calls
  spread over ``--users`` users of one app, each user's first call leasing its slice.

Calls that lease from the shared bucket pay a MongoDB or Redis round trip; the others
are a dictionary lookup and a decrement. ``--http N`` also times N sequential
``GET /fhir/Patient?_count=1`` against two real servers (limits on and off, auth on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient, MongoClient

from fhir_server.embedded_mongo import EmbeddedMongo
from fhir_server.testing import ServerProcess
from smart_auth.ratelimit import Backend, Lease, MongoBuckets, Quota, RateLimiter, RedisBuckets
from smart_auth.scopes import ScopeSet
from smart_auth.tokens import AccessToken, KeyRing, issue_access_token

CLIENT = Quota(30000, 60.0)
USER = Quota(3000, 60.0)


class Counting:
    """A backend that times its leases (the round trips)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.trips: list[float] = []

    async def lease(self, key: str, quota: Quota) -> Lease:
        start = time.perf_counter()
        try:
            return await self.inner.lease(key, quota)
        finally:
            self.trips.append(time.perf_counter() - start)

    async def close(self) -> None:
        await self.inner.close()


def access(client_id: str, user: str | None) -> AccessToken:
    return AccessToken(
        client_id=client_id,
        subject=user or client_id,
        scopes=ScopeSet.parse("system/*.rs"),
        patient=None,
        encounter=None,
        fhir_user=None,
        jti=uuid.uuid4().hex,
        expires_at=int(time.time()) + 900,
        claims={},
    )


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "median_us": round(statistics.median(ordered) * 1e6, 2),
        "p95_us": round(ordered[int(len(ordered) * 0.95) - 1] * 1e6, 2),
        "p99_us": round(ordered[int(len(ordered) * 0.99) - 1] * 1e6, 2),
        "max_us": round(ordered[-1] * 1e6, 1),
        "mean_us": round(statistics.fmean(ordered) * 1e6, 2),
    }


async def in_process(
    kind: str, mongo_url: str, redis_url: str, calls: int, users: int
) -> list[dict[str, Any]]:
    database = f"bench_ratelimit_{uuid.uuid4().hex[:8]}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    db = client[database]
    rows: list[dict[str, Any]] = []
    scenarios: list[tuple[str, Quota | None, Quota | None, bool]] = [
        ("off", None, None, False),
        ("client", CLIENT, USER, False),
        ("client+user", CLIENT, USER, True),
    ]
    try:
        for name, client_quota, user_quota, with_users in scenarios:
            inner: Backend = (
                MongoBuckets(db)
                if kind == "mongodb"
                else RedisBuckets(redis_url, f"fhir:ratelimit:{database}:")
            )
            backend = Counting(inner)
            limiter = RateLimiter(backend, db, client_quota, user_quota)
            app = f"app-{name}"
            tokens = [access(app, f"user-{u}" if with_users else None) for u in range(users)]
            await limiter.charge(tokens[0])  # connections open, the quota cached
            backend.trips.clear()
            seconds: list[float] = []
            for i in range(calls):
                token = tokens[i % users]
                start = time.perf_counter()
                await limiter.charge(token)
                seconds.append(time.perf_counter() - start)
            trips = sorted(backend.trips)
            rows.append(
                {
                    "backend": kind,
                    "scenario": name,
                    "calls": calls,
                    **summary(seconds),
                    "leases": len(trips),
                    "lease_median_us": round(statistics.median(trips) * 1e6, 1) if trips else 0,
                }
            )
            await limiter.close()
    finally:
        await client.drop_database(database)
        await client.close()
    return rows


def http_compare(mongo_url: str, requests: int, tmp: Path) -> list[dict[str, Any]]:
    """Sequential reads with a backend token, limits on (defaults) and off, alternated."""
    rows: list[dict[str, Any]] = []
    limits = {"on": {}, "off": {"FHIR_RATE_LIMIT_CLIENT": "0", "FHIR_RATE_LIMIT_USER": "0"}}
    for rounds in range(2):
        for label, env in limits.items():
            database = f"bench_ratelimit_http_{uuid.uuid4().hex[:8]}"
            log = tmp / f"{label}-{rounds}.log"
            server = ServerProcess(
                mongo_url=mongo_url, database=database, auth=True, env=env, log_file=log
            )
            sync: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
            with server, sync:
                token, _ = issue_access_token(
                    KeyRing(sync[database]),
                    issuer="bench",
                    audience=server.base_url,
                    client_id="bench-app",
                    scope="system/Patient.rs",
                    lifetime=900,
                )
                headers = {"Authorization": f"Bearer {token}"}
                with httpx.Client(base_url=server.base_url, headers=headers) as http:
                    for _ in range(50):  # warm up
                        http.get("/Patient", params={"_count": "1"}).raise_for_status()
                    seconds: list[float] = []
                    for _ in range(requests):
                        start = time.perf_counter()
                        http.get("/Patient", params={"_count": "1"}).raise_for_status()
                        seconds.append(time.perf_counter() - start)
                sync.drop_database(database)
            rows.append(
                {"http": label, "round": rounds + 1, "requests": requests, **summary(seconds)}
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mongo-url", help="MongoDB (default: an embedded mongod)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--http", type=int, default=0, help="sequential HTTP reads per server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mongo: EmbeddedMongo | None = None
        mongo_url = args.mongo_url
        if mongo_url is None:
            mongo = EmbeddedMongo(Path(tmp) / "mongo", None, cache_size_gb=0.25)
            mongo_url = mongo.start()
        try:
            for kind in ("mongodb", "redis"):
                rows = asyncio.run(
                    in_process(kind, mongo_url, args.redis_url, args.calls, args.users)
                )
                for row in rows:
                    print(json.dumps(row))
            if args.http:
                for row in http_compare(mongo_url, args.http, Path(tmp)):
                    print(json.dumps(row))
        finally:
            if mongo is not None:
                mongo.stop()


if __name__ == "__main__":
    main()
