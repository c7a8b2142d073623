"""The audit trail (issue 18, docs/audit.md): a BALP AuditEvent for every FHIR
interaction and auth event, through the real HTTP interface.

IHE BALP (Basic Audit Log Patterns) 1.1, RESTful patterns: type ``rest``, subtype the
FHIR interaction, action C/R/U/D/E, the client as "Source Role ID" (DICOM 110153) with
its network address, the server as "Destination Role ID" (110152), the user as the
information recipient whose ``policy`` is the token's ``jti``, the request's
``X-Request-Id`` as an entity; "entity:patient 1..1", one patient per record.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from fastapi.testclient import TestClient
from pymongo import MongoClient
from smart_as_helpers import (
    REDIRECT,
    Smart,
    app_tokens,
    login,
    seed,
    smart_server,
    token_request,
)
from smart_helpers import TokenMint, smart_client

from fhir_server.audit import staging
from smart_auth.clients import create_client
from smart_auth.users import create_user

AUDIT = "system/AuditEvent.rs"
BASE = "https://fhir.example.org/fhir"
DR = {"fhir_user": "Practitioner/dr", "subject": "dr-user"}


def audit_search(
    c: TestClient, mint: TokenMint, query: str, expect: int = 1, rids: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """The AuditEvents a search finds, waiting for the sink (records are stored once the
    server is quiet: here between two polls) until there are ``expect`` and the
    records of the requests ``rids`` (X-Request-Id) are among them."""
    headers = mint.headers(AUDIT)
    deadline = time.monotonic() + 5
    while True:
        r = c.get(f"/fhir/AuditEvent?{query}&_count=200", headers=headers)
        assert r.status_code == 200, r.text
        found = [e["resource"] for e in r.json().get("entry", [])]
        ready = all(by_request(found, rid) for rid in rids)
        if (len(found) >= expect and ready) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def by_request(events: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [e for e in events if request_id in _request_ids(e)]


def _request_ids(event: dict[str, Any]) -> set[str]:
    return {
        e["what"]["identifier"]["value"]
        for e in event.get("entity", [])
        if e.get("type", {}).get("code") == "XrequestId"
    }


def patients_of(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event["entity"] if e.get("role", {}).get("code") == "1"]


def data_of(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event["entity"] if e.get("role", {}).get("code") == "4"]


def query_of(event: dict[str, Any]) -> str | None:
    for e in event["entity"]:
        if e.get("role", {}).get("code") == "24":
            return base64.b64decode(e["query"]).decode()
    return None


def agent(event: dict[str, Any], code: str) -> dict[str, Any]:
    for a in event["agent"]:
        codes = {c.get("code") for c in a["type"].get("coding", [])}
        if code in codes:
            return a
    raise AssertionError(f"no agent {code} in {event['agent']}")


def patients_put(*ids: str) -> dict[str, Any]:
    """A transaction updating (creating) an active Patient for each id."""
    entries = [
        {
            "resource": {"resourceType": "Patient", "id": pid, "active": True},
            "request": {"method": "PUT", "url": f"Patient/{pid}"},
        }
        for pid in ids
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@pytest.fixture
def world(mongo_url: str) -> Iterator[tuple[TestClient, TokenMint]]:
    with smart_client(mongo_url) as pair:
        yield pair


def test_a_read_is_recorded_as_balp_patient_read(world: tuple[TestClient, TokenMint]) -> None:
    c, mint = world
    token, claims = mint.issue("user/*.rs", **DR)
    r = c.get("/fhir/Observation/oa-lab", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    events = by_request(audit_search(c, mint, "subtype=read&patient=Patient/pa", rids=(rid,)), rid)
    assert len(events) == 1
    event = events[0]
    assert event["meta"]["profile"] == [
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
    ]
    assert event["type"]["code"] == "rest"
    assert event["subtype"][0] == {
        "system": "http://hl7.org/fhir/restful-interaction",
        "code": "read",
    }
    assert (event["action"], event["outcome"]) == ("R", "0")
    assert patients_of(event) == ["Patient/pa"]
    assert data_of(event) == ["Observation/oa-lab/_history/1"]
    client = agent(event, "110153")
    assert client["altId"] == "test-app"
    assert client["network"]["type"] == "2" and client["network"]["address"]
    user = agent(event, "IRCP")
    assert user["who"]["reference"] == "Practitioner/dr"
    assert user["altId"] == "dr-user"
    assert user["policy"] == [claims["jti"]] and user["requestor"] is True
    assert agent(event, "110152")["network"]["address"] == "http://testserver/fhir"
    # the record is itself valid R4 (the server's own validator)
    v = c.post(
        "/fhir/AuditEvent/$validate",
        json={k: v for k, v in event.items() if k not in ("id", "meta")},
        headers=mint.headers("system/AuditEvent.cruds"),
    )
    assert v.status_code == 200, v.text
    assert not [i for i in v.json()["issue"] if i["severity"] in ("error", "fatal")], v.text


@pytest.mark.parametrize(
    ("path", "subtype"),
    [
        ("Observation/oa-lab/_history/1", "vread"),
        ("Observation/oa-lab/_history", "history-instance"),
    ],
)
def test_vread_and_history_name_whose_record_it_was(
    world: tuple[TestClient, TokenMint], path: str, subtype: str
) -> None:
    """An old version discloses the patient's data as the current one does: its record
    is in that patient's trail (history versions keep their Patient compartments)."""
    c, mint = world
    r = c.get(f"/fhir/{path}", headers=mint.headers("user/*.rs", **DR))
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    events = audit_search(c, mint, f"subtype={subtype}&patient=Patient/pa", rids=(rid,))
    (event,) = by_request(events, rid)
    assert patients_of(event) == ["Patient/pa"]
    if subtype == "vread":  # a history is a query (BALP): its patients, not its entries
        assert data_of(event) == ["Observation/oa-lab/_history/1"]


