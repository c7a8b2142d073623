"""The audit records' own indexer (fhir_server/audit/index.py) against the generic one
(fhir_server/search/extract.py): the same search values, sort keys and Patient
compartments for every kind of record the server writes, so an AuditEvent search
finds exactly what it would find had the record been indexed like any resource."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from fhir_server.audit.events import Caller, RestRequest, auth_event, rest_events
from fhir_server.audit.index import audit_index
from fhir_server.audit.seen import Seen
from fhir_server.datetimes import now
from fhir_server.search.extract import index_resource
from fhir_server.search.registry import Registry
from fhir_server.service.resources import with_meta
from fhir_server.storage.documents import VersionWrite
from smart_auth.scopes import ScopeSet
from smart_auth.tokens import AccessToken

REGISTRY = Registry.from_definitions()
SERVER = "https://ehr.example.org/fhir"


def _token(kind: str) -> AccessToken | None:
    scopes = ScopeSet.parse("user/*.rs")
    if kind == "none":
        return None
    if kind == "backend":
        return AccessToken("svc", "svc", scopes, None, None, None, "j1", 0, {})
    if kind == "patient":
        return AccessToken("app", "ana", scopes, "p1", None, "Patient/p1", "j2", 0, {})
    return AccessToken("app", "dr", scopes, None, None, "Practitioner/dr", "j3", 0, {})


def _seen(kind: str) -> Seen:
    seen = Seen()
    if kind == "one":
        seen.add("Observation", "o1", 2, ("Patient/p1",))
    elif kind == "patient":
        seen.add("Patient", "p1", 1, ())
    elif kind == "many":
        seen.add("Observation", "o1", 1, ("Patient/p1",))
        seen.add("Observation", "o2", 4, ("Patient/p2", "Patient/p3"))
        seen.add("Practitioner", "dr", 1, ())
        seen.query = "category=laboratory&_count=5"
    elif kind == "shared":
        seen.add("Organization", "org1", 1, ())
    return seen


def rest_requests() -> list[RestRequest]:
    """A request of every kind: each interaction, caller, set of resources, outcome."""
    out = []
    interactions = ["read", "vread", "update", "patch", "delete", "create", "search-type"]
    interactions += ["search-system", "search-compartment", "history-instance", "transaction"]
    interactions += ["operation", "unmatched"]
    for interaction, token, seen, status in itertools.product(
        interactions,
        ["none", "backend", "patient", "user"],
        ["none", "one", "patient", "many"],
        [200, 201, 404, 500],
    ):
        address = None if token == "backend" and status == 500 else "10.1.2.3"
        request = RestRequest(
            interaction=interaction,
            method="GET",
            path="Observation",
            query="code=x&subject=Patient%2Fp1",
            status=status,
            request_id="req-1",
            caller=Caller(_token(token), address, SERVER),
            path_patient="Patient/p9" if seen == "none" and interaction == "read" else None,
            operation="$everything" if interaction == "operation" else None,
            seen=_seen(seen),
        )
        out.append(request)
    return out


def rest_records() -> list[dict[str, Any]]:
    return [event for request in rest_requests() for event in rest_events(request)]


def auth_records() -> list[dict[str, Any]]:
    out = []
    kinds = ["login", "logout", "lockout", "token", "refresh", "revoke"]
    kinds += ["consent-granted", "consent-denied", "client-registered", "user-unlocked"]
    for kind, ok, user, client, patient in itertools.product(
        kinds, [True, False], [None, "ana"], [None, "app"], [None, "p1", "Patient/p2"]
    ):
        caller = Caller(None, "192.0.2.7" if ok else None, SERVER)
        out.append(
            auth_event(
                kind,
                ok,
                caller,
                username=user,
                client_id=client,
                patient=patient,
                detail="scope: patient/*.rs" if ok else "invalid",
                jti="j9" if user else None,
            )
        )
    return out


def _stored(event: dict[str, Any]) -> dict[str, Any]:
    write = VersionWrite(
        type="AuditEvent",
        id="a1",
        version=1,
        last_updated=now(),
        method="POST",
        raw=None,
        previous=None,
    )
    return with_meta(event, write)


def _as_sets(sp: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {k: sorted(map(repr, v)) for k, v in sp.items()}


RECORDS = rest_records() + auth_records()


def test_the_generator_covers_every_shape() -> None:
    assert len(RECORDS) > 800
    profiles = {r.get("meta", {}).get("profile", [None])[0] for r in RECORDS}
    assert len(profiles) >= 8  # Read, Query, Create, ... with and without patient


@pytest.mark.parametrize("chunk", range(8))
def test_same_index_as_the_generic_indexer(chunk: int) -> None:
    for event in RECORDS[chunk::8]:
        stored = _stored(event)
        mine = audit_index(stored)
        generic = index_resource(stored, REGISTRY)
        assert _as_sets(mine.sp) == _as_sets(generic.sp), stored
        assert mine.so == generic.so, stored
        assert sorted(mine.comp) == sorted(generic.comp), stored


def test_a_large_transaction_is_recorded_in_bounded_records() -> None:
    """A 10,000-entry transaction must not become one record of megabytes (MongoDB's
    16 MB document limit, and every index key of it on one insert): at most 500
    resources a record, all with the request's id."""
    seen = Seen()
    for i in range(1200):
        seen.add("Observation", f"o{i}", 1, ("Patient/p1",))
    request = RestRequest(
        interaction="transaction",
        method="POST",
        path="",
        query="",
        status=200,
        request_id="req-big",
        caller=Caller(_token("user"), "10.1.2.3", SERVER),
        seen=seen,
    )
    events = rest_events(request)
    listed = [
        [e for e in event["entity"] if e.get("role", {}).get("code") == "4"] for event in events
    ]
    assert [len(x) for x in listed] == [500, 500, 200]
    assert sum(len(x) for x in listed) == 1200
    for event in events:
        ids = [e for e in event["entity"] if e["type"]["code"] == "XrequestId"]
        assert ids[0]["what"]["identifier"]["value"] == "req-big"
