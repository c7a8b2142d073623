"""API rate limits: token buckets per client and per user, shared by every API process.

Each verified request is charged one token from its client's bucket and one from its
user's (the token's ``sub``; a backend client's token has no user). It is refused (429,
``Retry-After``) when either bucket is empty. A bucket of quota "N/period" holds at most
N tokens and refills at N/period per second, so a client may burst N requests and then
keep up N per period.

The buckets live in Redis (``FHIR_RATE_LIMIT_REDIS_URL``, an atomic Lua script) or else
in MongoDB (``auth_rate_limits``, one atomic findOneAndUpdate with an update pipeline);
both use the store's clock, not the API hosts'. No request waits for that round trip:
each process leases a slice of tokens from the shared bucket in one atomic operation and
spends it locally, leasing again when it runs out. A slice is at most a tenth of the
capacity and at most a quarter of what the bucket holds (at least 1), so when the
bucket runs low slices shrink to single tokens and the limit is exact.

Over-admission bound: tokens leased earlier may be spent after the shared bucket has
refilled, so in any interval of T seconds the API admits at most N + rate * T plus, per
API process, one slice (ceil(N / 10)); with P processes, N + rate * T + P * ceil(N / 10)
(a single process: 1.1 N burst at worst). Tokens a process leased and never spent are
the opposite error (under-admission, at most a slice per process while it stays idle).

A client's quota comes from its registration (``auth_clients.rate_limit``, set with
``fhir-server auth create-client --rate-limit``), else ``FHIR_RATE_LIMIT_CLIENT``; it is
cached for ``CLIENT_QUOTA_SECONDS`` per process, so a change applies within that time.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from fhir_server.config import Settings
from fhir_server.outcome import FhirError
from smart_auth.store import CLIENTS, RATE_LIMITS
from smart_auth.tokens import AccessToken

CLIENT_QUOTA_SECONDS = 30.0  # how long a process trusts a client's registered quota
SLICE_FRACTION = 10  # a lease takes at most capacity / 10 ...
LOW_FRACTION = 4  # ... and at most a quarter of what the shared bucket holds
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_QUOTA = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*([smhd]?)\s*$")


@dataclass(frozen=True, slots=True)
class Quota:
    """``tokens`` requests per ``seconds``: the bucket's capacity and its refill rate."""

    tokens: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    @property
    def slice(self) -> int:
        """The most tokens one process leases at once."""
        return max(1, math.ceil(self.tokens / SLICE_FRACTION))

    def __str__(self) -> str:
        return f"{self.tokens}/{self.seconds:g}s"


def parse_quota(text: str | None) -> Quota | None:
    """``"1200/60s"`` (units s, m, h, d; ``"100/s"``, ``"5000/1h"``, ``"600/60"``:
    seconds); ``"0"``, empty or None: no limit. ValueError says what is wrong."""
    if text is None or text.strip() in ("", "0"):
        return None
    found = _QUOTA.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a quota: write N/period, e.g. 1200/60s, 50000/1h, or 0")
    count, amount, unit = found.groups()
    if not amount and not unit:
        raise ValueError(f"{text!r} has no period: write e.g. {count}/60s")
    seconds = float(amount or 1) * _UNITS[unit or "s"]
    if int(count) == 0:
        return None
    if seconds <= 0 or seconds > 86400 * 31:
        raise ValueError(f"{text!r}: the period must be more than 0 and at most 31 days")
    return Quota(int(count), seconds)


def normalise_quota(text: str | None) -> str:
    """A quota as stored and shown: ``"1200/60s"``, or ``"0"`` for no limit."""
    quota = parse_quota(text)
    return "0" if quota is None else str(quota)


@dataclass(frozen=True, slots=True)
class Lease:
    """Tokens taken from the shared bucket, and what it holds after (may be fractional)."""

    taken: int
    left: float


class Backend(Protocol):
    async def lease(self, key: str, quota: Quota) -> Lease: ...

    async def close(self) -> None: ...


