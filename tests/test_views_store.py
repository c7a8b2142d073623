"""Stored, versioned SQL on FHIR ViewDefinitions (issue #17, "ViewDefinitions" and
"Operations"): ``[base]/ViewDefinition`` CRUD, versions, history, ETag/If-Match, search,
validation on write, running a stored view by reference (``viewReference``) and at the
instance level (``ViewDefinition/[id]/$run``), and the SMART policy on all of it."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import FHIR_JSON, assert_outcome, expressions, put, shared_client
from httpx import Response
from smart_helpers import TokenMint, smart_client

from fhir_server.jsonio import dumps

BASE = "/fhir/ViewDefinition"
RUN = "/fhir/ViewDefinition/$run"
SYSTEM_RUN = "/fhir/$viewdefinition-run"


def view(**extra: Any) -> dict[str, Any]:
    """A valid ViewDefinition of Patient ids and family names."""
    return {
        "resourceType": "ViewDefinition",
        "name": "patient_names",
        "status": "active",
        "resource": "Patient",
        "select": [
            {
                "column": [
                    {"name": "id", "path": "getResourceKey()", "type": "id"},
                    {"name": "family", "path": "name.family.first()", "type": "string"},
                ]
            }
        ],
        **extra,
    }


def unique_url() -> str:
    return f"http://example.org/views/{uuid.uuid4().hex}"


def post_view(client: TestClient, body: Any, **headers: str) -> Response:
    return client.post(BASE, content=dumps(body), headers={"Content-Type": FHIR_JSON, **headers})


def put_view(client: TestClient, rid: str, body: Any, **headers: str) -> Response:
    return client.put(
        f"{BASE}/{rid}", content=dumps(body), headers={"Content-Type": FHIR_JSON, **headers}
    )


def created(client: TestClient, body: Any, **headers: str) -> dict[str, Any]:
    r = post_view(client, body, **headers)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def run(client: TestClient, body: dict[str, Any], url: str = RUN, **headers: str) -> Response:
    return client.post(url, content=dumps(body), headers={"Content-Type": FHIR_JSON, **headers})


def params(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(items)}


def by_reference(target: str, kind: str = "valueReference") -> dict[str, Any]:
    value: Any = {"reference": target} if kind == "valueReference" else target
    return {"name": "viewReference", kind: value}


def rows(r: Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return json.loads(r.content)  # type: ignore[no-any-return]


def search(client: TestClient, query: str, **headers: str) -> dict[str, Any]:
    r = client.get(f"{BASE}?{query}", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


def ids(bundle: dict[str, Any]) -> list[str]:
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []))


@pytest.fixture(scope="module")
def plain(mongo_url: str) -> Iterator[TestClient]:
    """No authorization; tests use their own ids and urls. Patients p1 (Uno), p2 (Dos)."""
    with shared_client(mongo_url) as client:
        for pid, family in (("p1", "Uno"), ("p2", "Dos")):
            patient = {"resourceType": "Patient", "id": pid, "name": [{"family": family}]}
            assert put(client, patient).status_code == 201
        yield client


# --- CRUD and versions ----------------------------------------------------------------------


def test_create_read_update_delete_and_versions(plain: TestClient) -> None:
    r = post_view(plain, {**view(), "id": "ignored"})
    assert r.status_code == 201, r.text
    first = r.json()
    rid = first["id"]
    assert rid != "ignored"  # http.html#create: the id in the body is ignored
    assert first["meta"]["versionId"] == "1" and "lastUpdated" in first["meta"]
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"] == f"http://testserver{BASE}/{rid}/_history/1"
    assert "last-modified" in r.headers

    read = plain.get(f"{BASE}/{rid}")
    assert read.status_code == 200 and read.json() == first
    assert read.headers["etag"] == 'W/"1"'
    assert plain.get(f"{BASE}/{rid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304

    changed = {**first, "title": "Patient names"}
    r = put_view(plain, rid, changed)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"' and r.json()["meta"]["versionId"] == "2"
    assert r.json()["title"] == "Patient names"
    # an identical PUT makes no new version
    r = put_view(plain, rid, r.json())
    assert r.status_code == 200 and r.headers["etag"] == 'W/"2"'

    old = plain.get(f"{BASE}/{rid}/_history/1")
    assert old.status_code == 200 and "title" not in old.json()
    assert old.json()["meta"]["versionId"] == "1"
    assert_outcome(plain.get(f"{BASE}/{rid}/_history/9"), 404)
    assert_outcome(plain.get(f"{BASE}/{rid}/_history/x"), 400)

    r = plain.delete(f"{BASE}/{rid}")
    assert r.status_code == 200 and r.headers["etag"] == 'W/"3"'
    gone = plain.get(f"{BASE}/{rid}")
    assert_outcome(gone, 410)
    assert gone.headers["etag"] == 'W/"3"'
    assert_outcome(plain.get(f"{BASE}/{rid}/_history/3"), 410)
    assert plain.get(f"{BASE}/{rid}/_history/2").status_code == 200
    # deleting what is already deleted changes nothing
    assert plain.delete(f"{BASE}/{rid}").status_code == 200
    assert plain.delete(f"{BASE}/{rid}", headers={"Prefer": "return=minimal"}).status_code == 204

    history = plain.get(f"{BASE}/{rid}/_history").json()
    assert history["type"] == "history" and history["total"] == 3
    entries = history["entry"]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "POST"]
    assert [e["response"]["status"] for e in entries] == ["204 No Content", "200 OK", "201 Created"]
    assert "resource" not in entries[0]
    page = plain.get(f"{BASE}/{rid}/_history", params={"_count": "2"}).json()
    assert len(page["entry"]) == 2 and page["total"] == 3
    following = next(x["url"] for x in page["link"] if x["relation"] == "next")
    rest = plain.get(following.removeprefix("http://testserver")).json()
    assert [e["response"]["etag"] for e in rest["entry"]] == ['W/"1"']

    # brought back by PUT: 201, version 4
    r = put_view(plain, rid, {**view(), "id": rid})
    assert r.status_code == 201 and r.headers["etag"] == 'W/"4"'


def test_update_as_create_and_ids(plain: TestClient) -> None:
    rid = f"vd-{uuid.uuid4().hex[:8]}"
    r = put_view(plain, rid, {**view(), "id": rid})
    assert r.status_code == 201, r.text
    assert r.headers["location"].endswith(f"{BASE}/{rid}/_history/1")
    issues = assert_outcome(put_view(plain, rid, {**view(), "id": "other"}), 400)
    assert expressions(issues) == ["ViewDefinition.id"]
    assert_outcome(put_view(plain, rid, view()), 400)  # no id
    assert_outcome(plain.get(f"{BASE}/bad_id!"), 400)
    assert_outcome(plain.get(f"{BASE}/never-written"), 404)
    assert_outcome(plain.get(f"{BASE}/never-written/_history"), 404)


def test_if_match(plain: TestClient) -> None:
    """http.html#concurrency: an update or delete on a stale version is 412."""
    rid = created(plain, view())["id"]
    body = {**view(title="t"), "id": rid}
    issues = assert_outcome(put_view(plain, rid, body, **{"If-Match": 'W/"7"'}), 412)
    assert expressions(issues) == ["If-Match"]
    assert put_view(plain, rid, body, **{"If-Match": 'W/"1"'}).status_code == 200
    issues = assert_outcome(
        put_view(plain, rid, view(title="u") | {"id": rid}, **{"If-Match": 'W/"1"'}), 412
    )
    assert_outcome(plain.delete(f"{BASE}/{rid}", headers={"If-Match": 'W/"1"'}), 412)
    assert plain.delete(f"{BASE}/{rid}", headers={"If-Match": 'W/"2"'}).status_code == 200
    assert_outcome(put_view(plain, rid, body, **{"If-Match": "nonsense"}), 400)