def test_writes_record_action_and_versions(world: tuple[TestClient, TokenMint]) -> None:
    c, mint = world
    h = mint.headers("user/*.cruds", **DR)
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": "Patient/pb"},
    }
    created = c.post("/fhir/Observation", json=obs, headers=h)
    assert created.status_code == 201
    oid = created.json()["id"]
    updated = c.put(
        f"/fhir/Observation/{oid}", json={**obs, "id": oid, "status": "amended"}, headers=h
    )
    deleted = c.delete(f"/fhir/Observation/{oid}", headers=h)
    assert (updated.status_code, deleted.status_code) == (200, 200)
    events = audit_search(c, mint, f"entity=Observation/{oid}", expect=2)
    actions = {}
    for response in (created, updated):
        (event,) = by_request(events, response.headers["x-request-id"])
        actions[event["action"]] = (data_of(event), patients_of(event), event["meta"]["profile"])
    assert actions["C"][0] == [f"Observation/{oid}/_history/1"]
    assert actions["C"][1] == ["Patient/pb"]
    assert actions["C"][2][0].endswith("IHE.BasicAudit.PatientCreate")
    assert actions["U"][0] == [f"Observation/{oid}/_history/2"]
    deletes = audit_search(c, mint, "action=D")
    (event,) = by_request(deletes, deleted.headers["x-request-id"])
    assert data_of(event) == [f"Observation/{oid}/_history/3"]
    assert patients_of(event) == ["Patient/pb"]  # whose record was deleted
    assert event["subtype"][0]["code"] == "delete"


def test_search_across_patients_is_split_per_patient(world: tuple[TestClient, TokenMint]) -> None:
    """BALP PatientQuery: one patient per record. The request's whole record (with the
    query) is in no patient's compartment; each patient's record names that patient
    alone and carries no query that could name another."""
    c, mint = world
    h = mint.headers("user/*.rs", **DR)
    r = c.get("/fhir/Observation?category=laboratory&_sort=_id", headers=h)
    assert r.status_code == 200 and r.json()["total"] == 2
    rid = r.headers["x-request-id"]
    events = by_request(audit_search(c, mint, "subtype=search-type", expect=3), rid)
    assert len(events) == 3
    whole = [e for e in events if not patients_of(e)]
    assert len(whole) == 1
    assert query_of(whole[0]) == "category=laboratory&_sort=_id"
    assert whole[0]["meta"]["profile"][0].endswith("IHE.BasicAudit.Query")
    per_patient = sorted((patients_of(e), query_of(e)) for e in events if patients_of(e))
    assert per_patient == [(["Patient/pa"], None), (["Patient/pb"], None)]
    # a one-patient search keeps its query in the patient's record
    one = c.get("/fhir/Observation?subject=Patient/pa&category=vital-signs", headers=h)
    (event,) = by_request(
        audit_search(c, mint, "subtype=search-type&patient=Patient/pa", expect=2),
        one.headers["x-request-id"],
    )
    assert query_of(event) == "subject=Patient%2Fpa&category=vital-signs"
    assert event["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientQuery")


