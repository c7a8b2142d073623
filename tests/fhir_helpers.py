"""Small helpers shared by the HTTP-level tests (tests/test_crud.py and friends).

Everything here talks to the server through the HTTP interface only; the one
exceptions are ``stored_document_count``, ``database_snapshot`` and
``stored_raw_containing``, used where a test must prove that nothing (at all, or from
one request) was written to the database.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response
from pymongo import MongoClient

from fhir_server.app import create_app
from fhir_server.config import Settings

BASE = "http://testserver/fhir"
FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
SUBSETTED_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"


# --- resources -------------------------------------------------------------------------


def patient(**extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "active": True,
        "name": [{"family": "Núñez", "given": ["José"]}],
        "gender": "male",
        "birthDate": "1980-02-29",
    }
    resource.update(extra)
    return resource


def observation(**extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}], "text": "Glucose"},
    }
    resource.update(extra)
    return resource


def ident(system: str | None, value: str) -> dict[str, str]:
    return {"system": system, "value": value} if system else {"value": value}


# --- requests --------------------------------------------------------------------------


def post(client: TestClient, resource: dict[str, Any], **headers: str) -> Response:
    return client.post(
        f"/fhir/{resource['resourceType']}",
        content=json.dumps(resource),
        headers={"Content-Type": FHIR_JSON, **headers},
    )


def put(
    client: TestClient, resource: dict[str, Any], rid: str | None = None, **headers: str
) -> Response:
    rid = rid or resource["id"]
    return client.put(
        f"/fhir/{resource['resourceType']}/{rid}",
        content=json.dumps(resource),
        headers={"Content-Type": FHIR_JSON, **headers},
    )


def patch(client: TestClient, url: str, ops: Any, **headers: str) -> Response:
    return client.patch(
        url, content=json.dumps(ops), headers={"Content-Type": JSON_PATCH, **headers}
    )


def create(client: TestClient, resource: dict[str, Any]) -> dict[str, Any]:
    """POST and return the created resource (asserting 201)."""
    r = post(client, resource)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def create_with_id(client: TestClient, resource: dict[str, Any], rid: str) -> dict[str, Any]:
    """Update-as-create with a client-chosen id (asserting 201)."""
    r = put(client, {**resource, "id": rid})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


# --- responses -------------------------------------------------------------------------


def assert_outcome(r: Response, status: int | tuple[int, ...]) -> list[dict[str, Any]]:
    """The response has one of the statuses and a FHIR JSON OperationOutcome body with
    at least one error issue; returns its issues."""
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text)
    assert r.headers["content-type"].startswith(FHIR_JSON), r.headers
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    issues = body["issue"]
    assert issues, body
    if r.status_code >= 400:
        assert any(i["severity"] in ("error", "fatal") for i in issues), body
    return issues  # type: ignore[no-any-return]


def expressions(issues: list[dict[str, Any]]) -> list[str]:
    return [e for i in issues for e in i.get("expression", [])]


def diagnostics(issues: list[dict[str, Any]]) -> str:
    return " ".join(i.get("diagnostics", "") + " " + str(i.get("details", "")) for i in issues)


def has_subsetted_tag(resource: dict[str, Any]) -> bool:
    tags = resource.get("meta", {}).get("tag", [])
    return any(t.get("code") == "SUBSETTED" and t.get("system") == SUBSETTED_SYSTEM for t in tags)


def relative(url: str) -> str:
    """A Bundle link (absolute, on the test base) as a path the TestClient can GET."""
    assert url.startswith(BASE), url
    return "/fhir" + url[len(BASE) :]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    for item in bundle.get("link", []):
        if item["relation"] == relation:
            return item["url"]  # type: ignore[no-any-return]
    return None


def all_pages(client: TestClient, url: str, **params: str) -> list[dict[str, Any]]:
    """Every page of a history listing, following ``next`` links to the end."""
    pages = []
    r = client.get(url, params=params) if params else client.get(url)  # {} drops ?query
    while True:
        assert r.status_code == 200, r.text
        page = r.json()
        pages.append(page)
        nxt = link(page, "next")
        if nxt is None:
            return pages
        assert len(pages) < 1000, "next links never end"
        r = client.get(relative(nxt))


def entry_versions(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    """(fullUrl, etag) of each entry: what identifies one version in a history bundle."""
    return [(e["fullUrl"], e["response"]["etag"]) for e in bundle.get("entry", [])]


# --- other servers and the database ----------------------------------------------------


@contextlib.contextmanager
def app_client(settings: Settings, **overrides: Any) -> Iterator[TestClient]:
    """A client on an app with changed settings and its own database, dropped after."""
    custom = settings.model_copy(update={"database": f"test_{uuid.uuid4().hex[:12]}", **overrides})
    try:
        with TestClient(create_app(custom), base_url="http://testserver") as c:
            yield c
    finally:
        mongo: MongoClient[dict[str, Any]] = MongoClient(custom.mongo_url)
        with mongo:
            mongo.drop_database(custom.database)


def shipped_resources() -> set[str]:
    """``Type/id`` of the conformance resources the app installs at start-up
    (fhir_server/service/shipped.py): stored resources, so in the system history."""
    import profiles
    from fhir_server.workflows import operations

    return {f"StructureDefinition/{d['id']}" for d in profiles.definitions()} | {
        f"OperationDefinition/{d['id']}" for ops in operations() for d in ops.definitions()
    }


# Documents the app wrote into a test database at start-up (the conformance resources
# it ships: fhir_server/service/shipped.py), recorded by the ``client`` fixture.
AT_START: dict[str, int] = {}
# The audit trail records every request, refused ones included, a quarter second later,
# or stages its facts while the server is busy (docs/audit.md): "nothing was stored" is
# about the data, so these helpers leave both out.
AUDIT = ("AuditEvent", "audit_staging")


def _data_collections(db: Any) -> list[str]:
    return [name for name in db.list_collection_names() if name not in AUDIT]


def raw_document_count(settings: Settings) -> int:
    """Documents in every collection of this test's database."""
    mongo: MongoClient[dict[str, Any]] = MongoClient(settings.mongo_url)
    with mongo:
        db = mongo[settings.database]
        return sum(db[name].count_documents({}) for name in _data_collections(db))