def test_prefer_and_other_methods(plain: TestClient) -> None:
    r = post_view(plain, view(), Prefer="return=minimal")
    assert r.status_code == 201 and not r.content and r.headers["etag"] == 'W/"1"'
    r = post_view(plain, view(), Prefer="return=OperationOutcome")
    assert r.status_code == 201 and r.json()["resourceType"] == "OperationOutcome"
    rid = r.headers["location"].split("/")[-3]
    assert_outcome(plain.patch(f"{BASE}/{rid}", content=b"[]"), 405)
    for method in ("PUT", "DELETE", "PATCH"):
        r = plain.request(method, BASE)
        assert_outcome(r, 405)
    assert_outcome(plain.get(f"{BASE}/{rid}/$run"), 405)
    assert_outcome(post_view(plain, view(), **{"If-None-Exist": "url=x"}), 400)


# --- validation -------------------------------------------------------------------------------


def _broken(change: Any) -> dict[str, Any]:
    body = view()
    change(body)
    return body


def _column(body: dict[str, Any], key: str, value: Any) -> None:
    body["select"][0]["column"][1][key] = value


INVALID = [
    (lambda b: b.pop("status"), "ViewDefinition.status"),
    (lambda b: b.update(status="published"), "ViewDefinition.status"),
    (lambda b: b.update(status=None), "ViewDefinition.status"),
    (lambda b: b.pop("resource"), "ViewDefinition.resource"),
    (lambda b: b.update(resource="Unicorn"), "ViewDefinition.resource"),
    (lambda b: b.update(select=[]), "ViewDefinition.select"),
    (lambda b: b.pop("select"), "ViewDefinition.select"),
    (lambda b: _column(b, "name", "2nd name"), "ViewDefinition.select[0].column[1].name"),
    (lambda b: _column(b, "path", "name.("), "ViewDefinition.select[0].column[1].path"),
    (lambda b: _column(b, "name", "id"), "ViewDefinition.select[0].column[1].name"),
    (lambda b: b.update(resourceType="Basic"), "ViewDefinition.resourceType"),
    (lambda b: b.update(url=7), "ViewDefinition.url"),
    (lambda b: b.update(url="http://x.org/a b"), "ViewDefinition.url"),
    (lambda b: b.update(version=2), "ViewDefinition.version"),
    (lambda b: b.update(title=""), "ViewDefinition.title"),
    (lambda b: b.update(name="bad name"), "ViewDefinition.name"),
    (lambda b: b.update(where=[{"path": "active = "}]), "ViewDefinition.where[0].path"),
    (lambda b: b.update(selects=[]), "ViewDefinition.selects"),  # a misspelling
    (lambda b: b.update(experimental="no"), "ViewDefinition.experimental"),
    (lambda b: b.update(meta=[]), "ViewDefinition.meta"),
]