@pytest.mark.parametrize(
    "query",
    [
        "subject=Patient/pa,Patient/pb-never-seen",
        "subject:Patient._id=pa",  # a chain: its values could be anyone's
        "_id=oa-lab,ob-lab-of-someone",
    ],
)
def test_a_query_naming_someone_else_stays_out_of_the_patients_record(
    world: tuple[TestClient, TokenMint], query: str
) -> None:
    """A search that found one patient's data, but whose query names another patient
    (or cannot be told not to): the patient's apps read that patient's trail, so the
    query goes in the admin-only record of the whole request, and the patient's record
    names the patient without it."""
    c, mint = world
    h = mint.headers("user/*.rs", **DR)
    r = c.get(f"/fhir/Observation?{query}&category=laboratory", headers=h)
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json()["entry"]] == ["oa-lab"]
    events = by_request(audit_search(c, mint, "subtype=search-type", 2), r.headers["x-request-id"])
    own = [e for e in events if patients_of(e)]
    whole = [e for e in events if not patients_of(e)]
    assert [patients_of(e) for e in own] == [["Patient/pa"]]
    assert query_of(own[0]) is None
    assert len(whole) == 1 and query_of(whole[0]) == urlencode(
        [*parse_qsl(query), ("category", "laboratory")]
    )


def test_a_transaction_over_two_patients_gives_each_only_its_own(
    world: tuple[TestClient, TokenMint],
) -> None:
    c, mint = world
    h = mint.headers("user/*.cruds", **DR)
    bundle = patients_put("pa", "pb")
    r = c.post("/fhir", json=bundle, headers=h)
    assert r.status_code == 200, r.text
    events = by_request(audit_search(c, mint, "subtype=transaction", 3), r.headers["x-request-id"])
    assert len(events) == 3
    for event in events:
        named = {k for k in data_of(event) + patients_of(event) if k.startswith("Patient/")}
        assert len({k.split("/")[1] for k in named}) <= 1, event  # never both patients
    pa = [e for e in events if patients_of(e) == ["Patient/pa"]]
    assert len(pa) == 1 and data_of(pa[0]) == ["Patient/pa/_history/2"]


def test_a_patient_sees_its_own_trail_and_no_one_elses(
    world: tuple[TestClient, TokenMint],
) -> None:
    c, mint = world
    dr = mint.headers("user/*.rs", **DR)
    seen = c.get("/fhir/Observation?category=laboratory", headers=dr)
    read_b = c.get("/fhir/Patient/pb", headers=dr)
    assert seen.status_code == read_b.status_code == 200
    rids = (seen.headers["x-request-id"], read_b.headers["x-request-id"])
    audit_search(c, mint, "patient=Patient/pb", rids=rids)  # stored
    mine = mint.headers("patient/AuditEvent.rs", patient="pa", fhir_user="Patient/pa")
    r = c.get("/fhir/AuditEvent?_count=200", headers=mine)
    assert r.status_code == 200, r.text
    events = [e["resource"] for e in r.json()["entry"]]
    # the practitioner's search that returned pa's result is there, naming the reader
    (search,) = by_request(events, seen.headers["x-request-id"])
    assert agent(search, "IRCP")["who"]["reference"] == "Practitioner/dr"
    # nothing in pa's view names pb: not the other patient, not pb's resources
    text = str(events)
    assert "Patient/pb" not in text and "ob-lab" not in text
    assert not by_request(events, read_b.headers["x-request-id"])
    # and no reading another patient's trail by asking for it
    other = c.get("/fhir/AuditEvent?patient=Patient/pb", headers=mine)
    assert other.status_code in (200, 403)
    if other.status_code == 200:
        assert other.json().get("total", 0) == 0 and "entry" not in other.json()


