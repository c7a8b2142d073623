"""Formats and return content: _format / Accept / Content-Type (http.html#mime-type),
_pretty, _summary and _elements on read (search.html#summary, #elements), Prefer
return (http.html#prefer), conditional read (http.html#cread) and the
CapabilityStatement (http.html#capabilities), whose every interaction is exercised."""

from __future__ import annotations

import json

import pytest
from fhir_helpers import (
    FHIR_JSON,
    assert_outcome,
    create,
    has_subsetted_tag,
    observation,
    patch,
    patient,
    post,
    put,
)

FULL_PATIENT = patient(
    text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">José</div>'},
    identifier=[{"system": "http://a", "value": "1"}],
    maritalStatus={"text": "married"},
    contact=[{"name": {"family": "Núñez"}}],
    communication=[{"language": {"text": "Spanish"}}],
    deceasedBoolean=False,
)


# --- _format / Accept / Content-Type ---------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "application/fhir+json", "application/json"])
def test_json_formats_are_served(client, fmt):
    rid = create(client, patient())["id"]
    r = client.get(f"/fhir/Patient/{rid}", params={"_format": fmt})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] in (FHIR_JSON, "application/json")
    assert r.json()["id"] == rid


@pytest.mark.parametrize(
    "fmt", ["xml", "text/xml", "application/xml", "application/fhir+xml", "ttl"]
)
def test_other_formats_are_406(client, fmt):
    rid = create(client, patient())["id"]
    assert_outcome(client.get(f"/fhir/Patient/{rid}", params={"_format": fmt}), 406)
    assert_outcome(client.get("/fhir/metadata", params={"_format": fmt}), 406)