@pytest.mark.parametrize(("change", "expression"), INVALID)
def test_invalid_views_are_400_at_the_fault(
    plain: TestClient, change: Any, expression: str
) -> None:
    """SQL on FHIR StructureDefinition ViewDefinition: resource 1..1, status 1..1
    (publication-status, required binding), select 1..*, the sql-name invariant on names,
    and valid FHIRPath: a write that breaks them is not stored."""
    body = _broken(change)
    issues = assert_outcome(post_view(plain, body), 400)
    assert expressions(issues) == [expression], issues
    rid = f"bad-{uuid.uuid4().hex[:8]}"
    issues = assert_outcome(put_view(plain, rid, {**body, "id": rid}), 400)
    assert expressions(issues) == [expression], issues
    assert_outcome(plain.get(f"{BASE}/{rid}"), 404)  # nothing was stored


def test_not_json_or_not_an_object(plain: TestClient) -> None:
    r = plain.post(BASE, content=b"[1]", headers={"Content-Type": FHIR_JSON})
    assert_outcome(r, 400)
    r = plain.post(BASE, content=b"{", headers={"Content-Type": FHIR_JSON})
    assert_outcome(r, 400)
    r = plain.post(BASE, content=b"{}", headers={"Content-Type": "text/plain"})
    assert_outcome(r, 415)


def test_canonical_url_and_version_are_unique(plain: TestClient) -> None:
    """A canonical ``url|version`` names at most one live view (docs/views.md)."""
    url = unique_url()
    one = created(plain, view(url=url, version="1"))
    issues = assert_outcome(post_view(plain, view(url=url, version="1")), 409)
    assert expressions(issues) == ["ViewDefinition.url"]
    two = created(plain, view(url=url, version="2"))
    # changing the other one to the taken canonical is refused too
    assert_outcome(put_view(plain, two["id"], {**two, "version": "1"}), 409)
    created(plain, view(url=url))  # no version: its own canonical
    assert_outcome(post_view(plain, view(url=url)), 409)
    # a deleted view frees its canonical
    assert plain.delete(f"{BASE}/{one['id']}").status_code == 200
    created(plain, view(url=url, version="1"))