def test_audit_records_are_read_only(world: tuple[TestClient, TokenMint]) -> None:
    c, mint = world
    h = mint.headers("system/AuditEvent.cruds")
    c.get("/fhir/Patient/pa", headers=mint.headers("system/Patient.rs"))
    (event,) = audit_search(c, mint, "subtype=read")[:1]
    body = {k: v for k, v in event.items() if k != "meta"}
    new = {k: v for k, v in body.items() if k != "id"}
    refused = [
        c.post("/fhir/AuditEvent", json=new, headers=h),
        c.put(f"/fhir/AuditEvent/{event['id']}", json={**body, "outcome": "8"}, headers=h),
        c.put("/fhir/AuditEvent/made-up", json={**new, "id": "made-up"}, headers=h),
        c.delete(f"/fhir/AuditEvent/{event['id']}", headers=h),
        c.patch(
            f"/fhir/AuditEvent/{event['id']}",
            json=[{"op": "replace", "path": "/outcome", "value": "8"}],
            headers={**h, "Content-Type": "application/json-patch+json"},
        ),
    ]
    for r in refused:
        assert r.status_code == 405, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
        assert r.json()["issue"][0]["expression"] == ["AuditEvent"]
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": new, "request": {"method": "POST", "url": "AuditEvent"}}],
    }
    r = c.post("/fhir", json=tx, headers=mint.headers("system/*.cruds system/AuditEvent.cruds"))
    assert r.status_code == 405, r.text
    again = c.get(f"/fhir/AuditEvent/{event['id']}", headers=mint.headers(AUDIT))
    assert again.json() == event  # unchanged
    vread = c.get(f"/fhir/AuditEvent/{event['id']}/_history/1", headers=mint.headers(AUDIT))
    assert vread.status_code == 200 and vread.json() == event
    history = c.get(f"/fhir/AuditEvent/{event['id']}/_history", headers=mint.headers(AUDIT))
    assert history.status_code == 400
    assert history.json()["issue"][0]["code"] == "not-supported"
    # and system history, which sync clients page through, holds no audit records
    h_all = c.get("/fhir/_history?_count=500", headers=mint.headers("system/*.rs"))
    assert h_all.status_code == 200
    assert not [e for e in h_all.json().get("entry", []) if "AuditEvent/" in e["fullUrl"]]
    cap = c.get("/fhir/metadata").json()
    (declared,) = [r for r in cap["rest"][0]["resource"] if r["type"] == "AuditEvent"]
    assert [i["code"] for i in declared["interaction"]] == ["search-type", "read", "vread"]


def test_wildcard_scopes_do_not_reach_the_audit_trail(
    world: tuple[TestClient, TokenMint],
) -> None:
    c, mint = world
    for scope in ("system/*.rs", "user/*.cruds"):
        r = c.get("/fhir/AuditEvent", headers=mint.headers(scope, **DR))
        assert r.status_code == 403, (scope, r.text)
    r = c.get("/fhir/AuditEvent", headers=mint.headers("system/AuditEvent.rs"))
    assert r.status_code == 200


def test_failures_and_missing_tokens_are_recorded(world: tuple[TestClient, TokenMint]) -> None:
    c, mint = world
    missing = c.get("/fhir/Patient/nope", headers=mint.headers("user/*.rs", **DR))
    forbidden = c.get("/fhir/Patient/pa", headers=mint.headers("user/Observation.rs", **DR))
    anonymous = c.get("/fhir/Patient/pa")
    assert (missing.status_code, forbidden.status_code, anonymous.status_code) == (404, 403, 401)
    events = audit_search(c, mint, "outcome=4", expect=3)
    for response in (missing, forbidden, anonymous):
        (event,) = by_request(events, response.headers["x-request-id"])
        assert event["outcome"] == "4"
        assert str(response.status_code) in event["outcomeDesc"]
    (anon,) = by_request(events, anonymous.headers["x-request-id"])
    assert [a.get("altId") for a in anon["agent"]] == [None, None]  # nobody identified
    assert agent(anon, "110153")["network"]["address"]