class MongoBuckets:
    """Buckets as documents ``{_id: key, tokens, at, expires}``: refill, take and write in
    one findOneAndUpdate (atomic per document), with the server's ``$$NOW`` as the clock.
    An idle bucket expires (TTL) when it would have refilled anyway."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self.collection = db[RATE_LIMITS]

    async def lease(self, key: str, quota: Quota) -> Lease:
        cap = quota.tokens
        elapsed = {"$divide": [{"$subtract": ["$$NOW", {"$ifNull": ["$at", "$$NOW"]}]}, 1000]}
        refilled = {"$add": [{"$ifNull": ["$tokens", cap]}, {"$multiply": [elapsed, quota.rate]}]}
        low = {"$max": [1, {"$floor": {"$divide": ["$_have", LOW_FRACTION]}}]}
        pipeline: list[dict[str, Any]] = [
            {"$set": {"_have": {"$min": [cap, refilled]}}},
            {"$set": {"taken": {"$min": [quota.slice, {"$floor": "$_have"}, low]}}},
            {
                "$set": {
                    "tokens": {"$subtract": ["$_have", "$taken"]},
                    "at": "$$NOW",
                    "expires": {"$add": ["$$NOW", math.ceil(quota.seconds) * 1000 + 1000]},
                }
            },
            {"$unset": "_have"},
        ]
        for attempt in range(3):
            try:
                doc = await self.collection.find_one_and_update(
                    {"_id": key},
                    pipeline,
                    projection={"taken": 1, "tokens": 1},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                break
            except DuplicateKeyError:  # two first leases raced to insert it
                if attempt == 2:
                    raise
        assert doc is not None  # upserted
        return Lease(int(doc["taken"]), float(doc["tokens"]))

    async def close(self) -> None:
        return None


_LUA = """
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local slice = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local low = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local have = tonumber(b[1]) or cap
local at = tonumber(b[2]) or now
have = math.min(cap, have + math.max(0, now - at) * rate)
local take = math.min(slice, math.floor(have), math.max(1, math.floor(have / low)))
have = have - take
redis.call('HSET', KEYS[1], 'tokens', tostring(have), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], ttl)
return {take, tostring(have)}
"""


class RedisBuckets:
    """Buckets as Redis hashes under ``prefix``: the same arithmetic in one Lua script
    (atomic), with Redis's TIME as the clock; keys expire when full again."""

    def __init__(self, url: str, prefix: str) -> None:
        from redis.asyncio import Redis

        self.redis: Any = Redis.from_url(url)
        self.prefix = prefix
        self.script = self.redis.register_script(_LUA)

    async def lease(self, key: str, quota: Quota) -> Lease:
        ttl = math.ceil(quota.seconds) * 1000 + 1000
        args: list[int | float | str] = [
            quota.tokens,
            repr(quota.rate),
            quota.slice,
            ttl,
            LOW_FRACTION,
        ]
        taken, left = await self.script(keys=[self.prefix + key], args=args)
        return Lease(int(taken), float(left))

    async def close(self) -> None:
        await self.redis.aclose()


@dataclass(slots=True)
class _Local:
    """This process's share of one bucket: leased tokens not yet spent."""

    tokens: int = 0
    empty_until: float = 0.0  # monotonic; the shared bucket has no token before then
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Throttled(Exception):
    def __init__(self, limit: str, retry_after: float) -> None:
        super().__init__(limit)
        self.limit = limit  # "client" or "user"
        self.retry_after = max(1, math.ceil(retry_after))


def user_of(access: AccessToken) -> str | None:
    """The user a token acts for; None for a backend client (its ``sub`` is itself)."""
    subject = access.subject
    return subject if subject and subject != access.client_id else None


