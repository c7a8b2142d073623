"""Failed-login throttle keyed by username + client IP, with a doubling delay.

A lock per username let anyone lock ``admin`` out by typing wrong passwords. Here the
failures of one username from one client address are counted; after
``free_failures`` of them each further attempt from that address must wait ``base``
seconds, doubling per failure up to ``max_delay``. Other addresses are unaffected, and a
successful login clears the count. The state is a document per (username, IP) in
MongoDB, so every worker process shares it; documents expire a day after the last
failure (TTL index on ``expires``).
"""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database

from smart_auth.store import LOGIN_THROTTLE

FORGET_SECONDS = 24 * 3600  # failures older than this (since the last one) are forgotten


def source(ip: str) -> str:
    """The unit an attacker controls: one IPv4 address, or a whole IPv6 /64 (a host
    usually gets a /64 and can use any address in it)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip  # not an address (e.g. a test client's name)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class Throttled(Exception):
    """This username may not be tried from this address for ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class ThrottlePolicy:
    free_failures: int = 5
    max_delay: float = 900.0
    base: float = 1.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures."""
        if failures < self.free_failures:
            return 0.0
        exponent = min(failures - self.free_failures, 62)  # 2**62 s is beyond any cap
        return float(min(self.max_delay, self.base * 2**exponent))


class LoginThrottle:
    def __init__(self, db: Database[Any], policy: ThrottlePolicy) -> None:
        self.collection = db[LOGIN_THROTTLE]
        self.policy = policy

    @staticmethod
    def _key(username: str, ip: str) -> dict[str, str]:
        return {"u": username, "ip": source(ip)}

    def claim(self, username: str, ip: str) -> None:
        """Raise Throttled if this attempt must wait. An attempt that would start a delay
        if it failed reserves that delay first (compare-and-set on ``until``), so parallel
        requests cannot all slip through in the same instant."""
        key = self._key(username, ip)
        doc = self.collection.find_one({"_id": key})
        if doc is None:
            return
        now = time.time()
        until = float(doc.get("until", 0.0))
        if until > now:
            raise Throttled(math.ceil(until - now))
        ahead = self.policy.delay(int(doc.get("failures", 0)) + 1)
        if ahead <= 0:
            return
        reserved = self.collection.update_one(
            {"_id": key, "until": doc.get("until")}, {"$set": {"until": now + ahead}}
        )
        if reserved.modified_count == 0:  # another attempt reserved it a moment ago
            raise Throttled(max(1, math.ceil(ahead)))

    def failed(self, username: str, ip: str) -> None:
        key = self._key(username, ip)
        expires = datetime.now(UTC) + timedelta(seconds=FORGET_SECONDS)
        doc = self.collection.find_one_and_update(
            {"_id": key},
            {"$inc": {"failures": 1}, "$set": {"expires": expires}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None  # upserted
        wait = self.policy.delay(int(doc["failures"]))
        if wait > 0:
            self.collection.update_one({"_id": key}, {"$max": {"until": time.time() + wait}})

    def succeeded(self, username: str, ip: str) -> None:
        self.collection.delete_one({"_id": self._key(username, ip)})