def test_a_transaction_that_did_not_commit_names_nothing_it_tried_to_write(
    world: tuple[TestClient, TokenMint], mongo_url: str
) -> None:
    """Versions a transaction wrote before its commit failed were never stored: the
    record of the attempt (outcome "serious failure") names none of them. Before, a
    10,000-entry transaction cancelled at shutdown made 10,000 per-patient records of
    versions that do not exist."""
    c, mint = world
    h = mint.headers("user/*.cruds", **DR)
    bundle = patients_put("lost-a", "lost-b")
    with MongoClient(mongo_url) as admin:
        admin.admin.command(
            "configureFailPoint", "failCommand", mode={"times": 1},
            data={"failCommands": ["commitTransaction"], "errorCode": 2},
        )  # fmt: skip
        try:
            r = c.post("/fhir", json=bundle, headers=h)
        finally:
            admin.admin.command("configureFailPoint", "failCommand", mode="off")
    assert r.status_code >= 500, r.text
    assert c.get("/fhir/Patient/lost-a", headers=h).status_code == 404
    events = by_request(audit_search(c, mint, "subtype=transaction"), r.headers["x-request-id"])
    assert len(events) == 1, events
    (event,) = events
    assert event["outcome"] in {"8", "12"}
    assert not [e for e in data_of(event) + patients_of(event) if "lost-" in e], event


SELECTIVE = (
    "patient=Patient/nobody",
    "entity=Patient/nobody/_history/1",
    "entity:identifier=abc",
    "agent=Practitioner/nobody",
    "altid=nobody",
    "policy=some-jti",
    "address=192.0.2.1",
    "date=ge2099-01-01",
    "date=lt2020-01-01",
    "outcome=8",
    "patient=Patient/pa&subtype=read&_sort=-_lastUpdated",
)


