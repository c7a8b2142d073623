"""Hostile input through HTTP (issue 11, findings 5 and 9): each request here once made
the server answer 500 or accept what it must refuse. Every one must now be a 4xx
OperationOutcome whose ``expression`` names the offending parameter or element, or, for
a valid query, a normal answer; never a 5xx."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import (
    FHIR_JSON,
    assert_outcome,
    bundle_response,
    entry,
    expressions,
    patient,
    post_bundle,
)

JSON_BODY = {"Content-Type": FHIR_JSON}

# --- ids ---------------------------------------------------------------------------------
# datatypes.html#id: "Any combination of upper- or lower-case ASCII letters ('A'..'Z', and
# 'a'..'z'), numerals ('0'..'9'), '-' and '.', with a length limit of 64 characters". The
# regex admits "." and "..", but those are RFC 3986 dot segments: "Patient/.." is the
# base URL to every client and proxy, so such a resource could never be read back.

DOT_IDS = [".", ".."]


@pytest.mark.parametrize("rid", DOT_IDS)
def test_put_create_with_a_dot_segment_id_is_refused(client: TestClient, rid: str) -> None:
    encoded = rid.replace(".", "%2E")  # sent plainly, the client itself would rewrite it
    r = client.put(
        f"/fhir/Patient/{encoded}",
        content=json.dumps(patient(id=rid)),
        headers={"Content-Type": FHIR_JSON},
    )
    assert expressions(assert_outcome(r, 400)) == ["id"]
    assert_outcome(client.get(f"/fhir/Patient/{encoded}"), 400)
    assert client.get("/fhir/Patient").json().get("total") == 0


@pytest.mark.parametrize("rid", DOT_IDS)
def test_transaction_put_with_a_dot_segment_id_is_refused(client: TestClient, rid: str) -> None:
    r = post_bundle(client, [entry("PUT", f"Patient/{rid}", patient(id=rid))])
    issues = assert_outcome(r, 400)
    assert any("request.url" in x for x in expressions(issues)), issues
    assert client.get("/fhir/Patient").json().get("total") == 0


@pytest.mark.parametrize("rid", DOT_IDS)
def test_batch_put_with_a_dot_segment_id_fails_that_entry(client: TestClient, rid: str) -> None:
    r = post_bundle(client, [entry("PUT", f"Patient/{rid}", patient(id=rid))], "batch")
    (only,) = bundle_response(r, "batch-response")
    assert only["response"]["status"].startswith("400"), only
    assert client.get("/fhir/Patient").json().get("total") == 0


def _status(e: dict[str, Any]) -> int:
    return int(e["response"]["status"].split()[0])


# --- dates beyond the representable range ------------------------------------------------
# The server holds instants from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z. A value
# naming an instant outside (9999-12-31T23:59:59-14:00 is 10000-01-01T13:59:59Z) is a 400
# naming its parameter; a valid query whose range only reaches past the ends (ap0001:
# search.html#prefix, "the range of the search value ... overlaps with the range of the
# target value", widened here by 10%) is answered, its range stopping at the ends.

FAR = "9999-12-31T23:59:59-14:00"
BEFORE = "0001-01-01T00:00:00+14:00"
ASYNC = {"Prefer": "respond-async", "Accept": FHIR_JSON}

OUT_OF_RANGE_DATES = [
    ("/fhir/Patient/_history", {"_since": FAR}, {}, "_since"),
    ("/fhir/_history", {"_since": FAR}, {}, "_since"),
    ("/fhir/Patient/p1/_history", {"_since": FAR}, {}, "_since"),
    ("/fhir/Patient/_history", {"_since": BEFORE}, {}, "_since"),
    ("/fhir/_history", {"_at": FAR}, {}, "_at"),
    ("/fhir/Patient/p1/$everything", {"_since": FAR}, {}, "_since"),
    ("/fhir/$export", {"_since": FAR}, ASYNC, "_since"),
    ("/fhir/Patient/$export", {"_since": BEFORE}, ASYNC, "_since"),
]


@pytest.mark.parametrize(("path", "params", "headers", "expression"), OUT_OF_RANGE_DATES)
def test_an_instant_beyond_the_range_is_a_400_naming_the_parameter(
    client: TestClient, path: str, params: dict[str, str], headers: dict[str, str], expression: str
) -> None:
    client.put("/fhir/Patient/p1", content=json.dumps(patient(id="p1")), headers=JSON_BODY)
    r = client.get(path, params=params, headers=headers)
    assert expressions(assert_outcome(r, 400)) == [expression]


@pytest.mark.parametrize("param", ["birthdate", "_lastUpdated"])
def test_ap_near_year_1_is_answered(client: TestClient, param: str) -> None:
    create_ancient = client.post(
        "/fhir/Patient", content=json.dumps(patient(birthDate="0001-03-01")), headers=JSON_BODY
    )
    assert create_ancient.status_code == 201
    r = client.get("/fhir/Patient", params={param: "ap0001"})
    assert r.status_code == 200, r.text
    assert r.json()["total"] == (1 if param == "birthdate" else 0)


def test_a_year_9999_date_is_searchable(client: TestClient) -> None:
    """datatypes.html#date: a year is YYYY; 9999 is a valid date whose range ends where
    the server's does."""
    r = client.post(
        "/fhir/Patient", content=json.dumps(patient(birthDate="9999-12-31")), headers=JSON_BODY
    )
    assert r.status_code == 201
    for value in ("9999", "9999-12", "ap9999", "ge9999-12-31"):
        found = client.get("/fhir/Patient", params={"birthdate": value})
        assert found.status_code == 200, (value, found.text)
        assert found.json()["total"] == 1, value


