"""Batches (http.html#transaction, 3.1.0.11.1 Batch Processing Rules): entries are
independent; "the HTTP response code is 200 Ok if the batch was processed correctly,
regardless of the success of the operations within the Batch"; a failed entry carries
its own status and OperationOutcome in the batch-response entry."""

from __future__ import annotations

from typing import Any

from fhir_helpers import (
    BASE,
    app_client,
    assert_outcome,
    binary_patch,
    bundle_response,
    create,
    create_with_id,
    entry,
    found,
    ident,
    location_key,
    observation,
    patient,
    post_bundle,
)

SYS = "http://hospital.example/mrn"


def status(e: dict[str, Any]) -> int:
    return int(e["response"]["status"].split()[0])


def failed(e: dict[str, Any], code: int | tuple[int, ...]) -> list[dict[str, Any]]:
    """The entry failed with ``code`` and says why in response.outcome."""
    codes = (code,) if isinstance(code, int) else code
    assert status(e) in codes, e
    assert "resource" not in e, e
    outcome = e["response"]["outcome"]
    assert outcome["resourceType"] == "OperationOutcome", e
    assert any(i["severity"] in ("error", "fatal") for i in outcome["issue"]), e
    return outcome["issue"]  # type: ignore[no-any-return]


def test_independent_entries(client):
    existing = create_with_id(client, patient(identifier=[ident(SYS, "b1")]), "b1")
    create_with_id(client, patient(), "versioned")
    create_with_id(client, patient(), "doomed")
    ops = [{"op": "replace", "path": "/gender", "value": "female"}]
    request_entries = [
        entry("POST", "Patient", patient(identifier=[ident(SYS, "b-new")])),  # 0
        entry("POST", "Observation", observation(status="bogus")),  # 1: invalid
        entry("GET", "Patient/b1"),  # 2: read
        entry("GET", f"Patient?identifier={SYS}|b1"),  # 3: search
        entry("DELETE", "Patient/unknown"),  # 4
        entry(
            "PUT", "Patient/versioned", patient(id="versioned", gender="other"), ifMatch='W/"1"'
        ),  # 5: match
        entry("PUT", "Patient/b1", patient(id="b1", gender="other"), ifMatch='W/"9"'),  # 6
        entry("PATCH", "Patient/b1", binary_patch(ops)),  # 7
        entry("GET", "Patient/nobody"),  # 8
        entry("DELETE", "Patient/doomed"),  # 9
        entry("POST", "Patient", patient(), ifNoneExist=f"identifier={SYS}|b1"),  # 10
    ]
    entries = bundle_response(post_bundle(client, request_entries, "batch"), "batch-response")
    # one response entry per request entry, in the same order
    assert len(entries) == len(request_entries)

    assert status(entries[0]) == 201
    t, new_id, version = location_key(entries[0]["response"]["location"])
    assert (t, version) == ("Patient", "1")
    assert entries[0]["resource"]["id"] == new_id
    assert entries[0]["response"]["etag"] == 'W/"1"'
    assert "lastModified" in entries[0]["response"]
    assert found(client, "Patient", {"identifier": f"{SYS}|b-new"}) == {new_id}

    issues = failed(entries[1], 400)
    assert any("status" in " ".join(i.get("expression", [])) for i in issues), issues

    assert status(entries[2]) == 200
    assert entries[2]["resource"] == existing
    assert entries[2]["response"]["etag"] == 'W/"1"'

    assert status(entries[3]) == 200
    searchset = entries[3]["resource"]
    assert searchset["type"] == "searchset"
    assert [e["resource"]["id"] for e in searchset["entry"]] == ["b1"]

    # delete of an unknown resource: http.html#delete allows 200/204 (nothing to do)
    # or 404
    assert status(entries[4]) in (200, 204, 404), entries[4]

    assert status(entries[5]) == 200
    assert entries[5]["response"]["etag"] == 'W/"2"'
    assert entries[5]["resource"]["gender"] == "other"
    # "lastModified: The date/time that the resource was modified on the server": the
    # resource's meta.lastUpdated, not an HTTP date truncated to the second
    for e in (entries[0], entries[5], entries[7]):
        assert e["response"]["lastModified"] == e["resource"]["meta"]["lastUpdated"], e

    failed(entries[6], 412)  # If-Match W/"9" on version 1

    assert status(entries[7]) == 200
    assert entries[7]["resource"]["gender"] == "female"

    failed(entries[8], 404)
    assert status(entries[9]) in (200, 204)
    assert client.get("/fhir/Patient/doomed").status_code == 410

    assert status(entries[10]) == 200  # conditional create found b1
    assert entries[10]["resource"]["id"] == "b1"

    # the failed ones changed nothing; the others were applied
    stored = client.get("/fhir/Patient/b1").json()
    assert stored["gender"] == "female" and stored["meta"]["versionId"] == "2"
    assert client.get("/fhir/Observation", params={"_summary": "count"}).json()["total"] == 0


