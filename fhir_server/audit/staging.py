"""Audit facts staged in MongoDB while the server is busy, made into AuditEvents later.

Why: making one BALP record (building it, its search index, the stored form) costs the
API process ~110 µs and storing it with its indexes costs mongod ~85 µs: about a fifth
of a read by id. When requests keep arriving without a gap, the sink stores instead
the facts each request's records are made of (who asked, from where, what was
touched, the outcome), ``UNIT`` requests per small document of ``audit_staging``,
which has no index but ``_id``: a few µs a request. The records are made from the
units when the server has a gap, or once a unit is ``max_lag`` seconds old whatever
the load, so a server under a burst answers at full speed and one under sustained
overload does what it did before (docs/audit.md, "Cost").

Nothing is lost that was not lost before: the facts are in MongoDB within the flush
interval. A unit carries a lease (its process's): when a process dies, another one,
or the next start, takes its units once the lease has run out. A record's id is
derived from its unit, its request and its place, so a unit made twice (a process
killed between storing its records and deleting the unit) stores each record once.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from pymongo.asynchronous.database import AsyncDatabase

from fhir_server.audit.events import Caller, RestRequest
from fhir_server.audit.seen import Seen

COLLECTION = "audit_staging"
UNIT = 32  # requests per staged document
LEASE_MARGIN = timedelta(minutes=5)  # beyond max_lag: how long a unit stays its process's
_IDS = uuid.UUID("6f1d5c1e-2a0b-4c55-9a61-3d0b8f0e7a24")  # namespace of derived record ids


class Who(NamedTuple):
    """The token's identity as a record names it (an AccessToken has the same fields)."""

    client_id: str
    subject: str | None
    fhir_user: str | None
    jti: str


def fact(item: RestRequest | dict[str, Any]) -> dict[str, Any]:
    """A request (or an auth record, already made) as a staged fact."""
    if isinstance(item, dict):
        return {"e": item}
    a = item.caller.access
    seen = item.seen
    return {
        "i": item.interaction,
        "m": item.method,
        "p": item.path,
        "q": item.query,
        "s": item.status,
        "rid": item.request_id,
        "who": [a.client_id, a.subject, a.fhir_user, a.jti] if a is not None else None,
        "addr": item.caller.address,
        "base": item.caller.server,
        "pp": item.path_patient,
        "op": item.operation,
        "at": item.at,
        # pairs, not a document: resource keys hold "." and "$" no field name may
        "res": [[key, list(patients)] for key, patients in seen.resources.items()],
        "pts": list(seen.patients),
        "sq": seen.query,
        "refs": list(seen.query_refs),
        "opaque": seen.query_opaque,
    }


def unfact(stored: dict[str, Any]) -> RestRequest | dict[str, Any]:
    """The request (or auth record) a staged fact holds."""
    if "e" in stored:
        event: dict[str, Any] = stored["e"]
        return event
    seen = Seen(
        resources={key: tuple(patients) for key, patients in stored["res"]},
        patients=set(stored["pts"]),
        query=stored["sq"],
        query_refs=set(stored["refs"]),
        query_opaque=stored["opaque"],
    )
    who = Who(*stored["who"]) if stored["who"] is not None else None
    return RestRequest(
        interaction=stored["i"],
        method=stored["m"],
        path=stored["p"],
        query=stored["q"],
        status=stored["s"],
        request_id=stored["rid"],
        caller=Caller(who, stored["addr"], stored["base"]),
        path_patient=stored["pp"],
        operation=stored["op"],
        seen=seen,
        at=stored["at"],
    )


def unit(facts: list[dict[str, Any]], lease: datetime) -> dict[str, Any]:
    return {"_id": uuid.uuid4().hex, "lease": lease, "facts": facts}


def record_id(unit_id: str, request: int, record: int) -> str:
    """The same id each time a unit is made into records (a retry stores no twin)."""
    return str(uuid.uuid5(_IDS, f"{unit_id}/{request}/{record}"))


async def staged_units(db: AsyncDatabase[dict[str, Any]]) -> int:
    """Units of every process staged and not made yet (each of at most ``UNIT``
    requests); from the collection's metadata, so a scrape reads no unit."""
    return await db[COLLECTION].estimated_document_count()