@pytest.mark.parametrize(
    ("method", "url", "headers"),
    [
        ("POST", "/fhir/Patient", {"If-None-Exist": "birthdate=ap0001"}),
        ("PUT", "/fhir/Patient?birthdate=ap0001", {}),
        ("DELETE", "/fhir/Patient?birthdate=ap0001", {}),
        ("POST", "/fhir/Patient", {"If-None-Exist": f"birthdate=ap{BEFORE.replace('+', '%2B')}"}),
    ],
)
def test_conditional_criteria_near_the_range_ends_are_not_a_500(
    client: TestClient, method: str, url: str, headers: dict[str, str]
) -> None:
    body = json.dumps(patient()) if method != "DELETE" else None
    r = client.request(method, url, content=body, headers={**JSON_BODY, **headers})
    if "%2B" in url + headers.get("If-None-Exist", ""):
        assert expressions(assert_outcome(r, 400))[0] == "If-None-Exist"
    else:
        assert r.status_code in (200, 201, 204), r.text


# --- numbers beyond Decimal128 ---------------------------------------------------------------
# Every indexed number is a MongoDB Decimal128 (magnitude below 1e6145, no digit finer
# than 1e-6176). JSON and FHIR (datatypes.html#decimal) bound neither, so 1e999999999 is
# refused where it is read, naming where it was.


@pytest.mark.parametrize(
    ("path", "param", "value"),
    [
        ("Observation", "value-quantity", "1e999999999"),
        ("Observation", "value-quantity", "ap1e999999999"),
        ("Observation", "value-quantity", "1e-999999999"),
        ("Observation", "value-quantity", "gt1e9999|http://unitsofmeasure.org|mg"),
        ("Observation", "component-value-quantity", "-1e9999"),
        ("Observation", "code-value-quantity", "http://loinc.org|1$1e999999999"),
        ("RiskAssessment", "probability", "1e999999999"),
    ],
)
def test_a_search_number_beyond_decimal128_is_a_400(
    client: TestClient, path: str, param: str, value: str
) -> None:
    r = client.get(f"/fhir/{path}", params={param: value})
    assert expressions(assert_outcome(r, 400)) == [param]


HUGE_OBSERVATION = (
    '{"resourceType":"Observation","status":"final","code":{"text":"x"},'
    '"valueQuantity":{"value":1e999999999}}'
)


