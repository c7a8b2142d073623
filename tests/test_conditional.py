"""Conditional create / update / patch / delete (http.html#ccreate, #cond-update,
#patch, #3.1.0.7.1) and the criteria they accept (_id and identifier tokens)."""

from __future__ import annotations

import json

import pytest
from fhir_helpers import (
    FHIR_JSON,
    app_client,
    assert_outcome,
    create,
    create_with_id,
    diagnostics,
    ident,
    patch,
    patient,
    post,
)

SYS = "http://hospital.example/mrn"


def cond_put(client, query: str, resource: dict, **headers: str):
    return client.put(
        f"/fhir/Patient?{query}",
        content=json.dumps(resource),
        headers={"Content-Type": FHIR_JSON, **headers},
    )


def type_total(client) -> int:
    return client.get("/fhir/Patient/_history", params={"_summary": "count"}).json()["total"]


# --- conditional create ----------------------------------------------------------------


def test_if_none_exist(client):
    # http.html#ccreate: "No matches: The server processes the create as normal;
    # One Match: The server ignores the post and returns 200 OK; Multiple matches: The
    # server returns a 412 Precondition Failed error"
    criteria = {"If-None-Exist": f"identifier={SYS}|123"}
    first = post(client, patient(identifier=[ident(SYS, "123")]), **criteria)
    assert first.status_code == 201, first.text
    existing = first.json()

    again = post(client, patient(identifier=[ident(SYS, "123")], gender="female"), **criteria)
    assert again.status_code == 200, again.text
    assert again.json() == existing  # the existing resource, untouched
    assert again.headers["etag"] == 'W/"1"'
    assert type_total(client) == 1

    create(client, patient(identifier=[ident(SYS, "123")]))  # now two match
    assert_outcome(post(client, patient(identifier=[ident(SYS, "123")]), **criteria), 412)
    assert type_total(client) == 2


def test_if_none_exist_with_id(client):
    made = create_with_id(client, patient(), "known")
    r = post(client, patient(gender="female"), **{"If-None-Exist": "_id=known"})
    assert r.status_code == 200
    assert r.json() == made
    r = post(client, patient(), **{"If-None-Exist": "_id=unknown"})
    assert r.status_code == 201
    assert r.json()["id"] != "unknown"  # create ignores ids, conditional or not


# --- conditional update ----------------------------------------------------------------


def test_conditional_update_creates_then_updates(client):
    # http.html#cond-update: "No matches: The server performs a create interaction;
    # One Match: The server performs the update against the matching resource"
    query = f"identifier={SYS}|A1"
    r = cond_put(client, query, patient(identifier=[ident(SYS, "A1")]))
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert r.headers["location"].endswith(f"/Patient/{rid}/_history/1")

    r = cond_put(client, query, patient(identifier=[ident(SYS, "A1")], gender="female"))
    assert r.status_code == 200, r.text
    assert r.json()["id"] == rid
    assert r.json()["meta"]["versionId"] == "2"
    assert r.json()["gender"] == "female"

    # an id in the body equal to the match is fine
    body = patient(id=rid, identifier=[ident(SYS, "A1")], gender="other")
    r = cond_put(client, query, body)
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "3"
    assert type_total(client) == 3


def test_conditional_update_body_id_must_match_the_found_resource(client):
    # R5 http.html#cond-update makes R4's intent explicit: "One Match, resource id
    # provided but does not match resource found: The server returns a 400 Bad Request"
    rid = create(client, patient(identifier=[ident(SYS, "B1")]))["id"]
    body = patient(id="someone-else", identifier=[ident(SYS, "B1")])
    assert_outcome(cond_put(client, f"identifier={SYS}|B1", body), 400)
    assert client.get(f"/fhir/Patient/{rid}").headers["etag"] == 'W/"1"'
    assert client.get("/fhir/Patient/someone-else").status_code == 404


