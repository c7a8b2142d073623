"""The browser session at the authorization server: a signed, HttpOnly, SameSite=Lax
cookie holding a random session id and, once logged in, the username; and the CSRF
token every form carries (an HMAC of the session id, so it needs no storage)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "fhir_auth_session"
MAX_AGE = 8 * 3600
# The login pages and the admin console (smart_auth/admin) share the session; the FHIR
# API never sees the cookie (it takes bearer tokens only).
COOKIE_PATHS = ("/auth", "/admin")


@dataclass
class Session:
    sid: str
    username: str | None = None
    auth_time: int | None = None
    changed: bool = False


class Sessions:
    def __init__(self, secret: str) -> None:
        self.secret = secret

    def _mac(self, payload: str) -> str:
        key = f"session:{self.secret}".encode()
        return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()

    def _dumps(self, data: dict[str, Any]) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(data).encode()).decode()
        return f"{payload}.{self._mac(payload)}"

    def _loads(self, raw: str) -> dict[str, Any] | None:
        payload, _, mac = raw.rpartition(".")
        if not payload or not hmac.compare_digest(self._mac(payload), mac):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload))
        except ValueError:
            return None
        if not isinstance(data, dict) or time.time() - float(data.get("iat", 0)) > MAX_AGE:
            return None
        return data

    def load(self, request: Request) -> Session:
        raw = request.cookies.get(COOKIE)
        if raw:
            data = self._loads(raw)
            if data is not None and isinstance(data.get("sid"), str):
                return Session(data["sid"], data.get("user"), data.get("at"))
        return Session(secrets.token_urlsafe(24), changed=True)

    def login(self, session: Session, username: str) -> str:
        """Log in with a fresh session id (no fixation); returns the old id."""
        old = session.sid
        session.sid = secrets.token_urlsafe(24)
        session.username = username
        session.auth_time = int(time.time())
        session.changed = True
        return old

    def save(self, session: Session, response: Response, secure: bool) -> None:
        if not session.changed:
            return
        value = self._dumps(
            {
                "sid": session.sid,
                "user": session.username,
                "at": session.auth_time,
                "iat": time.time(),
            }
        )
        for path in COOKIE_PATHS:
            response.set_cookie(
                COOKIE,
                value,
                max_age=MAX_AGE,
                httponly=True,
                samesite="lax",
                secure=secure,
                path=path,
            )

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self.secret.encode(), session.sid.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), str(token))