def test_ap_near_the_decimal128_limit_is_answered(client: TestClient) -> None:
    """ap widens by 10%: past the limit the range is open on that side."""
    obs = HUGE_OBSERVATION.replace("1e999999999", "9.9e6144")
    assert client.post("/fhir/Observation", content=obs, headers=JSON_BODY).is_success
    r = client.get("/fhir/Observation", params={"value-quantity": "ap9.9e6144"})
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 1


def test_an_observation_with_a_value_beyond_decimal128_is_refused(client: TestClient) -> None:
    r = client.post("/fhir/Observation", content=HUGE_OBSERVATION, headers=JSON_BODY)
    assert expressions(assert_outcome(r, 400)) == ["Observation.valueQuantity.value"]
    assert client.get("/fhir/Observation").json()["total"] == 0


def test_validate_reports_a_value_beyond_decimal128(client: TestClient) -> None:
    """$validate answers whether the content would be accepted (operation-resource-
    validate.html: "If the operation outcome does not list any errors, and a mode was
    specified, then this is an indication that the operation would be expected to
    succeed"): it once said "All OK" to what create then failed with a 500."""
    r = client.post("/fhir/Observation/$validate", content=HUGE_OBSERVATION, headers=JSON_BODY)
    issues = r.json()["issue"]
    errors = [i for i in issues if i["severity"] == "error"]
    assert [i["expression"] for i in errors] == [["Observation.valueQuantity.value"]], issues


# --- NUL bytes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "headers", "body", "expression"),
    [
        ("GET", "/fhir/Patient?name=a%00b", {}, None, "name"),
        ("GET", "/fhir/Patient?name:contains=%00", {}, None, "name:contains"),
        ("GET", "/fhir/Observation?code:text=a%00", {}, None, "code:text"),
        (
            "POST",
            "/fhir/Patient/_search",
            {"Content-Type": "application/x-www-form-urlencoded"},
            "name=a%00b",
            "name",
        ),
        ("POST", "/fhir/Patient", {"If-None-Exist": "name=a%00b"}, "{}", "If-None-Exist"),
        (
            "POST",
            "/fhir/Patient",
            {},
            '{"resourceType":"Patient","name":[{"family":"a\\u0000b"}]}',
            "Patient.name[0].family",
        ),
    ],
)
def test_a_nul_byte_is_a_400_naming_where_it_was(
    client: TestClient,
    method: str,
    url: str,
    headers: dict[str, str],
    body: str | None,
    expression: str,
) -> None:
    if body == "{}":
        body = json.dumps(patient())
    r = client.request(method, url, content=body, headers={**JSON_BODY, **headers})
    assert expressions(assert_outcome(r, 400))[0] == expression
    assert client.get("/fhir/Patient").json()["total"] == 0


# --- a batch with bad entries ----------------------------------------------------------------


def test_a_batch_entry_that_fails_fails_alone(client: TestClient) -> None:
    """http.html#transaction (Batch Processing Rules): "there SHALL be no interdependencies
    between the different entries in the Bundle that cause change on the server", and
    the batch answers 200 "regardless of the success of the operations within"."""
    r = post_bundle(
        client,
        [
            entry("POST", "Patient", patient()),
            entry("GET", "Patient?birthdate=ap0001"),
            entry("GET", "Observation?value-quantity=1e999999999"),
            entry("GET", "Patient?name=a%00b"),
            entry("GET", f"Patient/_history?_since={FAR}"),
            entry("PUT", "Patient/..", patient(id="..")),
            entry("POST", "Patient", patient()),
        ],
        "batch",
    )
    results = bundle_response(r, "batch-response")
    assert [_status(e) for e in results] == [201, 200, 400, 400, 400, 400, 201]
    for e in results[2:6]:
        assert e["response"]["outcome"]["resourceType"] == "OperationOutcome", e
    assert client.get("/fhir/Patient").json()["total"] == 2
