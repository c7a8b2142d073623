"""Transactions that fail (http.html#trules: "servers SHALL either accept all actions
and return a 200 OK, along with a response bundle, or reject all resources and return
an HTTP 400 or 500 type response"): one OperationOutcome naming the failing entry, and
nothing written; malformed bundles; size limits; Bundles that are not transactions."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fhir_helpers import (
    FHIR_JSON,
    app_client,
    assert_outcome,
    binary_patch,
    bundle_response,
    create,
    create_with_id,
    database_snapshot,
    diagnostics,
    entry,
    expressions,
    ident,
    observation,
    patient,
    post_bundle,
    shipped_resources,
    stored_raw_containing,
    urn,
)

SYS = "http://hospital.example/mrn"
MARKER = "Rollback-Marker-7f3a"  # in every resource the failing bundles would write
BAD_URL = "urn:uuid:0c9d4a8e-6f0e-4a51-9a55-5b0c1b1f0bad"  # fullUrl of the failing entry


def count(client, path: str = "_history") -> int:
    """Versions in a history; the system's without the definitions the app installs at
    start-up (fhir_helpers.shipped_resources)."""
    r = client.get(f"/fhir/{path}", params={"_summary": "count"})
    assert r.status_code == 200, r.text
    shipped = len(shipped_resources()) if path == "_history" else 0
    return r.json()["total"] - shipped  # type: ignore[no-any-return]


@pytest.fixture
def seeded(client) -> dict[str, Any]:
    """What the failing bundles touch: a patient they update, one they delete, one
    they patch, two sharing an identifier, and one the bad entries target."""
    return {
        "keep": create_with_id(client, patient(), "keep"),
        "gone": create_with_id(client, patient(), "gone"),
        "patched": create_with_id(client, patient(), "patched"),
        "twin1": create(client, patient(identifier=[ident(SYS, "twin")])),
        "twin2": create(client, patient(identifier=[ident(SYS, "twin")])),
        "stale": create_with_id(client, patient(), "stale"),
    }


def marked(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource carrying MARKER, so any stored trace of it can be found."""
    return {**resource, "extension": [{"url": "http://example.org/marker", "valueString": MARKER}]}


def around(bad: dict[str, Any]) -> list[dict[str, Any]]:
    """Valid entries of every kind (create, update, patch, delete, conditional create,
    read), with the bad entry in the middle at index 3."""
    p = urn()
    return [
        entry(
            "POST",
            "Patient",
            marked(patient(identifier=[ident(SYS, "new")])),
            p,
            ifNoneExist=f"identifier={SYS}|new",
        ),
        entry("POST", "Observation", marked(observation(subject={"reference": p})), urn()),
        entry("PUT", "Patient/keep", marked(patient(id="keep", gender="female"))),
        bad,
        entry(
            "PATCH",
            "Patient/patched",
            binary_patch([{"op": "add", "path": "/extension", "value": marked({})["extension"]}]),
        ),
        entry("DELETE", "Patient/gone"),
        entry("GET", "Patient/keep"),
    ]