# --- search -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalogue(plain: TestClient) -> dict[str, str]:
    """Views with a common url prefix, for searches: key -> id."""
    tag = uuid.uuid4().hex[:6]
    bodies = {
        "a": view(name=f"Alpha_{tag}", url=f"http://s.org/{tag}/a", status="active"),
        "a2": view(name=f"Alpha_{tag}", url=f"http://s.org/{tag}/a", version="2", status="draft"),
        "b": view(name=f"Beta_{tag}", url=f"http://s.org/{tag}/b", status="retired")
        | {"resource": "Observation", "select": [{"column": [{"name": "id", "path": "id"}]}]},
        "c": view(name=f"Alphabet_{tag}", status="draft"),
    }
    found = {key: created(plain, body)["id"] for key, body in bodies.items()}
    found["tag"] = tag
    return found


def test_search_by_each_parameter(plain: TestClient, catalogue: dict[str, str]) -> None:
    tag = catalogue["tag"]
    a, a2, b, c = (catalogue[k] for k in ("a", "a2", "b", "c"))
    # name: string, case-insensitive from the start (search.html#string)
    assert ids(search(plain, f"name=alpha_{tag}")) == sorted([a, a2])
    assert ids(search(plain, f"name=ALPHA_{tag}")) == sorted([a, a2])
    assert ids(search(plain, f"name=Alpha_{tag},Alphabet_{tag}")) == sorted([a, a2, c])
    assert ids(search(plain, f"name:exact=Alpha_{tag}")) == sorted([a, a2])
    assert ids(search(plain, f"name:exact=alpha_{tag}")) == []
    assert ids(search(plain, f"name:contains=bet_{tag}")) == [c]
    assert ids(search(plain, f"url=http://s.org/{tag}/a")) == sorted([a, a2])
    assert ids(search(plain, f"url=http://s.org/{tag}/a&version=2")) == [a2]
    assert ids(search(plain, f"url=http://s.org/{tag}/b&status=retired")) == [b]
    assert ids(search(plain, f"name=Beta_{tag}&status=active")) == []
    assert ids(search(plain, f"resource=Observation&name=Beta_{tag}")) == [b]
    assert ids(search(plain, f"_id={a},{b}")) == sorted([a, b])
    # each parameter's values ORed, parameters ANDed
    assert ids(
        search(plain, f"status=draft,retired&url=http://s.org/{tag}/a,http://s.org/{tag}/b")
    ) == sorted([a2, b])
    assert ids(search(plain, f"name=Alpha_{tag}&name=Beta_{tag}")) == []
    bundle = search(plain, f"name=Alpha_{tag}")
    assert bundle["total"] == 2
    assert all(e["search"]["mode"] == "match" for e in bundle["entry"])
    assert bundle["entry"][0]["fullUrl"].startswith("http://testserver/fhir/ViewDefinition/")
    assert search(plain, "name=")["total"] >= 4  # empty parameters are ignored


def test_search_paging_and_count(plain: TestClient, catalogue: dict[str, str]) -> None:
    tag = catalogue["tag"]
    query = f"name=Alpha_{tag},Alphabet_{tag}&_count=1"
    seen: list[str] = []
    bundle = search(plain, query)
    total = bundle["total"]
    assert total == 3
    while True:
        assert len(bundle.get("entry", [])) <= 1
        seen += ids(bundle)
        following = [x["url"] for x in bundle["link"] if x["relation"] == "next"]
        if not following:
            break
        bundle = plain.get(following[0].removeprefix("http://testserver")).json()
        assert bundle["total"] == total
    assert len(seen) == total and len(set(seen)) == total
    assert {catalogue["a"], catalogue["a2"], catalogue["c"]} <= set(seen)
    counted = search(plain, f"name=Alpha_{tag}&_summary=count")
    assert counted["total"] == 2 and "entry" not in counted
    assert search(plain, f"name=Alpha_{tag}&_count=0")["total"] == 2


@pytest.mark.parametrize("query", ["nope=1", "name:missing=x", "status:not=active", "_count=x"])
def test_search_errors(plain: TestClient, query: str) -> None:
    issues = assert_outcome(plain.get(f"{BASE}?{query}"), 400)
    assert expressions(issues) == [query.split("=")[0]]


# --- running by reference ---------------------------------------------------------------------


