"""The MongoDB collections of the authorization server (all prefixed ``auth_``) and
their indexes. The auth server uses a synchronous PyMongo client: authlib's hooks are
synchronous, and auth traffic is light."""

from __future__ import annotations

import contextlib
import secrets
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from smart_auth.tokens import ensure_token_indexes

CLIENTS = "auth_clients"
USERS = "auth_users"
LOGIN_ATTEMPTS = "auth_login_attempts"
LOGIN_THROTTLE = "auth_login_throttle"
CODES = "auth_codes"
LAUNCHES = "auth_launches"
PENDING = "auth_pending"
REFRESH = "auth_refresh_tokens"
JTIS = "auth_jtis"
SECRETS = "auth_secrets"
RATE_LIMITS = "auth_rate_limits"  # shared token buckets (smart_auth/ratelimit.py)


def ensure_auth_indexes(db: Database[Any]) -> None:
    """TTL indexes make codes, launches, pending requests and replay records expire;
    expiry is also checked on read, because the TTL monitor only runs once a minute."""
    ensure_token_indexes(db)
    db[USERS].create_index("username", unique=True)
    db[LOGIN_ATTEMPTS].create_index("at", expireAfterSeconds=24 * 3600)
    db[LOGIN_ATTEMPTS].create_index([("username", 1), ("at", -1)])
    db[LOGIN_THROTTLE].create_index("expires", expireAfterSeconds=0)
    for name in (CODES, LAUNCHES, PENDING, REFRESH, JTIS, RATE_LIMITS):
        db[name].create_index("expires", expireAfterSeconds=0)
    db[REFRESH].create_index("family")


def session_secret(db: Database[Any]) -> str:
    """The key signing session cookies and CSRF tokens, shared by every worker process."""
    doc = db[SECRETS].find_one({"_id": "session"})
    if doc is None:
        with contextlib.suppress(DuplicateKeyError):  # another worker won the race
            db[SECRETS].update_one(
                {"_id": "session"},
                {"$setOnInsert": {"value": secrets.token_urlsafe(32)}},
                upsert=True,
            )
        doc = db[SECRETS].find_one({"_id": "session"})
    assert doc is not None
    return str(doc["value"])
