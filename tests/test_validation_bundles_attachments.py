"""The Bundle invariants (bundle.html#invs) and the Attachment rules
(datatypes.html#Attachment) over HTTP: $validate reports them in a 200 OperationOutcome,
a create refuses the resource with a 400 naming the same issue, and a resource that keeps
the rule passes both.

Each rule has a resource that passes and one that fails. The failing ones differ from a
valid base resource in one place only, so that the issue asserted is the only error.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import (
    FHIR_JSON,
    assert_outcome,
    entry,
    patient,
    post,
    post_bundle,
    shared_client,
    urn,
)

BASE = "http://example.org/fhir"


@pytest.fixture(scope="module")
def client(mongo_url: str) -> Iterator[TestClient]:
    with shared_client(mongo_url) as c:
        yield c


def validate(client: TestClient, resource: dict[str, Any]) -> list[dict[str, Any]]:
    """POST [type]/$validate: the error issues of the 200 OperationOutcome."""
    r = client.post(
        f"/fhir/{resource['resourceType']}/$validate",
        content=json.dumps(resource),
        headers={"Content-Type": FHIR_JSON},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return [i for i in body["issue"] if i["severity"] in ("error", "fatal")]


def assert_passes(client: TestClient, resource: dict[str, Any]) -> None:
    assert validate(client, resource) == []
    r = post(client, resource)
    assert r.status_code == 201, r.text


def assert_fails(
    client: TestClient, resource: dict[str, Any], code: str, expression: str, text: str
) -> None:
    """$validate reports exactly this error; a create is refused (400) with it."""
    issues = validate(client, resource)
    assert [(i["code"], i["expression"]) for i in issues] == [(code, [expression])], issues
    assert text in issues[0]["diagnostics"], issues
    r = post(client, resource)
    created = assert_outcome(r, 400)
    assert [(i["code"], i["expression"]) for i in created] == [(code, [expression])], created


# --- Bundles ---------------------------------------------------------------------------------


def pat(rid: str, **extra: Any) -> dict[str, Any]:
    return patient(id=rid, **extra)


def bundle(kind: str, *entries: dict[str, Any], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "type": kind, **extra}
    if entries:
        out["entry"] = list(entries)
    return out


def resource_entry(rid: str, **extra: Any) -> dict[str, Any]:
    return {"fullUrl": f"{BASE}/Patient/{rid}", "resource": pat(rid), **extra}


def composition() -> dict[str, Any]:
    return {
        "resourceType": "Composition",
        "id": "c1",
        "status": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
        "date": "2024-01-02T10:00:00Z",
        "author": [{"reference": "Patient/p1"}],
        "title": "Consult note",
    }


def message_header() -> dict[str, Any]:
    return {
        "resourceType": "MessageHeader",
        "id": "m1",
        "eventCoding": {"system": "http://example.org/events", "code": "admit"},
        "source": {"endpoint": "http://example.org/source"},
    }


def document(**changes: Any) -> dict[str, Any]:
    """A document Bundle that keeps bdl-9, bdl-10 and bdl-11; ``changes`` None removes."""
    out = bundle(
        "document",
        {"fullUrl": f"{BASE}/Composition/c1", "resource": composition()},
        resource_entry("p1"),
        identifier={"system": "urn:ietf:rfc:3986", "value": f"{urn()}"},
        timestamp="2024-01-02T10:00:00Z",
    )
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def searchset_entry(rid: str) -> dict[str, Any]:
    return resource_entry(rid, search={"mode": "match"})


def response_entry(rid: str) -> dict[str, Any]:
    return resource_entry(rid, response={"status": "201 Created"})


def request_entry(rid: str) -> dict[str, Any]:
    return resource_entry(rid, request={"method": "PUT", "url": f"Patient/{rid}"})


def history_entry(rid: str, version: str) -> dict[str, Any]:
    resource = pat(rid, meta={"versionId": version})
    return {
        "fullUrl": f"{BASE}/Patient/{rid}",
        "resource": resource,
        "request": {"method": "PUT", "url": f"Patient/{rid}"},
        "response": {"status": "200 OK"},
    }


# (rule, passing resource, failing resource, code, expression, text of the diagnostics)
BUNDLE_RULES: list[tuple[str, dict[str, Any], dict[str, Any], str, str, str]] = [
    (
        "bdl-1",
        bundle("searchset", searchset_entry("a"), total=1),
        bundle("collection", resource_entry("a"), total=1),
        "invariant",
        "Bundle.total",
        "bdl-1: total only when a search or history",
    ),
    (
        "bdl-2",
        bundle("searchset", searchset_entry("a")),
        bundle("collection", searchset_entry("a")),
        "invariant",
        "Bundle.entry[0].search",
        "bdl-2: entry.search only when a search",
    ),
    (
        "bdl-3 prohibited",
        bundle("collection", resource_entry("a")),
        bundle("collection", resource_entry("a"), request_entry("b")),
        "invariant",
        "Bundle.entry[1].request",
        "bdl-3: entry.request mandatory for batch/transaction/history, otherwise prohibited",
    ),
    (
        "bdl-3 mandatory",
        bundle("batch", request_entry("a"), request_entry("b")),
        bundle("batch", request_entry("a"), resource_entry("b")),
        "invariant",
        "Bundle.entry[1].request",
        "bdl-3: entry.request mandatory for batch/transaction/history, otherwise prohibited",
    ),
    (
        "bdl-4 prohibited",
        bundle("collection", resource_entry("a")),
        bundle("collection", response_entry("a")),
        "invariant",
        "Bundle.entry[0].response",
        "bdl-4: entry.response mandatory for batch-response/transaction-response/history, "
        "otherwise prohibited",
    ),
    (
        "bdl-4 mandatory",
        bundle("transaction-response", response_entry("a")),
        bundle("transaction-response", response_entry("a"), resource_entry("b")),
        "invariant",
        "Bundle.entry[1].response",
        "bdl-4: entry.response mandatory for batch-response/transaction-response/history, "
        "otherwise prohibited",
    ),
    (
        "bdl-5",
        bundle("transaction-response", {"response": {"status": "204 No Content"}}),
        bundle("collection", {"fullUrl": f"{BASE}/Patient/a"}),
        "invariant",
        "Bundle.entry[0]",
        "bdl-5: must be a resource unless there's a request or response",
    ),
    (
        "bdl-7",
        # bundle.html#bundle-unique: entries may share a fullUrl when their
        # meta.versionId differ, and a history Bundle repeats fullUrls freely
        bundle(
            "collection",
            {"fullUrl": f"{BASE}/Patient/a", "resource": pat("a", meta={"versionId": "1"})},
            {"fullUrl": f"{BASE}/Patient/a", "resource": pat("a", meta={"versionId": "2"})},
        ),
        bundle("collection", resource_entry("a"), resource_entry("b"), resource_entry("a")),
        "invariant",
        "Bundle.entry[2].fullUrl",
        "bdl-7: FullUrl must be unique in a bundle",
    ),
    (
        "bdl-7 history",
        bundle("history", history_entry("a", "2"), history_entry("a", "2")),
        bundle("collection", resource_entry("a"), resource_entry("a")),
        "invariant",
        "Bundle.entry[1].fullUrl",
        "bdl-7: FullUrl must be unique in a bundle",
    ),
    (
        "bdl-8",
        bundle("collection", resource_entry("a")),
        bundle(
            "collection",
            {"fullUrl": f"{BASE}/Patient/a/_history/1", "resource": pat("a")},
        ),
        "invariant",
        "Bundle.entry[0].fullUrl",
        "bdl-8: fullUrl cannot be a version specific reference",
    ),
    (
        "bdl-9",
        document(),
        document(identifier={"value": "no-system"}),
        "invariant",
        "Bundle.identifier",
        "bdl-9: A document must have an identifier with a system and a value",
    ),
    (
        "bdl-10",
        document(),
        document(timestamp=None),
        "invariant",
        "Bundle.timestamp",
        "bdl-10: A document must have a date",
    ),
    (
        "bdl-11",
        document(),
        document(entry=[resource_entry("p1"), {"resource": composition()}]),
        "invariant",
        "Bundle.entry[0].resource",
        "bdl-11: A document must have a Composition as the first resource",
    ),
    (
        "bdl-12",
        bundle("message", {"fullUrl": urn(), "resource": message_header()}, resource_entry("p")),
        bundle("message", resource_entry("p"), {"fullUrl": urn(), "resource": message_header()}),
        "invariant",
        "Bundle.entry[0].resource",
        "bdl-12: A message must have a MessageHeader as the first resource",
    ),
    (
        "fullUrl absolute",
        bundle(
            "collection",
            {"fullUrl": "urn:oid:1.2.3.4", "resource": pat("a")},
            {"fullUrl": urn(), "resource": pat("b")},
        ),
        bundle("collection", resource_entry("a"), {"fullUrl": "Patient/b", "resource": pat("b")}),
        "value",
        "Bundle.entry[1].fullUrl",
        "must be absolute",
    ),
    (
        "one self link",
        bundle(
            "searchset",
            searchset_entry("a"),
            link=[
                {"relation": "self", "url": f"{BASE}/Patient?_count=1"},
                {"relation": "next", "url": f"{BASE}/Patient?_count=1&page=2"},
            ],
        ),
        bundle(
            "searchset",
            searchset_entry("a"),
            link=[
                {"relation": "self", "url": f"{BASE}/Patient?_count=1"},
                {"relation": "self", "url": f"{BASE}/Patient?_count=2"},
            ],
        ),
        "invariant",
        "Bundle.link[1]",
        "at most one link with relation 'self'",
    ),
    (
        "fullUrl agrees with id",
        # Bundle.entry.fullUrl: "if the fullUrl does look like a RESTful server URL (e.g.
        # meets the regex), then the 'id' portion of the fullUrl SHALL end with the
        # Resource.id"; a fullUrl that is not RESTful may name anything
        bundle(
            "collection",
            resource_entry("a"),
            {"fullUrl": "http://example.org/documents/x-ray-7", "resource": pat("b")},
        ),
        bundle("collection", {"fullUrl": f"{BASE}/Patient/a", "resource": pat("b")}),
        "value",
        "Bundle.entry[0].fullUrl",
        "SHALL agree with Resource.id",
    ),
]


def test_a_document_without_entries_has_no_composition(client: TestClient) -> None:
    assert_fails(
        client,
        document(entry=None),
        "invariant",
        "Bundle.entry",
        "bdl-11: A document must have a Composition as the first resource",
    )


def test_a_bundle_inside_a_bundle_is_checked_with_its_own_rules(client: TestClient) -> None:
    """A nested Bundle is validated as a resource of its own (bundle.html: a document can
    travel in a collection); its issues are named from the outer Bundle."""
    inner = document(timestamp=None)
    outer = bundle("collection", {"fullUrl": urn(), "resource": inner})
    assert_fails(
        client,
        outer,
        "invariant",
        "Bundle.entry[0].resource.timestamp",
        "bdl-10: A document must have a date",
    )
    assert_passes(client, bundle("collection", {"fullUrl": urn(), "resource": document()}))


def test_a_transaction_creating_a_bad_bundle_fails_naming_the_entry(client: TestClient) -> None:
    """POST [base] validates each entry's resource: a document Bundle stored by a
    transaction keeps the Bundle rules."""
    r = post_bundle(client, [entry("POST", "Bundle", document(identifier=None), urn())])
    issues = assert_outcome(r, 400)
    assert [(i["code"], i["expression"]) for i in issues] == [
        ("invariant", ["Bundle.entry[0].resource.identifier"])
    ]
    r = post_bundle(client, [entry("POST", "Bundle", document(), urn())])
    assert r.status_code == 200, r.text


def test_the_server_s_own_bundles_keep_the_rules(client: TestClient) -> None:
    """The searchset, history and transaction-response Bundles this server returns are
    valid Bundles themselves."""
    created = post(client, pat("own"))
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    r = post_bundle(client, [entry("PUT", f"Patient/{rid}", pat(rid))])
    assert r.status_code == 200, r.text
    for url in (
        f"/fhir/Patient?_id={rid}",
        f"/fhir/Patient/{rid}/_history",
        "/fhir/Patient/_history",
    ):
        served = client.get(url)
        assert served.status_code == 200, served.text
        assert validate(client, served.json()) == [], url
    assert validate(client, r.json()) == []


# --- Attachments -----------------------------------------------------------------------------

DATA = b"%PDF-1.4 a small document"
DATA_B64 = base64.b64encode(DATA).decode()
SHA1_B64 = base64.b64encode(hashlib.sha1(DATA).digest()).decode()


def document_reference(**attachment: Any) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "content": [{"attachment": attachment}],
    }


GOOD_ATTACHMENT = {"contentType": "application/pdf", "data": DATA_B64}
ATTACHMENT_RULES: list[tuple[str, dict[str, Any], dict[str, Any], str, str, str]] = [
    (
        "att-1",
        document_reference(**GOOD_ATTACHMENT),
        document_reference(data=DATA_B64),
        "invariant",
        "DocumentReference.content[0].attachment",
        "att-1: If the Attachment has data, it SHALL have a contentType",
    ),
    (
        "att-1 without data",
        # att-1 is data.empty() or contentType.exists(): a url alone needs no contentType
        document_reference(url="http://example.org/scan.pdf"),
        document_reference(data=DATA_B64, url="http://example.org/scan.pdf"),
        "invariant",
        "DocumentReference.content[0].attachment",
        "att-1",
    ),
    (
        "size",
        # Attachment.size: "The number of bytes of data that make up this attachment
        # (before base64 encoding, if that is done)"
        document_reference(**GOOD_ATTACHMENT, size=len(DATA)),
        document_reference(**GOOD_ATTACHMENT, size=len(DATA_B64)),
        "value",
        "DocumentReference.content[0].attachment.size",
        f"size is {len(DATA_B64)} but data holds {len(DATA)} bytes",
    ),
    (
        "hash",
        # Attachment.hash: "The calculated hash of the data using SHA-1. Represented using
        # base64"
        document_reference(**GOOD_ATTACHMENT, hash=SHA1_B64),
        document_reference(
            **GOOD_ATTACHMENT, hash=base64.b64encode(hashlib.sha1(b"other").digest()).decode()
        ),
        "value",
        "DocumentReference.content[0].attachment.hash",
        "is not the SHA-1 of data",
    ),
    (
        "size and hash of another element",
        patient(photo=[{"contentType": "image/png", "data": DATA_B64, "size": len(DATA)}]),
        patient(
            photo=[
                {"contentType": "image/png", "data": DATA_B64},
                {"contentType": "image/png", "data": DATA_B64, "size": 0},
            ]
        ),
        "value",
        "Patient.photo[1].size",
        "size is 0",
    ),
    (
        "in an extension",
        patient(
            extension=[{"url": "http://example.org/scan", "valueAttachment": {"url": "http://x/1"}}]
        ),
        patient(
            extension=[{"url": "http://example.org/scan", "valueAttachment": {"data": DATA_B64}}]
        ),
        "invariant",
        "Patient.extension[0].value.ofType(Attachment)",
        "att-1",
    ),
]


@pytest.mark.parametrize(
    ("good", "bad", "code", "expression", "text"),
    [rule[1:] for rule in (*BUNDLE_RULES, *ATTACHMENT_RULES)],
    ids=[rule[0] for rule in (*BUNDLE_RULES, *ATTACHMENT_RULES)],
)
def test_rule(
    client: TestClient,
    good: dict[str, Any],
    bad: dict[str, Any],
    code: str,
    expression: str,
    text: str,
) -> None:
    assert_passes(client, good)
    assert_fails(client, bad, code, expression, text)


def test_size_and_hash_without_data_are_not_checked(client: TestClient) -> None:
    """Only the data in the Attachment can be measured: a url's content is not fetched."""
    assert_passes(
        client,
        document_reference(url="http://example.org/scan.pdf", size=12345, hash=SHA1_B64),
    )