def test_run_by_reference(plain: TestClient) -> None:
    url = unique_url()
    first = created(plain, view(url=url, version="1"))
    rid = first["id"]
    expected = [{"id": "p1", "family": "Uno"}, {"id": "p2", "family": "Dos"}]
    assert rows(run(plain, params(by_reference(f"ViewDefinition/{rid}")))) == expected
    assert rows(run(plain, params(by_reference(f"ViewDefinition/{rid}")), SYSTEM_RUN)) == expected
    absolute = f"http://testserver/fhir/ViewDefinition/{rid}"
    assert rows(run(plain, params(by_reference(absolute)))) == expected
    # a new version with only the id column: versioned references keep the old one
    slim = {**first, "select": [{"column": [{"name": "id", "path": "getResourceKey()"}]}]}
    assert put_view(plain, rid, slim).status_code == 200
    assert rows(run(plain, params(by_reference(f"ViewDefinition/{rid}")))) == [
        {"id": "p1"},
        {"id": "p2"},
    ]
    versioned = by_reference(f"ViewDefinition/{rid}/_history/1")
    assert rows(run(plain, params(versioned))) == expected
    # canonical url|version (valueCanonical, valueUri), and the url alone: the latest
    assert rows(run(plain, params(by_reference(f"{url}|1", "valueCanonical")))) == [
        {"id": "p1"},
        {"id": "p2"},
    ]
    later = created(plain, view(url=url, version="2"))
    assert rows(run(plain, params(by_reference(url, "valueUri")))) == expected
    assert later["version"] == "2"
    # the other parameters apply as to an inline view
    body = params(by_reference(f"ViewDefinition/{rid}"), {"name": "_format", "valueCode": "csv"})
    r = run(plain, body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert list(csv.reader(io.StringIO(r.text))) == [["id"], ["p1"], ["p2"]]


@pytest.mark.parametrize(
    ("reference", "status"),
    [
        ("ViewDefinition/missing", 404),
        ("ViewDefinition/missing/_history/1", 404),
        ("http://example.org/views/none|9", 404),
        ("ViewDefinition/bad id", 400),
        ("ViewDefinition/x/_history/one", 400),
    ],
)
def test_unknown_references(plain: TestClient, reference: str, status: int) -> None:
    issues = assert_outcome(run(plain, params(by_reference(reference))), status)
    assert expressions(issues) == ["Parameters.parameter[0]"]


def test_deleted_view_is_not_found_by_reference(plain: TestClient) -> None:
    url = unique_url()
    rid = created(plain, view(url=url))["id"]
    assert plain.delete(f"{BASE}/{rid}").status_code == 200
    assert_outcome(run(plain, params(by_reference(f"ViewDefinition/{rid}"))), 404)
    assert_outcome(run(plain, params(by_reference(url, "valueCanonical"))), 404)
    # its versions stay readable by a versioned reference
    assert rows(run(plain, params(by_reference(f"ViewDefinition/{rid}/_history/1"))))


def test_exactly_one_view(plain: TestClient) -> None:
    """ViewDefinitionRun: viewResource and viewReference are alternatives; one is needed
    at the system and type levels."""
    rid = created(plain, view())["id"]
    inline = {"name": "viewResource", "resource": view()}
    reference = by_reference(f"ViewDefinition/{rid}")
    for body, where in (
        (params(inline, reference), "Parameters.parameter[1]"),
        (params(reference, inline), "Parameters.parameter[1]"),
        (params(reference, reference), "Parameters.parameter[1]"),
        (params(), "Parameters"),
        (
            params({"name": "viewReference", "valueReference": {"display": "x"}}),
            "Parameters.parameter[0]",
        ),
    ):
        issues = assert_outcome(run(plain, body), 400)
        assert expressions(issues) == [where]


def test_instance_level_run(plain: TestClient) -> None:
    rid = created(plain, view())["id"]
    url = f"{BASE}/{rid}/$run"
    assert rows(run(plain, params(), url)) == [
        {"id": "p1", "family": "Uno"},
        {"id": "p2", "family": "Dos"},
    ]
    r = plain.post(url)  # no body: no parameters
    assert rows(r) == [{"id": "p1", "family": "Uno"}, {"id": "p2", "family": "Dos"}]
    r = plain.post(url, params={"_format": "ndjson", "_limit": "1"})
    assert r.status_code == 200 and r.text.strip() == '{"id":"p1","family":"Uno"}'
    for extra in (
        {"name": "viewResource", "resource": view()},
        by_reference(f"ViewDefinition/{rid}"),
    ):
        issues = assert_outcome(run(plain, params(extra), url), 400)
        assert expressions(issues) == ["Parameters.parameter[0]"]
    assert_outcome(run(plain, params(), f"{BASE}/missing/$run"), 404)
    assert plain.delete(f"{BASE}/{rid}").status_code == 200
    assert_outcome(run(plain, params(), url), 410)


# --- SMART ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smart(mongo_url: str) -> Iterator[tuple[TestClient, TokenMint]]:
    """tests/smart_helpers.py's world (patients pa and pb), plus one stored view."""
    with smart_client(mongo_url) as (client, mint):
        r = put_view(
            client,
            "stored",
            {**view(url="http://s.org/stored"), "id": "stored"},
            **mint.headers("system/*.cruds"),
        )
        assert r.status_code == 201, r.text
        yield client, mint


def _h(mint: TokenMint, scope: str, **options: Any) -> dict[str, str]:
    return mint.headers(scope, **options)


def test_no_token_is_401(smart: tuple[TestClient, TokenMint]) -> None:
    client, _ = smart
    for r in (
        client.get(f"{BASE}/stored"),
        client.get(BASE),
        post_view(client, view()),
        put_view(client, "stored", {**view(), "id": "stored"}),
        client.delete(f"{BASE}/stored"),
        client.get(f"{BASE}/stored/_history"),
        run(client, params(), f"{BASE}/stored/$run"),
    ):
        assert r.status_code == 401, r.text


@pytest.mark.parametrize(
    ("scope", "options", "reads", "writes"),
    [
        ("system/*.cruds", {}, True, True),
        ("system/ViewDefinition.cruds", {}, True, True),
        ("user/ViewDefinition.*", {"fhir_user": "Practitioner/dr"}, True, True),
        ("system/ViewDefinition.rs", {}, True, False),
        ("user/ViewDefinition.read", {"fhir_user": "Practitioner/dr"}, True, False),  # SMART v1
        ("patient/ViewDefinition.rs", {"patient": "pa"}, True, False),
        ("patient/ViewDefinition.cruds", {"patient": "pa"}, True, False),  # never writes
        ("patient/*.read", {"patient": "pa"}, True, False),
        ("patient/ViewDefinition.rs", {}, False, False),  # no patient in context
        ("system/Patient.cruds", {}, False, False),  # another type
        ("system/ViewDefinition.s", {}, False, False),
    ],
)
def test_scopes(
    smart: tuple[TestClient, TokenMint],
    scope: str,
    options: dict[str, Any],
    reads: bool,
    writes: bool,
) -> None:
    """ViewDefinition is shared, definitional data outside the Patient compartment: read
    and search with an r/s scope on it, written only in user or system context."""
    client, mint = smart
    headers = _h(mint, scope, **options)
    read = client.get(f"{BASE}/stored", headers=headers)
    if reads:
        assert read.status_code == 200, read.text
        assert client.get(f"{BASE}/stored/_history/1", headers=headers).status_code == 200
        assert client.get(f"{BASE}/stored/_history", headers=headers).status_code == 200
        assert "stored" in ids(search(client, "name=patient", **headers))
    else:
        assert_outcome(read, 403)
        assert_outcome(client.get(f"{BASE}/stored/_history/1", headers=headers), 403)
        assert_outcome(client.get(f"{BASE}/stored/_history", headers=headers), 403)
    r = post_view(client, view(), **headers)
    rid = f"w-{uuid.uuid4().hex[:8]}"
    if writes:
        assert r.status_code == 201, r.text
        made = r.json()["id"]
        assert put_view(client, rid, {**view(), "id": rid}, **headers).status_code == 201
        assert client.delete(f"{BASE}/{made}", headers=headers).status_code == 200
    else:
        assert_outcome(r, 403)
        assert_outcome(put_view(client, rid, {**view(), "id": rid}, **headers), 403)
        assert_outcome(put_view(client, "stored", {**view(), "id": "stored"}, **headers), 403)
        assert_outcome(client.delete(f"{BASE}/stored", headers=headers), 403)
        assert client.get(f"{BASE}/{rid}", headers=_h(mint, "system/*.rs")).status_code == 404


def test_search_needs_a_search_scope(smart: tuple[TestClient, TokenMint]) -> None:
    client, mint = smart
    assert_outcome(client.get(f"{BASE}?name=x", headers=_h(mint, "system/ViewDefinition.r")), 403)
    assert_outcome(client.get(BASE, headers=_h(mint, "system/Patient.rs")), 403)


def test_an_invalid_write_with_no_scope_is_403_first(smart: tuple[TestClient, TokenMint]) -> None:
    """The scope is checked before the body: a token that may not write learns nothing
    from validation."""
    client, mint = smart
    r = post_view(
        client, {"resourceType": "ViewDefinition"}, **_h(mint, "system/ViewDefinition.rs")
    )
    assert_outcome(r, 403)


def test_write_only_token_gets_no_content(smart: tuple[TestClient, TokenMint]) -> None:
    """A token that may create but not read learns only the new version's id (as for R4
    types: Policy.sees)."""
    client, mint = smart
    r = post_view(client, view(), **_h(mint, "system/ViewDefinition.c"))
    assert r.status_code == 201 and not r.content
    assert r.headers["location"]


@pytest.mark.parametrize(
    ("scope", "options", "status"),
    [
        ("system/*.rs", {}, 200),
        ("system/ViewDefinition.r system/Patient.rs", {}, 200),
        ("system/Patient.rs", {}, 403),  # may not read ViewDefinitions
        ("system/ViewDefinition.rs", {}, 403),  # may not read and search Patients
        ("patient/Patient.rs patient/ViewDefinition.r", {"patient": "pa"}, 200),
    ],
)
def test_running_a_stored_view_needs_read_on_it_and_on_the_data(
    smart: tuple[TestClient, TokenMint], scope: str, options: dict[str, Any], status: int
) -> None:
    client, mint = smart
    headers = _h(mint, scope, **options)
    for r in (
        run(client, params(by_reference("ViewDefinition/stored")), **headers),
        run(
            client,
            params(by_reference("http://s.org/stored", "valueCanonical")),
            SYSTEM_RUN,
            **headers,
        ),
        run(client, params(), f"{BASE}/stored/$run", **headers),
    ):
        if status == 200:
            found = rows(r)
            expected = ["pa"] if "patient" in options else ["pa", "pb"]
            assert [row["id"] for row in found] == expected
        else:
            assert_outcome(r, status)


def test_a_reference_the_token_may_not_read_is_403_not_404(
    smart: tuple[TestClient, TokenMint],
) -> None:
    """Without read access to ViewDefinitions the answer is the same for a view that
    exists and one that does not: no existence oracle."""
    client, mint = smart
    headers = _h(mint, "system/Patient.rs")
    for target in ("ViewDefinition/stored", "ViewDefinition/missing"):
        assert_outcome(run(client, params(by_reference(target)), **headers), 403)
    for target in ("stored", "missing"):
        assert_outcome(run(client, params(), f"{BASE}/{target}/$run", **headers), 403)


# --- capabilities -----------------------------------------------------------------------------


def test_capability_statement_and_openapi_declare_it(plain: TestClient) -> None:
    cs = plain.get("/fhir/metadata").json()
    rest = cs["rest"][0]
    assert "ViewDefinition" not in {r["type"] for r in rest["resource"]}  # not an R4 type
    declared = _additional(rest)
    assert declared["type"] == "ViewDefinition"
    assert {
        "read",
        "vread",
        "update",
        "delete",
        "create",
        "search-type",
        "history-instance",
    } <= set(declared["interaction"])
    assert set(declared["searchParam"]) == {
        "name|string",
        "url|uri",
        "version|token",
        "status|token",
        "resource|token",
        "_id|token",
    }
    assert set(declared["operation"]) == {
        "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-run",
        "http://sql-on-fhir.org/OperationDefinition/$run",
        "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-export",
    }
    doc = plain.get("/fhir/openapi.json").json()
    paths = doc["paths"]
    assert {"get", "post"} <= set(paths["/ViewDefinition"])
    assert {"get", "put", "delete"} <= set(paths["/ViewDefinition/{id}"])
    assert "get" in paths["/ViewDefinition/{id}/_history"]
    assert "get" in paths["/ViewDefinition/{id}/_history/{vid}"]
    assert "post" in paths["/ViewDefinition/{id}/$run"]
    assert "post" in paths["/ViewDefinition/$run"] and "post" in paths["/$viewdefinition-run"]
    for path in (
        "/$viewdefinition-export",
        "/ViewDefinition/$viewdefinition-export",
        "/ViewDefinition/$export",
        "/ViewDefinition/{id}/$viewdefinition-export",
        "/ViewDefinition/{id}/$export",
    ):
        assert "202" in paths[path]["post"]["responses"], path


def _additional(rest: dict[str, Any]) -> dict[str, Any]:
    """The ViewDefinition declaration (a rest extension: see docs/views.md)."""
    found = [e for e in rest.get("extension", []) if e["url"].endswith("additional-resource")]
    assert len(found) == 1, rest.get("extension")
    out: dict[str, Any] = {"interaction": [], "searchParam": [], "operation": []}
    for part in found[0]["extension"]:
        value = next(v for k, v in part.items() if k.startswith("value"))
        if part["url"] in out:
            out[part["url"]].append(value)
        else:
            out[part["url"]] = value
    return out


def test_granular_scopes_grant_nothing_here(smart: tuple[TestClient, TokenMint]) -> None:
    """A scope with search parameters on ViewDefinition (which the R4 search compiler
    does not know) grants nothing, as the policy does for parameters that do not apply
    to the type: fail closed."""
    client, mint = smart
    headers = _h(mint, "system/ViewDefinition.rs?status=active")
    assert_outcome(client.get(f"{BASE}/stored", headers=headers), 403)
    assert_outcome(client.get(f"{BASE}?status=active", headers=headers), 403)


@pytest.mark.parametrize("query", ["_summary=true", "_elements=name", "_summary=text"])
def test_subsetting_is_not_offered(plain: TestClient, query: str) -> None:
    rid = created(plain, view())["id"]
    issues = assert_outcome(plain.get(f"{BASE}/{rid}?{query}"), 400)
    assert expressions(issues) == [query.split("=")[0]]
    assert_outcome(plain.get(f"{BASE}?{query}"), 400)


def test_concurrent_updates_keep_versions_gapless(plain: TestClient) -> None:
    """Each write is one transaction with a compare-and-set on the version: concurrent
    PUTs all land, one version each, none lost."""
    from concurrent.futures import ThreadPoolExecutor

    rid = f"busy-{uuid.uuid4().hex[:8]}"
    assert put_view(plain, rid, {**view(), "id": rid}).status_code == 201

    def write(i: int) -> int:
        return put_view(plain, rid, {**view(title=f"t{i}"), "id": rid}).status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(write, range(12)))
    assert statuses == [200] * 12
    history = plain.get(f"{BASE}/{rid}/_history", params={"_count": "50"}).json()
    assert history["total"] == 13
    versions = sorted(int(e["response"]["etag"][3:-1]) for e in history["entry"])
    assert versions == list(range(1, 14))
    assert plain.get(f"{BASE}/{rid}").headers["etag"] == 'W/"13"'