def test_malformed_entries_fail_alone(client):
    request_entries: list[dict[str, Any]] = [
        {"resource": patient()},  # no request
        {"request": {"method": "FETCH", "url": "Patient"}},
        {"request": {"method": "GET"}},
        entry("POST", "Patient"),  # no resource
        entry("PATCH", "Patient/x", patient()),  # not a Binary
        entry("POST", "Patient", patient()),
    ]
    entries = bundle_response(post_bundle(client, request_entries, "batch"), "batch-response")
    assert len(entries) == 6
    for i, e in enumerate(entries[:5]):
        issues = failed(e, (400, 415))
        assert any(
            x.startswith(f"Bundle.entry[{i}]") for i2 in issues for x in i2.get("expression", [])
        ), (i, issues)
    assert status(entries[5]) == 201


def test_prefer_minimal(client):
    made = create(client, patient())
    entries = bundle_response(
        post_bundle(
            client,
            [entry("POST", "Patient", patient()), entry("GET", f"Patient/{made['id']}")],
            "batch",
            Prefer="return=minimal",
        ),
        "batch-response",
    )
    assert status(entries[0]) == 201 and "resource" not in entries[0]
    assert entries[0]["response"]["location"].startswith(f"{BASE}/Patient/") or entries[0][
        "response"
    ]["location"].startswith("Patient/")
    # a read returns its resource whatever Prefer says
    assert entries[1]["resource"] == made


def test_prefer_operation_outcome(client):
    # Bundle.entry.response.outcome: "An OperationOutcome containing hints and warnings
    # produced as part of processing this entry in a batch or transaction."
    entries = bundle_response(
        post_bundle(
            client,
            [entry("POST", "Patient", patient())],
            "batch",
            Prefer="return=OperationOutcome",
        ),
        "batch-response",
    )
    assert status(entries[0]) == 201
    assert "resource" not in entries[0]
    assert entries[0]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_batch_does_not_roll_back(client):
    # the opposite of a transaction: an entry failing does not undo the others
    create_with_id(client, patient(identifier=[ident(SYS, "twin")]), "t1")
    create_with_id(client, patient(identifier=[ident(SYS, "twin")]), "t2")
    entries = bundle_response(
        post_bundle(
            client,
            [
                entry("POST", "Patient", patient(identifier=[ident(SYS, "ok")])),
                entry("POST", "Patient", patient(), ifNoneExist=f"identifier={SYS}|twin"),
                entry("PUT", "Patient/t1", patient(id="t1", gender="female")),
            ],
            "batch",
        ),
        "batch-response",
    )
    assert status(entries[0]) == 201
    failed(entries[1], 412)
    assert status(entries[2]) == 200
    assert found(client, "Patient", {"identifier": f"{SYS}|ok"}) != set()
    assert client.get("/fhir/Patient/t1").json()["gender"] == "female"


def test_empty_batch(client):
    assert bundle_response(post_bundle(client, [], "batch"), "batch-response") == []


def test_batch_limits(settings):
    with app_client(settings, bundle_max_entries=2) as c:
        r = post_bundle(c, [entry("GET", "Patient") for _ in range(3)], "batch")
        assert_outcome(r, 413)