def test_a_malformed_data_is_reported_once(client: TestClient) -> None:
    """data that is not base64 is a value error of data itself; size and hash are then
    not compared with it."""
    bad = document_reference(contentType="application/pdf", data="not base64!", size=3)
    issues = validate(client, bad)
    assert [i["expression"] for i in issues] == [["DocumentReference.content[0].attachment.data"]]


def test_attachments_inside_a_transaction(client: TestClient) -> None:
    bad = document_reference(**GOOD_ATTACHMENT, size=1)
    r = post_bundle(client, [entry("POST", "DocumentReference", bad, urn())])
    issues = assert_outcome(r, 400)
    assert [(i["code"], i["expression"]) for i in issues] == [
        ("value", ["Bundle.entry[0].resource.content[0].attachment.size"])
    ]
    good = document_reference(**GOOD_ATTACHMENT, size=len(DATA), hash=SHA1_B64)
    r = post_bundle(client, [entry("POST", "DocumentReference", good, urn())])
    assert r.status_code == 200, r.text


def test_update_checks_attachments(client: TestClient) -> None:
    created = post(client, document_reference(**GOOD_ATTACHMENT))
    assert created.status_code == 201, created.text
    body = created.json()
    body["content"][0]["attachment"]["hash"] = base64.b64encode(b"x" * 20).decode()
    r = client.put(
        f"/fhir/DocumentReference/{body['id']}",
        content=json.dumps(body),
        headers={"Content-Type": FHIR_JSON},
    )
    issues = assert_outcome(r, 400)
    assert [i["expression"] for i in issues] == [["DocumentReference.content[0].attachment.hash"]]


