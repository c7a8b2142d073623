"""What the authorization server keeps for the life of the app: a synchronous MongoDB
client on the FHIR database, the authlib server, the session signer and the login
throttle."""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from fhir_server.config import Settings
from fhir_server.health import client_options
from smart_auth.server import SmartServer
from smart_auth.session import Sessions
from smart_auth.store import ensure_auth_indexes, session_secret
from smart_auth.throttle import LoginThrottle, ThrottlePolicy


class AuthState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: MongoClient[dict[str, Any]] = MongoClient(
            settings.mongo_url, tz_aware=True, **client_options(settings)
        )
        self.db: Database[dict[str, Any]] = self.client[settings.database]
        ensure_auth_indexes(self.db)
        self.throttle = LoginThrottle(
            self.db,
            ThrottlePolicy(settings.auth_lockout_attempts, float(settings.auth_lockout_seconds)),
        )
        self.server = SmartServer(self.db, settings)
        self.server.keyring.signing_key()  # the JWKS is never empty, even before a token
        self.sessions = Sessions(session_secret(self.db))

    @classmethod
    async def open(cls, settings: Settings) -> AuthState:
        return await asyncio.to_thread(cls, settings)

    def close(self) -> None:
        self.client.close()
