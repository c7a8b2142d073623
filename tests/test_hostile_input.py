"""Hostile input through HTTP (issue 11, findings 5 and 9): each request here once made
the server answer 500 or accept what it must refuse. Every one must now be a 4xx
OperationOutcome whose ``expression`` names the offending parameter or element, or, for
a valid query, a normal answer; never a 5xx."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import bson
import pytest
from fastapi.testclient import TestClient
from fhir_helpers import (
    FHIR_JSON,
    app_client,
    assert_outcome,
    bundle_response,
    entry,
    expressions,
    patient,
    post_bundle,
)

from fhir_server.app import create_app
from fhir_server.config import Settings

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
        # a zero's implied range is half its last digit (search.html#number): found by
        # schemathesis, "0e6146" gave (-inf + inf) / 2 and "0e999999999" overflowed
        ("RiskAssessment", "probability", "0e6146"),
        ("Observation", "value-quantity", "gt0e7000|http://unitsofmeasure.org|mg"),
        ("RiskAssessment", "probability", "0e999999999"),
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
    """ap widens by 10%: past the limit the range is open on that side. Resources cannot
    hold such a value (the body's number-magnitude limit refuses it first, 400 naming
    the element), so the search is answered over what is stored."""
    obs = HUGE_OBSERVATION.replace("1e999999999", "9.9e6144")
    r = client.post("/fhir/Observation", content=obs, headers=JSON_BODY)
    assert expressions(assert_outcome(r, 400)) == ["Observation.valueQuantity.value"]
    big = HUGE_OBSERVATION.replace("1e999999999", "9.9e300")
    assert client.post("/fhir/Observation", content=big, headers=JSON_BODY).is_success
    r = client.get("/fhir/Observation", params={"value-quantity": "ap9.9e6144"})
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 0
    r = client.get("/fhir/Observation", params={"value-quantity": "ap9.9e300"})
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
        # RFC 9110 5.5: "a recipient of CR, LF, or NUL within a field value MUST either
        # reject the message or replace each of those characters with SP"
        ("POST", "/fhir/Patient", {"If-None-Exist": "name=a\x00b"}, "{}", "If-None-Exist"),
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


# --- paging cursors --------------------------------------------------------------------------
# A cursor says where the next page starts; it goes into a MongoDB filter. It must be one
# this server gave out (signed with its key), and hold only sort values, never a document.


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _seed(client: TestClient, n: int = 4) -> None:
    for i in range(n):
        client.put(
            f"/fhir/Patient/p{i}",
            content=json.dumps(patient(id=f"p{i}", name=[{"family": f"F{i}"}])),
            headers=JSON_BODY,
        )


def _next(client: TestClient, url: str) -> str:
    """The _cursor of the next link of a GET ``url``."""
    r = client.get(url)
    assert r.status_code == 200, r.text
    nxt = next(x["url"] for x in r.json()["link"] if x["relation"] == "next")
    return dict(parse_qsl(urlsplit(nxt).query))["_cursor"]


@pytest.mark.parametrize("operator", [{"$foo": 1}, {"$ne": None}, {"$gt": ""}])
def test_a_forged_cursor_cannot_inject_a_query_operator(
    client: TestClient, operator: dict[str, Any]
) -> None:
    _seed(client)
    forged = _b64(bson.encode({"d": "a", "v": [operator, ""]}))
    r = client.get("/fhir/Patient", params={"_sort": "family", "_count": "1", "_cursor": forged})
    assert expressions(assert_outcome(r, 400)) == ["_cursor"]


@pytest.mark.parametrize(
    ("path", "forged"),
    [
        ("/fhir/_history", _b64(f"a:{'9' * 400}:Patient/p0/1".encode())),
        ("/fhir/Patient?_sort=birthdate", _b64(bson.encode({"d": "a", "v": [[1, 2], "p0"]}))),
    ],
)
def test_a_forged_cursor_that_overflowed_is_refused(
    client: TestClient, path: str, forged: str
) -> None:
    _seed(client)
    sep = "&" if "?" in path else "?"
    r = client.get(f"{path}{sep}_count=1&_cursor={forged}")
    assert expressions(assert_outcome(r, 400)) == ["_cursor"]


def test_a_tampered_cursor_is_refused(client: TestClient) -> None:
    """The payload rewritten (here: to resume from the start, whatever the tag says)."""
    _seed(client)
    cursor = _next(client, "/fhir/Patient?_count=1")
    body, dot, tag = cursor.partition(".")
    doc = bson.decode(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    doc["v"] = [""]
    tampered = _b64(bson.encode(doc)) + dot + tag
    r = client.get("/fhir/Patient", params={"_count": "1", "_cursor": tampered})
    assert expressions(assert_outcome(r, 400)) == ["_cursor"]


@pytest.mark.parametrize("path", ["/fhir/Patient?_count=1", "/fhir/_history?_count=1"])
def test_a_cursor_from_another_server_is_refused(
    client: TestClient, settings: Settings, path: str
) -> None:
    """Another database, another key: its cursors are not this server's."""
    _seed(client)
    with app_client(settings) as other:
        _seed(other)
        foreign = _next(other, path)
    r = client.get(f"{path}&_cursor={foreign}")
    assert expressions(assert_outcome(r, 400)) == ["_cursor"]