BAD: dict[str, tuple[Callable[[], dict[str, Any]], int | tuple[int, ...]]] = {
    # failed basic validation (http.html#2.21.0.16 → 400)
    "invalid resource": (
        lambda: entry("POST", "Observation", marked(observation(status="bogus")), BAD_URL),
        400,
    ),
    "If-Match not the current version": (
        lambda: entry(
            "PUT", "Patient/stale", marked(patient(id="stale")), BAD_URL, ifMatch='W/"7"'
        ),
        412,
    ),
    "conditional create matching 2": (
        lambda: entry(
            "POST", "Patient", marked(patient()), BAD_URL, ifNoneExist=f"identifier={SYS}|twin"
        ),
        412,
    ),
    "conditional update matching 2": (
        lambda: entry("PUT", f"Patient?identifier={SYS}|twin", marked(patient()), BAD_URL),
        412,
    ),
    "conditional delete matching 2": (
        lambda: entry("DELETE", f"Patient?identifier={SYS}|twin", full_url=BAD_URL),
        412,
    ),
    "conditional reference matching none": (
        lambda: entry(
            "POST",
            "Observation",
            marked(observation(subject={"reference": "Patient?identifier=http://x|none"})),
            BAD_URL,
        ),
        (400, 404, 409, 412, 422),
    ),
    "conditional reference matching 2": (
        lambda: entry(
            "POST",
            "Observation",
            marked(observation(subject={"reference": f"Patient?identifier={SYS}|twin"})),
            BAD_URL,
        ),
        (400, 409, 412, 422),
    ),
    "PATCH test operation failing": (
        lambda: entry(
            "PATCH",
            "Patient/stale",
            binary_patch([{"op": "test", "path": "/gender", "value": "other"}]),
            BAD_URL,
        ),
        422,
    ),
    "PATCH of an unknown resource": (
        lambda: entry(
            "PATCH",
            "Patient/unknown",
            binary_patch([{"op": "add", "path": "/active", "value": True}]),
            BAD_URL,
        ),
        404,
    ),
    # GET entries are actions of the transaction too: processed after the writes
    # (http.html#trules), and their failure fails the transaction
    "GET of an unknown resource": (lambda: entry("GET", "Patient/unknown"), 404),
    "GET of the resource the transaction deletes": (lambda: entry("GET", "Patient/gone"), 410),
    "GET of an unknown version": (lambda: entry("GET", "Patient/stale/_history/5"), 404),
    "GET search with an unknown parameter": (lambda: entry("GET", "Patient?bogus=1"), 400),
    "conditional reference to the resource the transaction deletes": (
        lambda: entry(
            "POST",
            "Observation",
            marked(observation(subject={"reference": "Patient?_id=gone"})),
            BAD_URL,
        ),
        (400, 404, 409, 412, 422),
    ),
    "DELETE with a stale ifMatch": (
        lambda: entry("DELETE", "Patient/stale", full_url=BAD_URL, ifMatch='W/"2"'),
        412,
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_failing_entry_rolls_back_everything(client, settings, seeded, case):
    make, status = BAD[case]
    before = database_snapshot(settings)
    r = post_bundle(client, around(make()))
    # "For a failed transaction, the server returns a single OperationOutcome instead
    # of a Bundle" (http.html#transaction-response), naming the failing entry.
    issues = assert_outcome(r, status)
    assert any(e.startswith("Bundle.entry[3]") for e in expressions(issues)), issues
    assert "Bundle.entry[3]" in diagnostics(issues), issues
    if r.request.content and BAD_URL.encode() in r.request.content:
        assert BAD_URL in diagnostics(issues), issues
    # Nothing written: every collection (current versions, history, locks) unchanged.
    assert database_snapshot(settings) == before
    assert stored_raw_containing(settings, MARKER) == []
    assert client.get("/fhir/Patient/gone").status_code == 200
    assert client.get("/fhir/Patient/keep").json() == seeded["keep"]


def test_the_same_bundle_without_the_bad_entry_succeeds(client, settings, seeded):
    # the counterpart of the rollback tests: every other entry of around() is valid
    entries = bundle_response(post_bundle(client, around(entry("GET", "Patient/stale"))))
    assert [e["response"]["status"][:3] for e in entries] == [
        "201",
        "201",
        "200",
        "200",
        "200",
        "204",
        "200",
    ]
    assert len(stored_raw_containing(settings, MARKER)) == 8  # 4 current + 4 history


@pytest.mark.parametrize(
    "bundle",
    [
        pytest.param(
            lambda: [
                entry("PUT", "Patient/keep", patient(id="keep")),
                entry("DELETE", "Patient/keep"),
            ],
            id="put+delete",
        ),
        pytest.param(
            lambda: [
                entry("PUT", "Patient/keep", patient(id="keep")),
                entry("PUT", "Patient/keep", patient(id="keep", gender="other")),
            ],
            id="put+put",
        ),
        pytest.param(
            lambda: [
                entry(
                    "PATCH",
                    "Patient/keep",
                    binary_patch([{"op": "add", "path": "/active", "value": False}]),
                ),
                entry("DELETE", "Patient?_id=keep"),
            ],
            id="patch+conditional delete",
        ),
        pytest.param(
            lambda: [
                entry("PUT", "Patient/keep", patient(id="keep")),
                entry("DELETE", "Patient?_id=keep"),
            ],
            id="update+conditional delete resolving to the same",
        ),
        pytest.param(
            lambda: [
                entry("PUT", "Patient?_id=keep", patient()),
                entry(
                    "PATCH",
                    "Patient/keep",
                    binary_patch([{"op": "add", "path": "/active", "value": False}]),
                ),
            ],
            id="conditional update+patch resolving to the same",
        ),
    ],
)
def test_two_entries_on_one_resource(client, settings, seeded, bundle):
    # http.html#trules: "If any resource identities (including resolved identities from
    # conditional update/delete) overlap in steps 1-3, then the transaction SHALL fail."
    before = database_snapshot(settings)
    issues = assert_outcome(post_bundle(client, bundle()), 400)
    assert any(e.startswith("Bundle.entry[") for e in expressions(issues)), issues
    assert database_snapshot(settings) == before


# --- malformed bundles -----------------------------------------------------------------


def raw_post(client, body: Any, **headers: str):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/fhir", content=content, headers={"Content-Type": FHIR_JSON, **headers})


def tx(*entries: Any, kind: str | None = "transaction") -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Bundle", "entry": list(entries)}
    if kind is not None:
        body["type"] = kind
    return body


MALFORMED: dict[str, tuple[Any, str]] = {
    "not a Bundle": (patient(), "resourceType"),
    "Bundle.type missing": (tx(entry("POST", "Patient", patient()), kind=None), "Bundle.type"),
    "document": (tx(kind="document"), "Bundle.type"),
    "collection": (tx(kind="collection"), "Bundle.type"),
    "message": (tx(kind="message"), "Bundle.type"),
    "transaction-response": (tx(kind="transaction-response"), "Bundle.type"),
    "entry not an array": ({**tx(), "entry": {"request": {}}}, "Bundle.entry"),
    "entry without request": (
        tx(entry("POST", "Patient", patient()), {"fullUrl": urn(), "resource": patient()}),
        "Bundle.entry[1].request",
    ),
    "bad method": (
        tx({"resource": patient(), "request": {"method": "FETCH", "url": "Patient"}}),
        "Bundle.entry[0].request.method",
    ),
    "no url": (
        tx({"resource": patient(), "request": {"method": "POST"}}),
        "Bundle.entry[0].request.url",
    ),
    "unknown type in url": (
        tx(entry("POST", "Patients", patient())),
        "Bundle.entry[0].request.url",
    ),
    "POST to an instance": (
        tx(entry("POST", "Patient/1", patient())),
        "Bundle.entry[0].request.url",
    ),
    "invalid id in url": (
        tx(entry("PUT", "Patient/a_b", patient(id="a_b"))),
        "Bundle.entry[0].request.url",
    ),
    "PUT body id differs": (
        tx(entry("PUT", "Patient/a", patient(id="b"))),
        "Bundle.entry[0].resource.id",
    ),
    "POST without resource": (tx(entry("POST", "Patient")), "Bundle.entry[0]"),
    "resource of another type": (
        tx(entry("POST", "Patient", observation())),
        "Bundle.entry[0].resource",
    ),
    "PATCH not a Binary": (tx(entry("PATCH", "Patient/a", patient())), "Bundle.entry[0]"),
    "two entries with one fullUrl": (  # bdl-7: "FullUrl must be unique in a bundle"
        tx(
            entry("POST", "Patient", patient(), BAD_URL),
            entry("POST", "Patient", patient(), BAD_URL),
        ),
        "Bundle.entry[1].fullUrl",
    ),
    "ifMatch not an ETag": (
        tx(entry("PUT", "Patient/a", patient(id="a"), ifMatch="yes")),
        "Bundle.entry[0].request.ifMatch",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_bundle(client, settings, case):
    body, where = MALFORMED[case]
    before = database_snapshot(settings)
    r = raw_post(client, body)
    issues = assert_outcome(r, (400, 415))
    assert any(e.startswith(where) for e in expressions(issues)), issues
    assert database_snapshot(settings) == before


def test_not_json(client):
    assert_outcome(raw_post(client, b"{not json"), 400)
    r = client.post("/fhir", content=b"<Bundle/>", headers={"Content-Type": "application/fhir+xml"})
    assert_outcome(r, 415)


def test_lenient_search_entry(client):
    # Prefer: handling=lenient (search.html#errors) ignores the unknown parameter
    entries = bundle_response(
        post_bundle(
            client,
            [entry("POST", "Patient", patient()), entry("GET", "Patient?bogus=1")],
            Prefer="handling=lenient",
        )
    )
    assert entries[1]["response"]["status"] == "200 OK"
    assert entries[1]["resource"]["total"] == 1


def test_conditional_reference_with_unknown_parameter(client):
    # a conditional reference whose criteria are not valid search parameters fails the
    # transaction, naming the entry holding it
    issues = assert_outcome(
        post_bundle(
            client,
            [
                entry(
                    "POST",
                    "Observation",
                    observation(subject={"reference": "Patient?no-such-param=1"}),
                    BAD_URL,
                )
            ],
        ),
        400,
    )
    assert BAD_URL in diagnostics(issues)


# --- limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_too_many_entries(settings, kind):
    with app_client(settings, bundle_max_entries=3) as c:
        entries = [entry("POST", "Patient", patient()) for _ in range(4)]
        issues = assert_outcome(post_bundle(c, entries, kind), 413)
        assert issues[0]["code"] == "too-costly"
        assert count(c) == 0
        bundle_response(post_bundle(c, entries[:3], kind), f"{kind}-response")
        assert count(c) == 3


@pytest.mark.parametrize("chunked", [False, True])
def test_too_large_body(settings, chunked):
    with app_client(settings, bundle_max_bytes=4096) as c:
        big = patient(name=[{"family": "x" * 5000}])
        body = json.dumps(tx(entry("POST", "Patient", big))).encode()
        content: Any = iter([body[:2000], body[2000:]]) if chunked else body
        r = c.post("/fhir", content=content, headers={"Content-Type": FHIR_JSON})
        issues = assert_outcome(r, 413)
        assert issues[0]["code"] == "too-costly"
        assert count(c) == 0


# --- Bundles that are not transactions ---------------------------------------------------


@pytest.mark.parametrize("kind", ["document", "collection", "message"])
def test_other_bundles_are_stored_as_bundles(client, kind):
    # A document, collection or message is a resource like any other: POST
    # [base]/Bundle stores it whole; its entries are not created.
    p = f"urn:uuid:{'1' * 8}-1111-1111-1111-{'1' * 12}"
    first = {
        "document": {
            "resourceType": "Composition",
            "status": "final",
            "type": {"text": "note"},
            "date": "2024-01-01",
            "title": "Note",
            "author": [{"reference": p}],
            "subject": {"reference": p},
        },
        "message": {
            "resourceType": "MessageHeader",
            "eventCoding": {"system": "http://example.org/events", "code": "admit"},
            "source": {"endpoint": "http://example.org/source"},
            "focus": [{"reference": p}],
        },
        "collection": patient(id="first"),
    }[kind]
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222", "resource": first},
            {"fullUrl": p, "resource": patient(identifier=[ident(SYS, "in-" + kind)])},
        ],
    }
    if kind == "document":
        bundle["identifier"] = {"system": "http://example.org/docs", "value": "d1"}
        bundle["timestamp"] = "2024-01-01T00:00:00Z"
    r = client.post("/fhir/Bundle", content=json.dumps(bundle), headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 201, r.text
    stored = r.json()
    assert stored["resourceType"] == "Bundle" and stored["type"] == kind
    assert stored["entry"] == bundle["entry"]  # kept as sent: nothing rewritten
    assert count(client, "Patient/_history") == 0
    assert count(client) == 1
    # and the same Bundle posted to [base] is refused, not processed
    assert_outcome(raw_post(client, bundle), 400)
    assert count(client) == 1