class RateLimiter:
    """Charges each request to its client's and its user's bucket (see the module)."""

    def __init__(
        self, backend: Backend, db: AsyncDatabase[Any], client: Quota | None, user: Quota | None
    ) -> None:
        self.backend = backend
        self.clients = db[CLIENTS]
        self.client_default = client
        self.user_default = user
        self._local: dict[str, _Local] = {}
        self._quotas: dict[str, tuple[float, Quota | None]] = {}

    async def client_quota(self, client_id: str) -> Quota | None:
        now = time.monotonic()
        cached = self._quotas.get(client_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        doc = await self.clients.find_one({"_id": client_id}, {"rate_limit": 1})
        stored = doc.get("rate_limit") if doc else None
        try:
            quota = self.client_default if stored is None else parse_quota(str(stored))
        except ValueError:  # written by hand, not by the CLI: the default applies
            quota = self.client_default
        if len(self._quotas) > 10_000:
            self._quotas.clear()
        self._quotas[client_id] = (now + CLIENT_QUOTA_SECONDS, quota)
        return quota

    async def charge(self, access: AccessToken) -> None:
        """Spend one token of the client's and of the user's bucket, or raise a 429
        FhirError when either is empty (neither is then charged)."""
        buckets: list[tuple[str, str, Quota]] = []
        quota = await self.client_quota(access.client_id)
        if quota is not None:
            buckets.append(("client", "c:" + access.client_id, quota))
        user = user_of(access)
        if user is not None and self.user_default is not None:
            buckets.append(("user", "u:" + user, self.user_default))
        if buckets:
            try:
                await self.take(buckets)
            except Throttled as exc:
                raise _refusal(exc) from None

    async def take(self, buckets: list[tuple[str, str, Quota]]) -> None:
        """One token from every bucket, or Throttled naming the first one that is empty."""
        local = [self._share(key) for _, key, _ in buckets]
        for _ in range(8):  # another request may spend a refill while this one awaits
            for (limit, key, quota), share in zip(buckets, local, strict=True):
                if share.tokens <= 0:
                    await self._refill(limit, key, quota, share)
            if all(share.tokens > 0 for share in local):
                break
        for share in local:
            share.tokens -= 1

    def _share(self, key: str) -> _Local:
        share = self._local.get(key)
        if share is None:
            if len(self._local) > 100_000:  # forget idle keys (their leases are spent)
                self._local = {k: v for k, v in self._local.items() if v.tokens > 0}
            share = self._local[key] = _Local()
        return share

    async def _refill(self, limit: str, key: str, quota: Quota, share: _Local) -> None:
        async with share.lock:  # one lease at a time per bucket and process
            if share.tokens > 0:
                return
            now = time.monotonic()
            if now < share.empty_until:
                raise Throttled(limit, share.empty_until - now)
            lease = await self.backend.lease(key, quota)
            if lease.taken <= 0:
                wait = max(0.0, 1.0 - lease.left) / quota.rate
                share.empty_until = time.monotonic() + wait
                raise Throttled(limit, wait)
            share.tokens += lease.taken

    async def close(self) -> None:
        await self.backend.close()


def _refusal(exc: Throttled) -> FhirError:
    from fhir_server.metrics import RATE_LIMITED

    RATE_LIMITED.labels(exc.limit).inc()
    whose = "client's" if exc.limit == "client" else "user's"
    return FhirError.of(
        429,
        "throttled",
        f"Too many requests: this {whose} rate limit is used up; retry after {exc.retry_after} s",
        "Authorization",
        headers={"Retry-After": str(exc.retry_after)},
    )


def open_limiter(settings: Settings, db: AsyncDatabase[Any]) -> RateLimiter:
    """The app's limiter (with both defaults off it still applies clients' registered
    quotas). Redis keys are prefixed with the database name, so deployments (and tests)
    sharing a Redis keep their own buckets."""
    client = parse_quota(settings.rate_limit_client)
    user = parse_quota(settings.rate_limit_user)
    backend: Backend
    if settings.rate_limit_redis_url:
        prefix = f"fhir:ratelimit:{settings.database}:"
        backend = RedisBuckets(settings.rate_limit_redis_url, prefix)
    else:
        backend = MongoBuckets(db)
    return RateLimiter(backend, db, client, user)