def test_the_questions_asked_of_a_trail_run_on_indexes(
    world: tuple[TestClient, TokenMint],
) -> None:
    """The AuditEvent collection has its own indexes (audit/indexes.py: who, whose
    record, when, what failed) instead of the wildcard index every other type has; each
    of these selective searches is answered from one of them, not by a scan of the
    collection or of its _id index (150 records that do not match make a scan lose the
    planner's trial)."""
    from fhir_server.audit.indexes import AUDIT_INDEXES
    from fhir_server.service.search import plan_stages

    c, mint = world
    h = mint.headers("system/Observation.rs")
    for _ in range(150):
        assert c.get("/fhir/Observation/oa-lab", headers=h).status_code == 200
    search = c.app.state.services.search  # type: ignore[attr-defined]
    chosen = {i.document["name"] for i in AUDIT_INDEXES} | {"audit_retention"}
    deadline = time.monotonic() + 10
    while (
        c.get("/fhir/AuditEvent?_summary=count", headers=mint.headers(AUDIT)).json()["total"] < 150
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    for query in SELECTIVE:
        r = c.get(f"/fhir/AuditEvent?{query}", headers=mint.headers(AUDIT))
        assert r.status_code == 200, r.text
        plan = search.parser().parse_url(f"AuditEvent?{query}")
        explained = c.portal.call(search.explain, plan)  # type: ignore[union-attr]
        assert explained
        for _, winning in explained:
            stages = plan_stages(winning)
            assert "COLLSCAN" not in stages and "IXSCAN" in stages, (query, stages)
            used = index_names(winning)
            assert used and used <= chosen, (query, used)  # not a walk of the _id index


def index_names(plan: Any) -> set[str]:
    """The indexes an explain() winning plan reads."""
    if isinstance(plan, dict):
        own = {plan["indexName"]} if isinstance(plan.get("indexName"), str) else set()
        return own.union(*(index_names(v) for v in plan.values()))
    if isinstance(plan, list):
        return set().union(*(index_names(v) for v in plan))
    return set()


def test_retention_is_a_ttl_index_that_follows_the_setting(mongo_url: str) -> None:
    from fhir_server.app import create_app
    from fhir_server.config import Settings

    database = "test_audit_retention"
    try:
        for days in (30, 7.5):
            settings = Settings(
                mongo_url=mongo_url,
                database=database,
                auth_enabled=False,
                audit_retention_days=days,
            )
            with TestClient(create_app(settings)) as c:
                assert c.get("/fhir/Patient").status_code == 200
            with MongoClient(mongo_url) as mc:
                indexes = {i["name"]: i for i in mc[database]["AuditEvent"].list_indexes()}
                assert indexes["audit_retention"]["expireAfterSeconds"] == round(days * 86400)
                assert mc[database]["AuditEvent"].count_documents({}) >= 1
    finally:
        with MongoClient(mongo_url) as mc:
            mc.drop_database(database)


def test_auditing_off_records_nothing(mongo_url: str) -> None:
    with smart_client(mongo_url, audit=False) as (c, mint):
        assert c.get("/fhir/Patient/pa", headers=mint.headers("user/*.rs", **DR)).status_code == 200
        time.sleep(0.5)
        r = c.get("/fhir/AuditEvent", headers=mint.headers(AUDIT))
        assert r.status_code == 200 and r.json()["total"] == 0


def stored_for(mongo_url: str, database: str, request_id: str) -> int:
    with MongoClient(mongo_url) as mc:
        return mc[database]["AuditEvent"].count_documents({"sp.entity:identifier": request_id})


def staged_for(mongo_url: str, database: str, request_id: str) -> int:
    with MongoClient(mongo_url) as mc:
        return mc[database][staging.COLLECTION].count_documents({"facts.rid": request_id})


def test_records_are_made_in_gaps_and_staged_while_busy(mongo_url: str) -> None:
    """docs/audit.md, "Cost": records are made and stored in the gaps between requests,
    so a server with spare time answers no later for keeping them. A server with no gap
    (here a request that never ends) stages each request's facts at once and makes its
    records once ``FHIR_AUDIT_MAX_LAG_SECONDS`` old; a gap makes them sooner; a stop
    stores what is queued."""
    from fhir_server.app import create_app
    from fhir_server.config import Settings

    database = f"test_{uuid.uuid4().hex[:12]}"
    settings = Settings(
        mongo_url=mongo_url, database=database, auth_enabled=False, audit_max_lag_seconds=2.0
    )

    def wait(rid: str, stored: bool, within: float) -> float:
        """Seconds until the request's record is stored (or its facts staged)."""
        started = time.monotonic()
        check = stored_for if stored else staged_for
        while not check(mongo_url, database, rid):
            assert time.monotonic() - started < within, "not in time"
            time.sleep(0.02)
        return time.monotonic() - started

    try:
        with TestClient(create_app(settings)) as c:
            sink = c.app.state.audit_sink  # type: ignore[attr-defined]
            assert (
                c.put("/fhir/Patient/q", json={"resourceType": "Patient", "id": "q"}).status_code
                == 201
            )
            # idle between requests: stored at the next flush (every 0.25 s), not staged
            rid = c.get("/fhir/Patient/q").headers["x-request-id"]
            wait(rid, stored=True, within=0.9)
            assert staged_for(mongo_url, database, rid) == 0
            # a request always running: the facts are staged at once, the record is
            # made when due (2 s), and the unit is gone after
            c.portal.call(sink.entered)
            rid = c.get("/fhir/Patient/q").headers["x-request-id"]
            wait(rid, stored=False, within=0.9)
            assert wait(rid, stored=True, within=3.5) > 0.8  # it waited for its due time
            assert staged_for(mongo_url, database, rid) == 0
            # a gap makes a staged unit's records before it is due
            rid = c.get("/fhir/Patient/q").headers["x-request-id"]
            wait(rid, stored=False, within=0.9)
            c.portal.call(sink.left)
            assert wait(rid, stored=True, within=0.9) < 0.9
            # stopping while busy stores what is queued at once
            c.portal.call(sink.entered)
            last = c.get("/fhir/Patient/q").headers["x-request-id"]
        assert stored_for(mongo_url, database, last) == 1
        with MongoClient(mongo_url) as mc:  # one record per request, none twice
            events = list(mc[database]["AuditEvent"].find({}, {"sp.entity:identifier": 1}))
            rids = [e["sp"]["entity:identifier"][0] for e in events]
            assert len(rids) == len(set(rids)) == 5
    finally:
        with MongoClient(mongo_url) as mc:
            mc.drop_database(database)


def test_a_dead_processs_staged_facts_are_made_by_the_next_start(mongo_url: str) -> None:
    """staging.py: a unit whose lease ran out (its process was killed) is taken by the
    next process to look, and made into the same records each time (a unit made twice,
    by a process killed between storing them and deleting the unit, stores no twin)."""
    from fhir_server.app import create_app
    from fhir_server.audit.events import Caller, RestRequest
    from fhir_server.audit.seen import Seen
    from fhir_server.config import Settings

    database = f"test_{uuid.uuid4().hex[:12]}"
    settings = Settings(mongo_url=mongo_url, database=database, auth_enabled=False)
    seen = Seen()
    seen.add("Observation", "o1", 1, ("Patient/dead",))
    request = RestRequest(
        interaction="read",
        method="GET",
        path="Observation/o1",
        query="",
        status=200,
        request_id="killed-process-request",
        caller=Caller(staging.Who("ehr", "dr-user", "Practitioner/dr", "j1"), "10.0.0.9", BASE),
        seen=seen,
    )
    left = staging.unit([staging.fact(request)], datetime.now(UTC) - timedelta(seconds=1))
    try:
        with MongoClient(mongo_url) as mc:
            mc[database][staging.COLLECTION].insert_one(left)
        with TestClient(create_app(settings)) as c:
            sink = c.app.state.audit_sink  # type: ignore[attr-defined]
            deadline = time.monotonic() + 5
            while stored_for(mongo_url, database, "killed-process-request") == 0:
                assert time.monotonic() < deadline, "the dead process's unit was not made"
                time.sleep(0.05)
            r = c.get("/fhir/AuditEvent?patient=Patient/dead")
            (event,) = [e["resource"] for e in r.json()["entry"]]
            assert event["entity"][2]["what"]["reference"] == "Observation/o1/_history/1"
            assert event["agent"][0]["altId"] == "ehr"
            assert event["recorded"].startswith(request.at.strftime("%Y-%m-%dT%H:%M:%S"))
            # made again (the process killed before deleting it): no second record
            assert c.portal.call(sink._make, left) == 1
        assert stored_for(mongo_url, database, "killed-process-request") == 1
        with MongoClient(mongo_url) as mc:
            assert mc[database][staging.COLLECTION].count_documents({}) == 0
    finally:
        with MongoClient(mongo_url) as mc:
            mc.drop_database(database)


# --- auth events -----------------------------------------------------------------------


@pytest.fixture
def smart(mongo_url: str) -> Iterator[Smart]:
    with smart_server(mongo_url, auth_lockout_attempts=2) as s:
        seed(s.settings, [{"resourceType": "Patient", "id": "p1"}])
        create_client(s.db, "app", "public", redirect_uris=[REDIRECT])
        create_user(s.db, "ana", "patient-pass", "patient", fhir_user="Patient/p1")
        yield s


def auth_events(s: Smart, kind: str, expect: int = 1) -> list[dict[str, Any]]:
    """Auth records of one kind, read straight from the collection (the test has no
    admin token of this server's own issuing)."""
    deadline = time.monotonic() + 5
    while True:
        found = [_resource(d) for d in s.db["AuditEvent"].find({"sp.subtype": {"$exists": True}})]
        found = [e for e in found if kind in {c["code"] for c in e["subtype"]}]
        if len(found) >= expect or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _resource(doc: dict[str, Any]) -> dict[str, Any]:
    import orjson

    out: dict[str, Any] = orjson.loads(doc["raw"])
    return out


def test_login_token_refresh_revoke_and_consent_are_recorded(smart: Smart) -> None:
    c = smart.client
    tokens = app_tokens(c, "openid fhirUser patient/*.rs offline_access", "ana", "patient-pass")
    (ok,) = auth_events(smart, "login")
    assert ok["outcome"] == "0" and ok["subtype"][0]["code"] == "110122"
    assert agent(ok, "IRCP")["altId"] == "ana"
    (granted,) = auth_events(smart, "consent-granted")
    assert patients_of(granted) == ["Patient/p1"]
    assert agent(granted, "110153")["altId"] == "app"
    assert "patient/*.rs" in granted["outcomeDesc"]
    (issued,) = auth_events(smart, "token")
    assert issued["outcome"] == "0"
    assert agent(issued, "IRCP")["altId"] == "ana"
    assert patients_of(issued) == ["Patient/p1"]
    refresh = token_request(
        c,
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "app",
        },
    )
    assert refresh.status_code == 200
    (refreshed,) = auth_events(smart, "refresh")
    assert refreshed["outcome"] == "0"
    revoked = c.post(
        "/auth/revoke", data={"token": refresh.json()["access_token"], "client_id": "app"}
    )
    assert revoked.status_code == 200
    (revoke,) = auth_events(smart, "revoke")
    assert agent(revoke, "110153")["altId"] == "app"
    bad = token_request(
        c, {"grant_type": "refresh_token", "refresh_token": "x", "client_id": "app"}
    )
    assert bad.status_code == 400
    failures = [e for e in auth_events(smart, "refresh", 2) if e["outcome"] == "4"]
    assert len(failures) == 1 and failures[0]["outcomeDesc"] == "invalid_grant"