def stored_document_count(settings: Settings) -> int:
    """Documents in every collection of this test's database beyond those the app wrote
    at start-up: 0 proves that no request stored anything, whatever the storage layout."""
    return raw_document_count(settings) - AT_START.get(settings.database, 0)


# --- search ----------------------------------------------------------------------------

Params = Any  # a dict, or a list of (name, value) pairs to repeat a name


def search(client: TestClient, path: str, params: Params = (), **headers: str) -> dict[str, Any]:
    """GET a search (``path`` like "Patient" or "Patient/p1/Observation"), asserting a
    200 searchset Bundle; returns it."""
    r = client.get(f"/fhir/{path}".rstrip("/"), params=params or None, headers=headers)
    assert r.status_code == 200, (path, params, r.status_code, r.text)
    body = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset", body
    return body  # type: ignore[no-any-return]


def entries(bundle: dict[str, Any], mode: str | None = "match") -> list[dict[str, Any]]:
    """The entries of one search mode (all entries if mode is None)."""
    return [e for e in bundle.get("entry", []) if mode is None or e["search"]["mode"] == mode]


def keys(bundle: dict[str, Any], mode: str | None = "match") -> list[str]:
    """The "Type/id" of the entries of one search mode, in bundle order."""
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries(bundle, mode)]


def ids(bundle: dict[str, Any], mode: str | None = "match") -> list[str]:
    """Resource ids of the entries of one search mode, in bundle order."""
    return [e["resource"]["id"] for e in entries(bundle, mode)]


def found(client: TestClient, path: str, params: Params = (), **headers: str) -> set[str]:
    """The ids a search matches (every page), as a set; asserts no id repeats."""
    bundle = search(client, path, params, **headers)
    got = ids(bundle)
    while (nxt := link(bundle, "next")) is not None:
        r = client.get(relative(nxt), headers=headers)
        assert r.status_code == 200, r.text
        bundle = r.json()
        got += ids(bundle)
        assert len(got) < 10_000, "next links never end"
    assert len(got) == len(set(got)), f"repeated matches: {got}"
    return set(got)


@contextlib.contextmanager
def shared_client(mongo_url: str, **overrides: Any) -> Iterator[TestClient]:
    """A client on its own database (dropped after), for a module-scoped fixture whose
    seeded resources several read-only tests share."""
    with app_client(Settings(mongo_url=mongo_url, auth_enabled=False), **overrides) as c:
        yield c


# --- transaction and batch bundles ---------------------------------------------------


def urn() -> str:
    """A fresh urn:uuid: fullUrl for an entry the server will assign an id to."""
    return f"urn:uuid:{uuid.uuid4()}"


