"""Legacy users and roles -> ``smart_auth`` users (``fhir-server import users``).

The mapping's ``users:`` section gives a query and expressions for the username, e-mail,
role (admin, practitioner, patient or operator) and linked record (``fhir_user``, a
``ref()`` to a resource mapping). The linked record is looked up on the FHIR server the
resources were migrated to, so ``fhir_user`` is the real ``Practitioner/<id>`` or
``Patient/<id>``. Legacy password hashes cannot be carried over (other algorithms, other
salts): each new user gets a random password it is never told and must choose a new one
(``must_reset_password``), through the administrator's reset. The e-mail is kept on the
user and, when the linked record lacks it, added to that record's telecom. Users that
already exist are left alone, so the command can be re-run.

The FHIR server is reached with a fixed bearer token or, like ``import run``, as a SMART
backend client (``auth``: smart_auth.backend_client.BackendAuth, which renews its
tokens and is asynchronous only; hence the asyncio client, the rows themselves being
read and written one at a time).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from pymongo.database import Database
from sqlalchemy import create_engine, text

from importers.build import request_url
from importers.mapping.expressions import Functions, MappingError, Reject
from importers.mapping.model import Mapping
from importers.source import key_text

if TYPE_CHECKING:
    from smart_auth.backend_client import BackendAuth


@dataclass(slots=True)
class UserSummary:
    read: int = 0
    created: int = 0
    existing: int = 0
    failed: int = 0
    emails_added: int = 0  # e-mails added to the linked record's telecom
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"users: {self.read} read, {self.created} created, {self.existing} already there, "
            f"{self.failed} failed (new users must reset their password); "
            f"{self.emails_added} e-mails added to the linked Practitioner or Patient"
        ]
        return out + [f"  {p}" for p in self.problems]


async def _resolve(client: httpx.AsyncClient, reference: str | None) -> str | None:
    """``Practitioner?identifier=…`` -> ``Practitioner/<id>`` when exactly one matches."""
    if not reference or "?" not in reference:
        return reference
    type_, _, query = reference.partition("?")
    r = await client.get(f"{type_}?{query}&_elements=id&_count=2")  # params= would drop query
    if r.status_code != 200:
        return None
    entries = [e for e in r.json().get("entry", []) if e.get("resource")]
    return f"{type_}/{entries[0]['resource']['id']}" if len(entries) == 1 else None


async def _add_email(
    client: httpx.AsyncClient, reference: str, email: str, summary: UserSummary
) -> str | None:
    """Add ``email`` to the record's telecom unless it has it (JSON Patch, If-Match: a
    record changed meanwhile is not overwritten); returns a problem, or None."""
    r = await client.get(reference)
    if r.status_code != 200:
        return f"{reference}: HTTP {r.status_code}; e-mail not added to it"
    record = r.json()
    telecom = record.get("telecom") or []
    if any(t.get("system") == "email" and str(t.get("value", "")).lower() == email
           for t in telecom):  # fmt: skip
        return None
    point = {"system": "email", "value": email}
    patch = (
        [{"op": "add", "path": "/telecom/-", "value": point}]
        if telecom
        else [{"op": "add", "path": "/telecom", "value": [point]}]
    )
    version = record.get("meta", {}).get("versionId")
    headers = {"Content-Type": "application/json-patch+json"}
    if version:
        headers["If-Match"] = f'W/"{version}"'
    r = await client.patch(reference, content=json.dumps(patch), headers=headers)
    if r.status_code != 200:
        return f"{reference}: HTTP {r.status_code}; e-mail not added to it"
    summary.emails_added += 1
    return None


def import_users(
    mapping: Mapping,
    source_url: str,
    fhir_url: str,
    db: Database[Any],
    token: str | None = None,
    auth: BackendAuth | None = None,
) -> UserSummary:
    """Create the mapping's users; ``auth`` (a backend client) instead of ``token``."""
    return asyncio.run(_import_users(mapping, source_url, fhir_url, db, token, auth))


async def _import_users(
    mapping: Mapping,
    source_url: str,
    fhir_url: str,
    db: Database[Any],
    token: str | None,
    auth: BackendAuth | None,
) -> UserSummary:
    from smart_auth.users import UserError, create_user, get_user

    spec = mapping.users
    if not spec:
        raise MappingError(f"mapping {mapping.name!r} has no users: section")
    functions = Functions(
        mapping.timezone,
        mapping.codes,
        lambda name, key: request_url(mapping.by_name[name], key_text(key)),
    )
    env = functions.env()
    from importers.mapping.expressions import compile_expression
    from importers.mapping.model import FUNCTIONS

    exprs = {
        name: compile_expression(spec[name], FUNCTIONS, f"users.{name}")
        for name in ("username", "email", "role", "fhir_user")
        if name in spec
    }
    summary = UserSummary()
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if auth is not None:  # the first token before any row is read: fail at once
        await auth.client.token()
    engine = create_engine(source_url)
    try:
        async with httpx.AsyncClient(
            base_url=fhir_url.rstrip("/") + "/", headers=headers, timeout=60, auth=auth
        ) as client:
            with engine.connect() as conn:
                for row in conn.execute(text(spec["query"])).mappings():
                    summary.read += 1
                    values = dict(row)
                    key = key_text(values.get(spec["key"]))
                    functions.row, functions.issues = values, []
                    try:
                        got = {n: eval(e.code, env, values) for n, e in exprs.items()}
                    except Reject as exc:
                        summary.failed += 1
                        summary.problems.append(f"user {key}: {exc.column}: {exc.reason}")
                        continue
                    username = functions.f_text(got.get("username"))
                    if not username:
                        summary.failed += 1
                        summary.problems.append(f"user {key}: no username")
                        continue
                    if get_user(db, username) is not None:
                        summary.existing += 1
                        continue
                    fhir_user = await _resolve(client, got.get("fhir_user"))
                    email = functions.f_email(got.get("email"))
                    try:
                        create_user(
                            db,
                            username,
                            secrets.token_urlsafe(24),
                            str(got.get("role") or ""),
                            fhir_user,
                            must_reset_password=True,
                            email=email,
                        )
                    except UserError as exc:
                        summary.failed += 1
                        summary.problems.append(f"user {key} ({username}): {exc}")
                        continue
                    summary.created += 1
                    if email and fhir_user:
                        problem = await _add_email(client, fhir_user, email, summary)
                        if problem:
                            summary.problems.append(f"user {key} ({username}): {problem}")
    finally:
        engine.dispose()
    return summary