def test_post_search_and_type_history(plain: TestClient, catalogue: dict[str, str]) -> None:
    tag = catalogue["tag"]
    r = plain.post(
        f"{BASE}/_search",
        content=f"name=Alpha_{tag}&status=draft".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    assert ids(r.json()) == [catalogue["a2"]]
    r = plain.post(f"{BASE}/_search", content=b"{}", headers={"Content-Type": FHIR_JSON})
    assert_outcome(r, 415)
    issues = assert_outcome(plain.get(f"{BASE}/_history"), 400)
    assert expressions(issues) == ["_history"]


def test_a_stored_view_failing_on_the_data_is_422_at_its_element(plain: TestClient) -> None:
    """ViewDefinitionRun "Error Handling": a view that cannot be processed is 422; the
    expression names the stored view's element (its own root, not the request's)."""
    two = {"name": "two", "path": "id | name.family"}  # two values, no collection: true
    body = view(select=[{"column": [two]}])
    rid = created(plain, body)["id"]
    for r in (
        run(plain, params(by_reference(f"ViewDefinition/{rid}"))),
        run(plain, params(), f"{BASE}/{rid}/$run"),
    ):
        issues = assert_outcome(r, 422)
        assert expressions(issues) == ["ViewDefinition.select[0].column[0].path"]
        assert "Patient/p1" in issues[0]["diagnostics"]