# --- a transaction POSTed to [base] ----------------------------------------------------------


@pytest.mark.parametrize(
    ("changed", "code", "expression", "text"),
    [
        ({"response": {"status": "201 Created"}}, "invariant", "Bundle.entry[0].response", "bdl-4"),
        ({"search": {"mode": "match"}}, "invariant", "Bundle.entry[0].search", "bdl-2"),
        ({"fullUrl": "Patient/t1"}, "value", "Bundle.entry[0].fullUrl", "must be absolute"),
        (
            {"fullUrl": f"{BASE}/Patient/t1/_history/1"},
            "invariant",
            "Bundle.entry[0].fullUrl",
            "bdl-8",
        ),
        ({"fullUrl": f"{BASE}/Patient/t2"}, "value", "Bundle.entry[0].fullUrl", "Resource.id"),
    ],
    ids=["bdl-4", "bdl-2", "absolute", "bdl-8", "id"],
)
def test_a_transaction_keeps_the_bundle_rules(
    client: TestClient, changed: dict[str, Any], code: str, expression: str, text: str
) -> None:
    """http.html#transaction: a transaction Bundle that is itself invalid is refused (400)
    and nothing is written; the same Bundle through $validate reports the same issue."""
    good = entry("PUT", "Patient/t1", pat("t1"), f"{BASE}/Patient/t1")
    bad = {**good, **changed}
    r = post_bundle(client, [bad])
    issues = assert_outcome(r, 400)
    assert [(i["code"], i["expression"]) for i in issues] == [(code, [expression])], issues
    assert text in issues[0]["diagnostics"]
    assert client.get("/fhir/Patient/t1").status_code in (404, 410)
    checked = validate(client, bundle("transaction", bad))
    assert [(i["code"], i["expression"]) for i in checked] == [(code, [expression])], checked
    assert validate(client, bundle("transaction", good)) == []


def test_a_transaction_reports_bdl_3_and_bdl_7_in_its_own_words(client: TestClient) -> None:
    """The transaction's own parse names a missing request and a repeated fullUrl first."""
    r = post_bundle(client, [{"fullUrl": urn(), "resource": pat("x")}])
    issues = assert_outcome(r, 400)
    assert [i["expression"] for i in issues] == [["Bundle.entry[0].request"]]
    assert "needs a request" in issues[0]["diagnostics"]
    same = urn()
    r = post_bundle(
        client, [entry("POST", "Patient", pat("x"), same), entry("POST", "Patient", pat("y"), same)]
    )
    issues = assert_outcome(r, 400)
    assert [i["expression"] for i in issues] == [["Bundle.entry[1].fullUrl"]]
    assert "is also the fullUrl of Bundle.entry[0]" in issues[0]["diagnostics"]