def test_accept_header(client):
    rid = create(client, patient())["id"]
    url = f"/fhir/Patient/{rid}"
    assert_outcome(client.get(url, headers={"Accept": "application/fhir+xml"}), 406)
    assert_outcome(client.get(url, headers={"Accept": "application/xml, text/xml"}), 406)
    for accept in (
        FHIR_JSON,
        "*/*",
        "application/fhir+json;q=0.9, application/fhir+xml",
        "text/html, */*",
    ):
        r = client.get(url, headers={"Accept": accept})
        assert r.status_code == 200, (accept, r.text)
        assert r.headers["content-type"].startswith(FHIR_JSON)
    # "If a client provides a generic mime type in the Accept header (application/xml,
    # text/json, or application/json), the server SHOULD respond with the requested
    # mime type"
    r = client.get(url, headers={"Accept": "application/json"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")


def test_xml_request_body_is_415(client):
    xml = '<Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient>'
    for content_type in ("application/fhir+xml", "application/xml", "text/plain"):
        r = client.post("/fhir/Patient", content=xml, headers={"Content-Type": content_type})
        assert_outcome(r, 415)
    rid = create(client, patient())["id"]
    r = client.put(
        f"/fhir/Patient/{rid}", content=xml, headers={"Content-Type": "application/fhir+xml"}
    )
    assert_outcome(r, 415)


def test_json_with_charset_and_legacy_types_is_accepted(client):
    for content_type in (
        f"{FHIR_JSON}; charset=utf-8",
        "application/json",
        "application/json+fhir",
    ):
        r = client.post(
            "/fhir/Patient", content=json.dumps(patient()), headers={"Content-Type": content_type}
        )
        assert r.status_code == 201, (content_type, r.text)


def test_pretty(client):
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    pretty = client.get(url, params={"_pretty": "true"})
    assert pretty.status_code == 200
    assert pretty.json() == created
    assert "\n  " in pretty.text
    assert "\n" in pretty.text.split('"name"', 1)[1]  # nested elements indented too
    compact = client.get(url, params={"_pretty": "false"})
    assert "\n" not in compact.text.strip()
    bundle = client.get(f"{url}/_history", params={"_pretty": "true"})
    assert bundle.json()["entry"][0]["resource"] == created
    assert '\n        "resourceType": "Patient"' in bundle.text  # the entry's resource indented
    assert "\n" in bundle.text.split('"name"', 1)[1]


# --- _summary / _elements --------------------------------------------------------------


def read(client, rid: str, **params: str) -> dict:
    r = client.get(f"/fhir/Patient/{rid}", params=params)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_summary_true(client):
    created = create(client, FULL_PATIENT)
    body = read(client, created["id"], _summary="true")
    # search.html#summary: "Return a limited subset of elements from the resource.
    # This subset SHOULD consist solely of all supported elements that are marked as
    # 'summary' in the base definition of the resource(s)"
    summary = {"identifier", "active", "name", "gender", "birthDate", "deceasedBoolean"}
    assert set(body) == {"resourceType", "id", "meta"} | summary
    for key in summary:
        assert body[key] == created[key]
    assert body["meta"]["versionId"] == "1"
    assert has_subsetted_tag(body)


def test_summary_text(client):
    created = create(client, FULL_PATIENT)
    # "Return only the text, id, meta, and top-level mandatory elements"
    body = read(client, created["id"], _summary="text")
    assert set(body) == {"resourceType", "id", "meta", "text"}
    assert body["text"] == created["text"]
    assert has_subsetted_tag(body)
    obs = create(client, observation(text=created["text"], valueString="x"))
    r = client.get(f"/fhir/Observation/{obs['id']}", params={"_summary": "text"})
    assert set(r.json()) == {"resourceType", "id", "meta", "text", "status", "code"}


def test_summary_data(client):
    created = create(client, FULL_PATIENT)
    # "Remove the text element"
    body = read(client, created["id"], _summary="data")
    assert "text" not in body
    without_text = {k: v for k, v in created.items() if k not in ("text", "meta")}
    assert {k: v for k, v in body.items() if k != "meta"} == without_text
    assert has_subsetted_tag(body)


def test_summary_false_is_everything(client):
    created = create(client, FULL_PATIENT)
    body = read(client, created["id"], _summary="false")
    assert body == created
    assert not has_subsetted_tag(body)


def test_summary_count_on_read_is_400(client):
    rid = create(client, patient())["id"]
    assert_outcome(client.get(f"/fhir/Patient/{rid}", params={"_summary": "count"}), 400)


def test_summary_on_vread_and_history(client):
    created = create(client, FULL_PATIENT)
    r = client.get(f"/fhir/Patient/{created['id']}/_history/1", params={"_summary": "true"})
    assert "contact" not in r.json()
    assert has_subsetted_tag(r.json())
    bundle = client.get(f"/fhir/Patient/{created['id']}/_history", params={"_summary": "true"})
    resource = bundle.json()["entry"][0]["resource"]
    assert "contact" not in resource
    assert has_subsetted_tag(resource)


def test_elements(client):
    created = create(client, FULL_PATIENT)
    # search.html#elements: only the listed elements (plus id/meta and mandatory
    # ones); "Servers SHOULD mark the resources with the tag SUBSETTED"
    body = read(client, created["id"], _elements="name,gender")
    assert set(body) == {"resourceType", "id", "meta", "name", "gender"}
    assert body["name"] == created["name"]
    assert has_subsetted_tag(body)
    # choice elements by their [x] name
    body = read(client, created["id"], _elements="deceased")
    assert set(body) == {"resourceType", "id", "meta", "deceasedBoolean"}
    # "Servers SHOULD always return mandatory elements whether they are requested or not"
    obs = create(client, observation(valueString="x", issued="2020-01-01T00:00:00Z"))
    r = client.get(f"/fhir/Observation/{obs['id']}", params={"_elements": "issued"})
    assert set(r.json()) == {"resourceType", "id", "meta", "issued", "status", "code"}


def test_elements_keeps_existing_tags(client):
    created = create(client, patient(meta={"tag": [{"system": "http://t", "code": "keep"}]}))
    body = read(client, created["id"], _elements="gender")
    codes = [t["code"] for t in body["meta"]["tag"]]
    assert sorted(codes) == ["SUBSETTED", "keep"]
    # and the stored resource is untouched by subsetting
    assert read(client, created["id"]) == created


def test_summary_and_elements_together_is_400(client):
    rid = create(client, patient())["id"]
    r = client.get(f"/fhir/Patient/{rid}", params={"_summary": "true", "_elements": "name"})
    assert_outcome(r, 400)


# --- Prefer: return --------------------------------------------------------------------


def test_prefer_return(client):
    # http.html#prefer: "return=minimal ... asks to return no body", "representation"
    # the full resource, "OperationOutcome" an OperationOutcome; without the header a
    # server may choose (this one returns the resource).
    minimal = post(client, patient(), Prefer="return=minimal")
    assert minimal.status_code == 201
    assert minimal.content == b""
    assert minimal.headers["etag"] == 'W/"1"'
    assert "/_history/1" in minimal.headers["location"]
    rid = minimal.headers["location"].split("/Patient/")[1].split("/")[0]

    full = client.get(f"/fhir/Patient/{rid}").json()
    r = put(client, {**full, "gender": "female"}, Prefer="return=representation")
    assert r.status_code == 200
    assert r.json()["gender"] == "female"

    r = put(client, {**full, "gender": "other"}, Prefer="return=OperationOutcome")
    assert r.status_code == 200
    assert r.json()["resourceType"] == "OperationOutcome"
    assert all(i["severity"] in ("information", "warning") for i in r.json()["issue"])
    assert r.headers["etag"] == 'W/"3"'

    ops = [{"op": "replace", "path": "/gender", "value": "male"}]
    r = patch(client, f"/fhir/Patient/{rid}", ops, Prefer="return=minimal")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["etag"] == 'W/"4"'

    r = post(client, patient())
    assert r.json()["resourceType"] == "Patient"  # default: the representation
    r = post(client, patient(), Prefer="return=nonsense")  # RFC 7240: unknown is ignored
    assert r.status_code == 201
    assert r.json()["resourceType"] == "Patient"


# --- conditional read ------------------------------------------------------------------


def test_if_none_match_and_if_modified_since(client):
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    # http.html#cread: "Servers can return 304 Not Modified where content is unchanged
    # since the If-Modified-Since date-time or the If-None-Match ETag specified"
    r = client.get(url, headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == 'W/"1"'
    assert client.get(url, headers={"If-None-Match": 'W/"9"'}).status_code == 200
    last_modified = client.get(url).headers["last-modified"]
    assert client.get(url, headers={"If-Modified-Since": last_modified}).status_code == 304
    old = "Sat, 01 Jan 2000 00:00:00 GMT"
    assert client.get(url, headers={"If-Modified-Since": old}).status_code == 200

    put(client, {**created, "gender": "female"})
    r = client.get(url, headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 200
    assert r.json()["gender"] == "female"


# --- metadata --------------------------------------------------------------------------


def test_capability_statement(client):
    r = client.get("/fhir/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(FHIR_JSON)
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    assert cs["kind"] == "instance"
    assert cs["status"] in ("active", "draft")
    assert "date" in cs
    assert "json" in cs["format"] or FHIR_JSON in cs["format"]
    assert all("xml" not in f for f in cs["format"])
    rest = cs["rest"][0]
    assert rest["mode"] == "server"
    types = {res["type"] for res in rest["resource"]}
    # every R4 resource type (4.0.1 defines 146), e.g.:
    expected = {
        "Patient",
        "Observation",
        "MedicationRequest",
        "Invoice",
        "Bundle",
        "Binary",
        "Parameters",
        "OperationOutcome",
        "ChargeItemDefinition",
        "VerificationResult",
    }
    assert expected <= types
    assert len(types) == 146
    assert "Resource" not in types and "DomainResource" not in types


MINIMAL = {
    "Patient": patient(),
    "Observation": observation(valueString="x"),
    "MedicationRequest": {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "aspirin"},
        "subject": {"reference": "Patient/p"},
    },
    "Invoice": {"resourceType": "Invoice", "status": "draft"},
    "Basic": {"resourceType": "Basic", "code": {"text": "thing"}},
}


@pytest.mark.parametrize("rtype", sorted(MINIMAL))
def test_every_listed_interaction_works(client, rtype):
    cs = client.get("/fhir/metadata").json()
    rest = cs["rest"][0]
    entry = next(res for res in rest["resource"] if res["type"] == rtype)
    codes = [i["code"] for i in entry["interaction"]]
    assert {"read", "create", "update", "delete"} <= set(codes)
    resource = MINIMAL[rtype]
    rid = create(client, resource)["id"]
    url = f"/fhir/{rtype}/{rid}"

    def current() -> dict:
        return client.get(url).json()  # type: ignore[no-any-return]

    def do_read() -> None:
        r = client.get(url)
        assert r.status_code == 200 and r.json()["id"] == rid

    def do_vread() -> None:
        r = client.get(f"{url}/_history/1")
        assert r.status_code == 200 and r.json()["meta"]["versionId"] == "1"

    def do_update() -> None:
        body = current()
        r = put(client, {**body, "meta": {"tag": [{"system": "http://t", "code": "u"}]}})
        assert r.status_code == 200, r.text
        assert int(r.json()["meta"]["versionId"]) > int(body["meta"]["versionId"])

    def do_patch() -> None:
        ops = [{"op": "add", "path": "/language", "value": "es"}]
        r = patch(client, url, ops)
        assert r.status_code == 200 and r.json()["language"] == "es", r.text

    def do_history_instance() -> None:
        r = client.get(f"{url}/_history")
        assert r.status_code == 200 and r.json()["type"] == "history"

    def do_history_type() -> None:
        r = client.get(f"/fhir/{rtype}/_history")
        assert r.status_code == 200 and r.json()["entry"]

    def do_create() -> None:
        r = post(client, resource)
        assert r.status_code == 201, r.text

    def do_delete() -> None:
        other = create(client, resource)["id"]
        assert client.delete(f"/fhir/{rtype}/{other}").status_code in (200, 204)
        assert client.get(f"/fhir/{rtype}/{other}").status_code == 410

    def do_search_type() -> None:
        r = client.get(f"/fhir/{rtype}")
        assert r.status_code == 200 and r.json()["type"] == "searchset"

    actions = {
        "read": do_read,
        "vread": do_vread,
        "update": do_update,
        "patch": do_patch,
        "history-instance": do_history_instance,
        "history-type": do_history_type,
        "create": do_create,
        "delete": do_delete,
        "search-type": do_search_type,
    }
    unknown = set(codes) - set(actions)
    assert not unknown, f"the test does not know how to exercise {unknown}"
    for code in codes:
        actions[code]()

    # conditional support declared in the statement works too
    if entry.get("conditionalCreate"):
        r = post(client, resource, **{"If-None-Exist": f"_id={rid}"})
        assert r.status_code == 200
    if entry.get("conditionalUpdate"):
        r = client.put(
            f"/fhir/{rtype}?_id={rid}",
            content=json.dumps(current()),
            headers={"Content-Type": FHIR_JSON},
        )
        assert r.status_code == 200, r.text
    if entry.get("conditionalRead") in ("modified-since", "not-match", "full-support"):
        etag = client.get(url).headers["etag"]
        assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    if entry.get("conditionalDelete") in ("single", "multiple"):
        r = client.delete(f"/fhir/{rtype}?_id={rid}")
        assert r.status_code in (200, 204)
        assert client.get(url).status_code == 410


def test_every_listed_system_interaction_works(client):
    rest = client.get("/fhir/metadata").json()["rest"][0]
    create(client, patient())
    for code in [i["code"] for i in rest.get("interaction", [])]:
        if code == "history-system":
            r = client.get("/fhir/_history")
            assert r.status_code == 200 and r.json()["entry"]
        elif code == "search-system":
            assert client.get("/fhir", params={"_id": "x"}).status_code == 200
        elif code in ("transaction", "batch"):
            bundle = {"resourceType": "Bundle", "type": code, "entry": []}
            r = client.post(
                "/fhir", content=json.dumps(bundle), headers={"Content-Type": FHIR_JSON}
            )
            assert r.status_code == 200
        else:
            pytest.fail(f"the test does not know how to exercise system interaction {code}")