def test_conditional_update_no_match_with_body_id_creates_that_id(client):
    # R5 clarification: "No matches, resource id provided: The server treats the
    # interaction as an Update as Create interaction"
    r = cond_put(client, f"identifier={SYS}|C1", patient(id="c-one", identifier=[ident(SYS, "C1")]))
    assert r.status_code == 201, r.text
    assert r.json()["id"] == "c-one"


def test_conditional_update_several_matches_is_412(client):
    for _ in range(2):
        create(client, patient(identifier=[ident(SYS, "D1")]))
    r = cond_put(client, f"identifier={SYS}|D1", patient(identifier=[ident(SYS, "D1")]))
    assert_outcome(r, 412)
    assert type_total(client) == 2


def test_conditional_update_without_criteria_is_400(client):
    r = client.put(
        "/fhir/Patient", content=json.dumps(patient()), headers={"Content-Type": FHIR_JSON}
    )
    assert_outcome(r, 400)


# --- conditional patch -----------------------------------------------------------------


def test_conditional_patch(client):
    # http.html#patch: "servers SHALL support Conditional PATCH, which works exactly as
    # described for Conditional Update" (a patch cannot create, so no match is 404).
    ops = [{"op": "replace", "path": "/gender", "value": "female"}]
    assert_outcome(patch(client, f"/fhir/Patient?identifier={SYS}|E1", ops), 404)
    rid = create(client, patient(identifier=[ident(SYS, "E1")]))["id"]
    r = patch(client, f"/fhir/Patient?identifier={SYS}|E1", ops)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == rid
    assert r.json()["gender"] == "female"
    assert r.json()["meta"]["versionId"] == "2"
    create(client, patient(identifier=[ident(SYS, "E1")]))
    assert_outcome(patch(client, f"/fhir/Patient?identifier={SYS}|E1", ops), 412)


# --- conditional delete ----------------------------------------------------------------


def test_conditional_delete(client):
    # http.html conditional delete: "No matches or One Match: The server performs an
    # ordinary delete on the matching resource; Multiple matches: ... return a 412"
    # (this server's default, CapabilityStatement conditionalDelete = single).
    r = client.delete(f"/fhir/Patient?identifier={SYS}|F1")
    assert r.status_code in (200, 204)

    rid = create(client, patient(identifier=[ident(SYS, "F1")]))["id"]
    r = client.delete(f"/fhir/Patient?identifier={SYS}|F1")
    assert r.status_code in (200, 204)
    assert client.get(f"/fhir/Patient/{rid}").status_code == 410

    a = create(client, patient(identifier=[ident(SYS, "F2")]))["id"]
    b = create(client, patient(identifier=[ident(SYS, "F2")]))["id"]
    assert_outcome(client.delete(f"/fhir/Patient?identifier={SYS}|F2"), 412)
    assert client.get(f"/fhir/Patient/{a}").status_code == 200
    assert client.get(f"/fhir/Patient/{b}").status_code == 200


def test_conditional_delete_multiple_when_configured(client, settings):
    with app_client(settings, conditional_delete="multiple") as c:
        ids = [create(c, patient(identifier=[ident(SYS, "G1")]))["id"] for _ in range(3)]
        keep = create(c, patient(identifier=[ident(SYS, "G2")]))["id"]
        r = c.delete(f"/fhir/Patient?identifier={SYS}|G1")
        assert r.status_code in (200, 204)
        for rid in ids:
            assert c.get(f"/fhir/Patient/{rid}").status_code == 410
        assert c.get(f"/fhir/Patient/{keep}").status_code == 200


# --- criteria --------------------------------------------------------------------------


def test_conditional_criteria_use_the_full_search_engine(client):
    # Any search the engine supports can be a condition (http.html#ccreate).
    create(client, patient(identifier=[ident(SYS, "S1")]))
    r = post(client, patient(), **{"If-None-Exist": "name=nunez&birthdate=1980-02-29"})
    assert r.status_code == 200
    r = post(client, patient(), **{"If-None-Exist": "name=nobody"})
    assert r.status_code == 201
    assert type_total(client) == 2