def test_cursors_survive_a_restart_and_cross_workers(
    client: TestClient, settings: Settings
) -> None:
    """The key lives in the database: another process on it (a worker, or the server
    after a restart) accepts the cursors this one gave out."""
    _seed(client)
    cursor = _next(client, "/fhir/Patient?_count=1&_sort=family")
    with TestClient(create_app(settings), base_url="http://testserver") as worker:
        r = worker.get(
            "/fhir/Patient", params={"_count": "1", "_sort": "family", "_cursor": cursor}
        )
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json()["entry"]] == ["p1"]


# --- digits of other scripts -----------------------------------------------------------------
# str.isdigit() holds for "²" and int() refuses it: a count or version of such digits was a
# 500. FHIR's integers and dates are ASCII (datatypes.html: integer [0]|[-+]?[1-9][0-9]*).


@pytest.mark.parametrize(
    ("url", "expression"),
    [
        ("/fhir/Patient?_count=%C2%B2", "_count"),
        ("/fhir/_history?_count=%C2%B2", "_count"),
        ("/fhir/Patient/p1/$everything?_count=%C2%B2", "_count"),
        ("/fhir/Patient/p1/_history/%C2%B2", "vid"),
    ],
)
def test_a_count_or_version_of_non_ascii_digits_is_a_400(
    client: TestClient, url: str, expression: str
) -> None:
    client.put("/fhir/Patient/p1", content=json.dumps(patient(id="p1")), headers=JSON_BODY)
    assert expressions(assert_outcome(client.get(url), 400)) == [expression]


def test_a_decimal_integer_beyond_64_bits_is_refused(client: TestClient) -> None:
    """A valid decimal, but one the JSON writer cannot write back as it came: refused
    with how to send it instead (an exponent), never stored half-way."""
    body = HUGE_OBSERVATION.replace("1e999999999", "1" + "0" * 40)
    r = client.post("/fhir/Observation", content=body, headers=JSON_BODY)
    assert expressions(assert_outcome(r, 400)) == ["Observation.value.ofType(Quantity).value"]
    ok = client.post(
        "/fhir/Observation", content=body.replace("1" + "0" * 40, "1e40"), headers=JSON_BODY
    )
    assert ok.status_code == 201, ok.text


# --- long search strings ---------------------------------------------------------------------
# String matching runs a MongoDB regular expression, which MongoDB refuses beyond 32 KB: a
# long value in a POST _search body (no URL limit) was a 500.

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    ("path", "param", "value"),
    [
        ("Patient", "name", "a" * 40_000),
        ("Patient", "name:contains", "a" * 40_000),
        ("Observation", "code:text", "a" * 40_000),
        ("Patient", "name", "\ufdfa" * 2_000),  # 2,000 characters, 36,000 once normalised
    ],
)
def test_a_search_value_too_long_to_match_is_a_400(
    client: TestClient, path: str, param: str, value: str
) -> None:
    r = client.post(f"/fhir/{path}/_search", data={param: value}, headers=FORM)
    assert expressions(assert_outcome(r, 400)) == [param]


MANY_DIGITS = "9" * 5_000  # int() refuses more than 4,300 digits


@pytest.mark.parametrize(
    ("method", "url", "headers", "status"),
    [
        ("GET", f"/fhir/Patient?_count={MANY_DIGITS}", {}, 200),  # capped at the maximum
        ("GET", f"/fhir/_history?_count={MANY_DIGITS}", {}, 200),
        ("GET", f"/fhir/Patient/p1/$everything?_count={MANY_DIGITS}", {}, 200),
        ("GET", f"/fhir/Patient/p1/_history/{MANY_DIGITS}", {}, 404),  # no such version
        ("PUT", "/fhir/Patient/p1", {"If-Match": f'W/"{MANY_DIGITS}"'}, 412),
        ("GET", "/fhir/Patient/p1", {"If-None-Match": f'W/"{MANY_DIGITS}"'}, 200),
    ],
)
def test_a_number_of_thousands_of_digits_is_answered_as_a_large_number(
    client: TestClient, method: str, url: str, headers: dict[str, str], status: int
) -> None:
    client.put("/fhir/Patient/p1", content=json.dumps(patient(id="p1")), headers=JSON_BODY)
    body = json.dumps(patient(id="p1")) if method == "PUT" else None
    r = client.request(method, url, content=body, headers={**JSON_BODY, **headers})
    assert r.status_code == status, r.text


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        ({"method": "GET", "url": f"Patient/p1/_history/{MANY_DIGITS}"}, 404),
        ({"method": "PUT", "url": "Patient/p1", "ifMatch": f'W/"{MANY_DIGITS}"'}, 412),
    ],
)
def test_a_transaction_version_of_thousands_of_digits_is_answered(
    client: TestClient, request_: dict[str, str], status: int
) -> None:
    client.put("/fhir/Patient/p1", content=json.dumps(patient(id="p1")), headers=JSON_BODY)
    e: dict[str, Any] = {"request": request_}
    if request_["method"] == "PUT":
        e["resource"] = patient(id="p1")
    assert_outcome(post_bundle(client, [e]), status)
