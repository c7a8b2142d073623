"""People who log in at the authorization server: argon2 password hashes, a role that
decides which scopes they may grant, an optional TOTP second factor, and a throttle on
repeated failed logins per username and client IP (smart_auth/throttle.py; every attempt
is recorded in ``auth_login_attempts``)."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from smart_auth.store import LOGIN_ATTEMPTS, USERS
from smart_auth.throttle import LoginThrottle, Throttled

Role = Literal["admin", "practitioner", "patient", "operator"]
ROLES: tuple[str, ...] = ("admin", "practitioner", "patient", "operator")
_HASHER = PasswordHasher()


# one @, something on each side, no spaces, at most 254 characters (RFC 5321's path limit)
_EMAIL = re.compile(r"(?=.{3,254}$)[^@\s]+@[^@\s]+\.[^@\s]+")


class UserError(ValueError):
    """A user that cannot be created as asked."""


LoginFailure = Literal["invalid", "locked", "totp_required", "totp_invalid", "must_reset"]


class LoginFailed(Exception):
    """Why a login was refused; ``reason`` picks the message shown on the login page.
    ``retry_after``: seconds until this username may be tried again from this address."""

    def __init__(self, reason: LoginFailure, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.reason: LoginFailure = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class User:
    username: str
    role: str
    fhir_user: str | None
    has_totp: bool

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> User:
        return cls(doc["_id"], doc["role"], doc.get("fhir_user"), bool(doc.get("totp_secret")))

    @property
    def patient_id(self) -> str | None:
        """The Patient id a patient user is linked to (their own record)."""
        if self.fhir_user and self.fhir_user.startswith("Patient/"):
            return self.fhir_user.split("/", 1)[1]
        return None


def create_user(
    db: Database[Any],
    username: str,
    password: str,
    role: str,
    fhir_user: str | None = None,
    totp: bool = False,
    must_reset_password: bool = False,
    email: str | None = None,
) -> dict[str, Any]:
    """Create a user; returns ``{"username", "role", "fhir_user"}`` (and ``email`` when
    given) plus ``totp_secret`` and ``totp_uri`` when TOTP is on (shown once, for the
    user's authenticator app)."""
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if not username or len(username) > 200:
        raise UserError("username must be 1 to 200 characters")
    if len(password) < 8:
        raise UserError("password must have at least 8 characters")
    if fhir_user is not None:
        kind, _, ident = fhir_user.partition("/")
        allowed = ("Patient",) if role == "patient" else ("Practitioner", "PractitionerRole")
        if kind not in (*allowed, "Patient", "Practitioner", "PractitionerRole") or not ident:
            raise UserError("fhir_user must look like Practitioner/123 or Patient/456")
        if kind not in allowed:
            raise UserError(f"a {role} user's fhir_user must be a {' or '.join(allowed)}")
    if role == "patient" and fhir_user is None:
        raise UserError("a patient user needs fhir_user=Patient/<id>")
    if email is not None and not _EMAIL.fullmatch(email):
        raise UserError(f"{email!r} is not an e-mail address")
    totp_secret = pyotp.random_base32() if totp else None
    doc = {
        "_id": username,
        "username": username,
        "password": _HASHER.hash(password),
        "role": role,
        "fhir_user": fhir_user,
        "totp_secret": totp_secret,
        "must_reset_password": must_reset_password,
        "created": time.time(),
    }
    if email is not None:
        doc["email"] = email
    try:
        db[USERS].insert_one(doc)
    except DuplicateKeyError:
        raise UserError(f"user {username!r} already exists") from None
    out: dict[str, Any] = {"username": username, "role": role, "fhir_user": fhir_user}
    if email is not None:
        out["email"] = email
    if totp_secret:
        out["totp_secret"] = totp_secret
        out["totp_uri"] = pyotp.TOTP(totp_secret).provisioning_uri(
            name=username, issuer_name="fhir-server"
        )
    return out


def get_user(db: Database[Any], username: str) -> User | None:
    doc = db[USERS].find_one({"_id": username})
    return User.from_doc(doc) if doc else None


def _use_totp(db: Database[Any], doc: dict[str, Any], code: str) -> bool:
    """Whether ``code`` is the user's TOTP for the current 30 s step or a neighbour, and
    was not used before: each step's code logs in once (RFC 6238 section 5.2)."""
    totp = pyotp.TOTP(doc["totp_secret"])
    now = time.time()
    for offset in (0, -1, 1):
        at = now + offset * totp.interval
        if secrets.compare_digest(totp.at(at), code):
            step = totp.timecode(at)
            used = db[USERS].update_one(
                {"_id": doc["_id"], "totp_step": {"$not": {"$gte": step}}},
                {"$set": {"totp_step": step}},
            )
            return used.modified_count == 1
    return False


def authenticate(
    db: Database[Any],
    username: str,
    password: str,
    totp_code: str | None,
    *,
    throttle: LoginThrottle,
    client_ip: str,
    new_password: str | None = None,
) -> User:
    """The user these credentials identify, or LoginFailed. While ``throttle`` makes this
    username wait at this client address, every attempt is refused ("locked") without
    checking the password; other addresses are not affected. Unknown usernames are
    throttled and recorded too, and answered like a wrong password."""
    try:
        throttle.claim(username, client_ip)
    except Throttled as wait:
        raise LoginFailed("locked", wait.retry_after) from None
    doc = db[USERS].find_one({"_id": username})
    ok = False
    if doc is not None:
        try:
            ok = _HASHER.verify(doc["password"], password)
        except (VerificationError, InvalidHashError):
            ok = False
    else:
        _HASHER.hash(password)  # same cost as a real check: no timing oracle on usernames
    failure: LoginFailure | None = None if ok else "invalid"
    if ok and doc is not None and doc.get("totp_secret"):
        if not totp_code:
            failure = "totp_required"
        elif not _use_totp(db, doc, totp_code.strip()):
            failure = "totp_invalid"
    if failure != "totp_required":  # asking for the second factor is not a failure
        db[LOGIN_ATTEMPTS].insert_one(
            {
                "username": username,
                "ip": client_ip,
                "ok": failure is None,
                "at": datetime.now(UTC),
            }
        )
        if failure is None:
            throttle.succeeded(username, client_ip)
        else:
            throttle.failed(username, client_ip)
    if failure is not None:
        raise LoginFailed(failure)
    assert doc is not None
    if doc.get("must_reset_password"):
        if not new_password:
            raise LoginFailed("must_reset")
        if len(new_password) < 8 or new_password == password:
            raise LoginFailed("must_reset")
        db[USERS].update_one(
            {"_id": username},
            {"$set": {"password": _HASHER.hash(new_password), "must_reset_password": False}},
        )
    return User.from_doc(doc)


def new_session_id() -> str:
    return secrets.token_urlsafe(24)