@pytest.mark.parametrize(
    "criteria", ["nickname=Smith", "birthdate:exact=1980", "_text=x", "_count=1"]
)
def test_unsupported_criteria_are_400_naming_the_parameter(client, criteria):
    # Criteria the server cannot honour must not be ignored (that would widen the
    # match and touch the wrong resource); they are refused with 400 naming them.
    create(client, patient(identifier=[ident(SYS, "H1")]))
    name = criteria.split("=")[0].split(":")[0]
    ops = [{"op": "replace", "path": "/gender", "value": "female"}]
    responses = [
        post(client, patient(), **{"If-None-Exist": criteria}),
        cond_put(client, criteria, patient()),
        patch(client, f"/fhir/Patient?{criteria}", ops),
        client.delete(f"/fhir/Patient?{criteria}"),
    ]
    for r in responses:
        issues = assert_outcome(r, 400)
        assert name in diagnostics(issues), issues
    assert type_total(client) == 1


PROBE = [{"op": "test", "path": "/resourceType", "value": "Patient"}]


def matched(client, query: str) -> str | int:
    """What a criteria string matches, via a conditional patch that changes nothing:
    the id of the one match, 0 for none, 412 for several."""
    r = patch(client, f"/fhir/Patient?{query}", PROBE)
    if r.status_code == 200:
        assert r.json()["meta"]["versionId"] == "1"  # the probe wrote nothing
        return r.json()["id"]  # type: ignore[no-any-return]
    if r.status_code == 404:
        return 0
    assert r.status_code == 412, r.text
    return 412


def test_identifier_token_forms(client):
    # search.html#token: [code] any system; [system]|[code]; |[code] no system;
    # [system]| any code in the system. Comma = OR, repeated parameter = AND.
    create_with_id(client, patient(identifier=[ident("http://a", "1")]), "p1")
    create_with_id(client, patient(identifier=[ident("http://b", "1")]), "p2")
    create_with_id(client, patient(identifier=[ident(None, "1")]), "p3")
    both = [ident("http://a", "2"), ident("http://b", "3")]
    create_with_id(client, patient(identifier=both), "p4")

    cases = {
        "identifier=1": 412,  # p1, p2, p3
        "identifier=http://a|1": "p1",
        "identifier=http%3A%2F%2Fa%7C1": "p1",  # percent-encoded
        "identifier=|1": "p3",
        "identifier=http://b|": 412,  # p2, p4
        "identifier=http://c|": 0,
        "identifier=http://a|9": 0,
        "identifier=3": "p4",
        "identifier=http://a|2,http://zzz|9": "p4",
        "identifier=http://a|1,http://a|2": 412,
        "identifier=http://a|2&identifier=http://b|3": "p4",
        "identifier=http://a|1&identifier=http://b|3": 0,
        "identifier=http://a|&identifier=3": "p4",
        "_id=p2": "p2",
        "_id=p1,p2": 412,
        "_id=p1&identifier=http://a|1": "p1",
        "_id=p1&identifier=http://b|1": 0,
        "_id=nobody": 0,
    }
    got = {query: matched(client, query) for query in cases}
    assert got == cases


def test_identifier_escaped_comma_and_pipe(client):
    # search.html#escaping: "\," and "\|" are literal characters in a value.
    create_with_id(client, patient(identifier=[ident("http://a", "x,y")]), "comma")
    create_with_id(client, patient(identifier=[ident("http://a", "x")]), "plain")
    assert matched(client, "identifier=http://a|x\\,y") == "comma"
    assert matched(client, "identifier=http://a|x") == "plain"


@pytest.mark.parametrize("query", ["identifier=", "identifier=a|b|c", "_id=a%20b", "_id="])
def test_malformed_criteria_are_400(client, query):
    assert_outcome(patch(client, f"/fhir/Patient?{query}", PROBE), 400)
    assert_outcome(post(client, patient(), **{"If-None-Exist": query}), 400)