def test_login_failures_and_lockout_are_recorded(smart: Smart) -> None:
    c = smart.client
    page = c.get("/auth/login")
    for _ in range(3):
        r = login(c, page, "ana", "wrong")
    assert r.status_code == 429
    failed = [e for e in auth_events(smart, "login", 3) if e["outcome"] == "4"]
    assert len(failed) == 3
    assert {e["outcomeDesc"] for e in failed} == {"invalid", "locked"}
    (lockout,) = auth_events(smart, "lockout")
    assert lockout["type"]["code"] == "110113"  # DICOM Security Alert
    assert agent(lockout, "IRCP")["altId"] == "ana"
    assert agent(lockout, "IRCP")["network"]["address"]


def test_consent_denied_is_recorded(smart: Smart) -> None:
    from smart_as_helpers import authorize_params, authorize_to_code, pkce

    _, challenge = pkce()
    params = authorize_params("app", "patient/*.rs", challenge)
    back = authorize_to_code(smart.client, params, "ana", "patient-pass", decision="deny")
    assert back.get("error") == "access_denied"
    (denied,) = auth_events(smart, "consent-denied")
    assert patients_of(denied) == ["Patient/p1"]
    assert agent(denied, "IRCP")["altId"] == "ana"


def test_head_is_recorded_as_the_get_it_stands_for(world: tuple[TestClient, TokenMint]) -> None:
    c, mint = world
    r = c.head("/fhir/Observation/oa-vital", headers=mint.headers("user/*.rs", **DR))
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    events = audit_search(c, mint, "subtype=read&patient=Patient/pa", rids=(rid,))
    (event,) = by_request(events, rid)
    assert data_of(event) == ["Observation/oa-vital/_history/1"]
    assert agent(event, "IRCP")["who"]["reference"] == "Practitioner/dr"


def test_everything_leaves_the_trail_out_unless_asked(world: tuple[TestClient, TokenMint]) -> None:
    """$everything returns the patient's record; the record of who looked at it (also in
    the Patient compartment) only when ``_type`` names AuditEvent."""
    c, mint = world
    h = mint.headers("system/*.rs system/AuditEvent.rs")
    assert c.get("/fhir/Patient/pa", headers=h).status_code == 200
    audit_search(c, mint, "patient=Patient/pa")  # flushed
    everything = c.get("/fhir/Patient/pa/$everything", headers=h).json()
    types = {e["resource"]["resourceType"] for e in everything["entry"]}
    assert "AuditEvent" not in types and "Observation" in types
    asked = c.get("/fhir/Patient/pa/$everything?_type=AuditEvent", headers=h).json()
    assert {e["resource"]["resourceType"] for e in asked["entry"]} == {"AuditEvent"}