def entry(
    method: str,
    url: str,
    resource: dict[str, Any] | None = None,
    full_url: str | None = None,
    **request: str,
) -> dict[str, Any]:
    """One transaction/batch entry; ``request`` holds ifMatch, ifNoneExist, ..."""
    out: dict[str, Any] = {}
    if full_url is not None:
        out["fullUrl"] = full_url
    if resource is not None:
        out["resource"] = resource
    out["request"] = {"method": method, "url": url, **request}
    return out


def patch_request(ops: Any) -> dict[str, Any]:
    """Keyword arguments of a JSON Patch request: ``client.patch(url, **patch_request(ops))``."""
    return {"content": json.dumps(ops), "headers": {"Content-Type": JSON_PATCH}}


def binary_patch(ops: Any) -> dict[str, Any]:
    """A JSON Patch as a bundle entry carries it: a Binary, base64 (http.html#transaction)."""
    data = base64.b64encode(json.dumps(ops).encode()).decode()
    return {"resourceType": "Binary", "contentType": JSON_PATCH, "data": data}


def post_bundle(
    client: TestClient, entries: list[dict[str, Any]], kind: str = "transaction", **headers: str
) -> Response:
    """POST [base] with a Bundle of ``kind`` (transaction or batch)."""
    body = {"resourceType": "Bundle", "type": kind, "entry": entries}
    return client.post(
        "/fhir", content=json.dumps(body), headers={"Content-Type": FHIR_JSON, **headers}
    )


def bundle_response(r: Response, kind: str = "transaction-response") -> list[dict[str, Any]]:
    """Asserts a 200 ``kind`` Bundle; returns its entries."""
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.headers["content-type"].startswith(FHIR_JSON), r.headers
    body = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == kind, body
    return body.get("entry", [])  # type: ignore[no-any-return]


def location_key(location: str) -> tuple[str, str, str]:
    """(type, id, version) of a response location "[base/]Type/id/_history/v"."""
    parts = location.rstrip("/").split("/")
    assert parts[-2] == "_history", location
    return parts[-4], parts[-3], parts[-1]


def database_snapshot(settings: Settings) -> dict[str, dict[Any, Any]]:
    """Every document of every non-empty collection of this test's database, by
    collection and _id: two equal snapshots prove that nothing was written in between
    (an empty collection, e.g. one created with its indexes before a write, holds no
    data)."""
    mongo: MongoClient[dict[str, Any]] = MongoClient(settings.mongo_url)
    with mongo:
        db = mongo[settings.database]
        snapshot = {name: {d["_id"]: d for d in db[name].find()} for name in _data_collections(db)}
    return {name: docs for name, docs in snapshot.items() if docs}


def stored_raw_containing(settings: Settings, marker: str) -> list[str]:
    """``collection/_id`` of every stored version (current or history) whose resource
    JSON contains ``marker``."""
    needle = marker.encode()
    mongo: MongoClient[dict[str, Any]] = MongoClient(settings.mongo_url)
    found = []
    with mongo:
        db = mongo[settings.database]
        for name in _data_collections(db):
            for d in db[name].find({}, {"raw": 1}):
                raw = d.get("raw")
                if isinstance(raw, bytes) and needle in raw:
                    found.append(f"{name}/{d['_id']}")
    return found


BEST_PRACTICE = ("dom-6:", "con-3:")  # the best-practice invariants $validate warns of


def without_best_practice(issues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issues but the best-practice warnings (dom-6: no narrative, con-3), which
    $validate reports as the HL7 validator does; tests about other rules leave them out."""
    return [i for i in issues if not str(i.get("diagnostics", "")).startswith(BEST_PRACTICE)]


def constraint_profile(
    url: str, rtype: str, elements: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A differential-only constraint StructureDefinition on the base type ``rtype``
    (elements without an ``id`` get their path as id); ``extra`` overrides any key."""
    return {
        "resourceType": "StructureDefinition",
        "url": url,
        "name": url.rsplit("/", 1)[-1].replace("-", ""),
        "status": "active",
        "kind": "resource",
        "abstract": False,
        "type": rtype,
        "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
        "derivation": "constraint",
        "differential": {"element": [{"id": e["path"], **e} for e in elements]},
        **extra,
    }


def validation_issues(client: Any, resource: dict[str, Any]) -> list[dict[str, Any]]:
    """POST [type]/$validate with ``resource``: every issue of the 200 OperationOutcome."""
    r = client.post(
        f"/fhir/{resource['resourceType']}/$validate",
        content=json.dumps(resource),
        headers={"Content-Type": FHIR_JSON},
    )
    assert r.status_code == 200, r.text
    return r.json()["issue"]  # type: ignore[no-any-return]
