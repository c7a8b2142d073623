"""create / read / vread / update / delete / patch over HTTP, against FHIR R4 http.html.

Expectations come from the specification (quoted where subtle), not from the code.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from fhir_helpers import (
    BASE,
    FHIR_JSON,
    JSON_PATCH,
    assert_outcome,
    create,
    expressions,
    observation,
    patch,
    patient,
    post,
    put,
)

# --- create ----------------------------------------------------------------------------


def test_create_assigns_id_version_and_headers(client):
    # http.html#create: "If an id is provided, the server SHALL ignore it. If the request
    # body includes a meta, the server SHALL ignore the existing versionId and
    # lastUpdated values. The server SHALL populate the id, meta.versionId and
    # meta.lastUpdated with the new correct values."
    sent = patient(
        id="client-chosen", meta={"versionId": "99", "lastUpdated": "2001-01-01T00:00:00Z"}
    )
    before = datetime.now(UTC) - timedelta(seconds=2)
    r = post(client, sent)
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith(FHIR_JSON)
    assert "charset=utf-8" in r.headers["content-type"].lower()
    body = r.json()
    rid = body["id"]
    assert rid and rid != "client-chosen"
    assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", rid)
    # "Location: [base]/[type]/[id]/_history/[vid]"
    assert r.headers["location"] == f"{BASE}/Patient/{rid}/_history/1"
    assert r.headers["etag"] == 'W/"1"'
    assert body["meta"]["versionId"] == "1"
    last_updated = datetime.fromisoformat(body["meta"]["lastUpdated"].replace("Z", "+00:00"))
    assert before <= last_updated <= datetime.now(UTC) + timedelta(seconds=2)
    # Last-Modified is the same instant as meta.lastUpdated (HTTP dates have seconds).
    last_modified = parsedate_to_datetime(r.headers["last-modified"])
    assert last_modified == last_updated.replace(microsecond=0)
    # "A server SHOULD otherwise accept the resource as submitted"
    for key in ("active", "name", "gender", "birthDate"):
        assert body[key] == sent[key]


def test_create_ignores_even_a_malformed_client_id(client):
    # "If an id is provided, the server SHALL ignore it."
    for bad in ("bad id!", "", "x" * 100):
        r = post(client, patient(id=bad))
        assert r.status_code == 201, r.text
        assert r.json()["id"] != bad


def test_create_keeps_non_ascii_text(client):
    r = post(client, patient(name=[{"family": "Núñez", "given": ["Zoë", "李"]}]))
    assert r.status_code == 201
    assert r.json()["name"] == [{"family": "Núñez", "given": ["Zoë", "李"]}]
    read = client.get(f"/fhir/Patient/{r.json()['id']}")
    assert read.json()["name"][0]["family"] == "Núñez"
    # Bodies are UTF-8 (http.html#mime-type), whether escaped or not.
    assert "Núñez" in read.content.decode("utf-8") or "N\\u00fa\\u00f1ez" in read.text


def test_create_then_read_returns_what_was_created(client):
    created = create(client, patient(telecom=[{"system": "phone", "value": "+34 600"}]))
    r = client.get(f"/fhir/Patient/{created['id']}")
    assert r.status_code == 200
    assert r.json() == created
    assert r.headers["etag"] == 'W/"1"'
    assert "last-modified" in r.headers


def test_decimals_keep_their_precision_byte_for_byte(client):
    # datatypes.html#decimal: precision is significant; "1.50" is not "1.5".
    raw = (
        '{"resourceType":"Observation","status":"final","code":{"text":"dose"},'
        '"valueQuantity":{"value":1.50,"unit":"mg"},'
        '"component":[{"code":{"text":"c"},"valueQuantity":{"value":0.010}},'
        '{"code":{"text":"d"},"valueQuantity":{"value":123456789.123456789012345}}]}'
    )
    r = client.post("/fhir/Observation", content=raw, headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    responses = [
        r,
        client.get(f"/fhir/Observation/{rid}"),
        client.get(f"/fhir/Observation/{rid}/_history/1"),
        client.get(f"/fhir/Observation/{rid}/_history"),
        client.get(f"/fhir/Observation/{rid}", params={"_pretty": "true"}),
        client.get(f"/fhir/Observation/{rid}", params={"_summary": "data"}),
        client.get(f"/fhir/Observation/{rid}/_history", params={"_pretty": "true"}),
    ]
    for response in responses[1:]:
        assert response.status_code == 200, response.text
    for response in responses:
        text = response.content.decode()
        assert re.search(r'"value"\s*:\s*1\.50[,}\s]', text), text
        assert re.search(r'"value"\s*:\s*0\.010[,}\s]', text), text
        assert re.search(r'"value"\s*:\s*123456789\.123456789012345[,}\s]', text), text


def test_decimal_notation_survives_create_patch_and_pretty(client):
    raw = (
        '{"resourceType":"Observation","status":"final","code":{"text":"x"},'
        '"valueQuantity":{"value":0.0000001},'
        '"component":[{"code":{"text":"c"},"valueQuantity":{"value":1.0e2}}]}'
    )
    r = client.post("/fhir/Observation", content=raw, headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 201, r.text
    url = f"/fhir/Observation/{r.json()['id']}"
    # a patch re-serialises the stored resource: untouched decimals keep their text,
    # and a decimal sent in the patch is written as sent
    ops = (
        '[{"op": "add", "path": "/valueQuantity/unit", "value": "g"},'
        ' {"op": "add", "path": "/component/-", "value":'
        ' {"code": {"text": "d"}, "valueQuantity": {"value": 2.500}}}]'
    )
    patched = client.patch(url, content=ops, headers={"Content-Type": JSON_PATCH})
    assert patched.status_code == 200, patched.text
    for response in (r, patched, client.get(url), client.get(url, params={"_pretty": "true"})):
        text = response.content.decode()
        assert re.search(r'"value"\s*:\s*0\.0000001[,}\s]', text), text
        assert re.search(r'"value"\s*:\s*1\.0e2[,}\s]', text), text
    for response in (patched, client.get(url)):
        assert re.search(r'"value"\s*:\s*2\.500[,}\s]', response.text), response.text


# --- read / vread ----------------------------------------------------------------------


def test_read_unknown_is_404(client):
    assert_outcome(client.get("/fhir/Patient/does-not-exist"), 404)


def test_vread_every_version(client):
    created = create(client, patient(gender="male"))
    rid = created["id"]
    v2 = put(client, {**created, "gender": "female"})
    assert v2.status_code == 200
    v3 = put(client, {**created, "gender": "other"})
    assert v3.status_code == 200
    for vid, gender in ((1, "male"), (2, "female"), (3, "other")):
        r = client.get(f"/fhir/Patient/{rid}/_history/{vid}")
        assert r.status_code == 200, r.text
        # http.html#vread: "The returned resource SHALL have an id element with a value
        # that is the [id], and a meta.versionId element with a value of [vid]."
        assert r.json()["id"] == rid
        assert r.json()["meta"]["versionId"] == str(vid)
        assert r.json()["gender"] == gender
        assert r.headers["etag"] == f'W/"{vid}"'
        assert "last-modified" in r.headers
    assert_outcome(client.get(f"/fhir/Patient/{rid}/_history/4"), 404)
    assert client.get(f"/fhir/Patient/{rid}").json()["gender"] == "other"


# --- update ----------------------------------------------------------------------------


def test_update_creates_a_new_version(client):
    created = create(client, patient())
    rid = created["id"]
    # http.html#update: "If the request body includes a meta, the server SHALL ignore
    # the provided versionId and lastUpdated values."
    sent = {
        **created,
        "gender": "female",
        "meta": {"versionId": "77", "lastUpdated": "2001-01-01T00:00:00Z"},
    }
    r = put(client, sent)
    # "the server SHALL return either a 200 OK HTTP status code if the resource was
    # updated ... with a Last-Modified header, and an ETag header"
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    assert "last-modified" in r.headers
    body = r.json()
    assert body["id"] == rid
    assert body["gender"] == "female"
    assert body["meta"]["versionId"] == "2"
    assert body["meta"]["lastUpdated"] > created["meta"]["lastUpdated"]
    assert client.get(f"/fhir/Patient/{rid}").json() == body


def test_update_as_create_with_client_id(client):
    # http.html#upsert: servers MAY allow a client to PUT to a new id; "201 Created
    # status code if the resource was created", and SHOULD return a Location header.
    r = put(client, patient(id="chosen-by-client"))
    assert r.status_code == 201, r.text
    assert r.json()["id"] == "chosen-by-client"
    assert r.json()["meta"]["versionId"] == "1"
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"] == f"{BASE}/Patient/chosen-by-client/_history/1"
    assert client.get("/fhir/Patient/chosen-by-client").status_code == 200


def test_update_needs_an_id_equal_to_the_url(client):
    created = create(client, patient())
    rid = created["id"]
    # "If no id element is provided, or the id disagrees with the id in the URL, the
    # server SHALL respond with an HTTP 400 Bad Request error code"
    no_id = {k: v for k, v in created.items() if k != "id"}
    issues = assert_outcome(put(client, no_id, rid), 400)
    assert "Patient.id" in expressions(issues)
    issues = assert_outcome(put(client, {**created, "id": "another-id"}, rid), 400)
    assert "Patient.id" in expressions(issues)
    # nothing changed
    assert client.get(f"/fhir/Patient/{rid}").headers["etag"] == 'W/"1"'
    assert client.get("/fhir/Patient/another-id").status_code == 404


def test_resource_type_must_match_the_url(client):
    created = create(client, patient())
    rid = created["id"]
    for method, url, body in (
        ("PUT", f"/fhir/Patient/{rid}", observation(id=rid)),
        ("POST", "/fhir/Patient", observation()),
        ("POST", "/fhir/Patient", {"active": True}),  # no resourceType at all
    ):
        r = client.request(
            method, url, content=json.dumps(body), headers={"Content-Type": FHIR_JSON}
        )
        issues = assert_outcome(r, 400)
        assert "resourceType" in " ".join(expressions(issues)), issues
    assert client.get(f"/fhir/Patient/{rid}").json() == created


def test_identical_update_creates_no_new_version(client):
    # Server choice (documented in service/resources.py): a PUT whose content equals
    # the current version (ignoring meta.versionId/lastUpdated) is a no-op that
    # answers 200 with the current version rather than minting an identical one.
    created = create(client, patient())
    rid = created["id"]
    same = {**created, "meta": {"versionId": "1", "lastUpdated": "2020-01-01T00:00:00Z"}}
    r = put(client, same)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"1"'
    assert r.json() == created
    history = client.get(f"/fhir/Patient/{rid}/_history").json()
    assert history["total"] == 1
    # but any real change, meta.tag included, is a new version
    r = put(client, {**created, "meta": {"tag": [{"system": "http://x", "code": "y"}]}})
    assert r.headers["etag"] == 'W/"2"'


# --- delete ----------------------------------------------------------------------------


def test_delete_then_read_is_gone(client):
    created = create(client, patient())
    rid = created["id"]
    put(client, {**created, "gender": "female"})
    # http.html#delete: "Upon successful deletion ... the server should return either a
    # 200 OK if the response contains a payload, or a 204 No Content"
    r = client.delete(f"/fhir/Patient/{rid}")
    assert r.status_code == 200
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["severity"] in ("information", "warning")
    # "subsequent non-version specific reads of a resource return a 410"
    assert_outcome(client.get(f"/fhir/Patient/{rid}"), 410)
    # http.html#vread: "If the version referred to is actually one where the resource
    # was deleted, the server should return a 410 status code."
    assert_outcome(client.get(f"/fhir/Patient/{rid}/_history/3"), 410)
    # "the delete interaction does not remove a resource's version history"
    assert client.get(f"/fhir/Patient/{rid}/_history/1").json()["gender"] == "male"
    assert client.get(f"/fhir/Patient/{rid}/_history/2").json()["gender"] == "female"


def test_delete_with_return_minimal_is_204(client):
    rid = create(client, patient())["id"]
    r = client.delete(f"/fhir/Patient/{rid}", headers={"Prefer": "return=minimal"})
    assert r.status_code == 204
    assert r.content == b""
    assert client.get(f"/fhir/Patient/{rid}").status_code == 410


def test_delete_unknown_or_already_deleted_succeeds(client):
    # "Upon successful deletion, or if the resource does not exist at all, the server
    # should return either a 200 OK ... or a 204 No Content"; deleting an already
    # deleted resource "has no effect".
    assert client.delete("/fhir/Patient/never-existed").status_code in (200, 204)
    assert client.get("/fhir/Patient/never-existed").status_code == 404
    rid = create(client, patient())["id"]
    assert client.delete(f"/fhir/Patient/{rid}").status_code in (200, 204)
    assert client.delete(f"/fhir/Patient/{rid}").status_code in (200, 204)
    history = client.get(f"/fhir/Patient/{rid}/_history").json()
    assert history["total"] == 2  # the second delete added no version


def test_update_after_delete_brings_it_back_with_next_version(client):
    # "Resources that have been deleted may be 'brought back to life' by a subsequent
    # update interaction using an HTTP PUT."
    created = create(client, patient())
    rid = created["id"]
    client.delete(f"/fhir/Patient/{rid}")
    r = put(client, {**created, "gender": "female"})
    assert r.status_code in (200, 201), r.text
    assert r.json()["meta"]["versionId"] == "3"
    assert r.headers["etag"] == 'W/"3"'
    read = client.get(f"/fhir/Patient/{rid}")
    assert read.status_code == 200
    assert read.json()["gender"] == "female"
    assert client.get(f"/fhir/Patient/{rid}/_history/2").status_code == 410


# --- patch -----------------------------------------------------------------------------


def test_patch_replace_add_remove_test(client):
    created = create(client, patient(telecom=[{"system": "phone", "value": "1"}]))
    url = f"/fhir/Patient/{created['id']}"
    ops = [
        {"op": "test", "path": "/gender", "value": "male"},
        {"op": "replace", "path": "/gender", "value": "female"},
        {"op": "add", "path": "/name/0/given/-", "value": "María"},
        {"op": "add", "path": "/maritalStatus", "value": {"text": "married"}},
        {"op": "remove", "path": "/telecom"},
    ]
    r = patch(client, url, ops)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["gender"] == "female"
    assert body["name"][0]["given"] == ["José", "María"]
    assert body["maritalStatus"] == {"text": "married"}
    assert "telecom" not in body
    assert body["meta"]["versionId"] == "2"
    assert r.headers["etag"] == 'W/"2"'
    assert client.get(url).json() == body


def test_patch_failing_test_op_is_422_and_changes_nothing(client):
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    ops = [
        {"op": "test", "path": "/gender", "value": "female"},
        {"op": "replace", "path": "/active", "value": False},
    ]
    assert_outcome(patch(client, url, ops), 422)
    assert client.get(url).json() == created


def test_patch_making_the_resource_invalid_is_400(client):
    # http.html#patch: the result is processed "as an Update operation; all the version
    # and error handling etc applies": invalid content is 400.
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    r = patch(client, url, [{"op": "replace", "path": "/birthDate", "value": "1980-13-01"}])
    issues = assert_outcome(r, 400)
    assert "Patient.birthDate" in expressions(issues)
    r = patch(client, url, [{"op": "replace", "path": "/resourceType", "value": "Observation"}])
    assert_outcome(r, 400)
    assert client.get(url).json() == created


def test_patch_changing_the_id_is_400(client):
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    assert_outcome(patch(client, url, [{"op": "replace", "path": "/id", "value": "other"}]), 400)
    assert_outcome(patch(client, url, [{"op": "remove", "path": "/id"}]), 400)
    assert client.get(url).json() == created
    assert client.get("/fhir/Patient/other").status_code == 404


def test_patch_needs_json_patch_content_type(client):
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    ops = json.dumps([{"op": "replace", "path": "/gender", "value": "female"}])
    for content_type in (FHIR_JSON, "application/json", "application/merge-patch+json"):
        r = client.patch(url, content=ops, headers={"Content-Type": content_type})
        assert_outcome(r, 415)
    assert client.get(url).json() == created


def test_malformed_patch_documents_are_400(client):
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    bad_docs = [
        {"op": "replace", "path": "/gender", "value": "female"},  # not an array
        [],
        [{"path": "/gender", "value": "female"}],  # no op
        [{"op": "replace", "value": "female"}],  # no path
        [{"op": "frobnicate", "path": "/gender", "value": "female"}],
        [{"op": "replace", "path": "/gender"}],  # no value
        [{"op": "move", "path": "/gender"}],  # no from
        [{"op": "replace", "path": "gender", "value": "female"}],  # not a JSON Pointer
        [{"op": "replace", "path": 3, "value": "female"}],
        ["replace"],
        "replace",
    ]
    for doc in bad_docs:
        assert_outcome(patch(client, url, doc), 400)
    r = client.patch(url, content=b"[{", headers={"Content-Type": "application/json-patch+json"})
    assert_outcome(r, 400)
    assert client.get(url).json() == created


def test_patch_unknown_or_deleted_resource(client):
    ops = [{"op": "replace", "path": "/gender", "value": "female"}]
    assert_outcome(patch(client, "/fhir/Patient/nobody", ops), 404)
    rid = create(client, patient())["id"]
    client.delete(f"/fhir/Patient/{rid}")
    assert_outcome(patch(client, f"/fhir/Patient/{rid}", ops), 410)


def test_patch_path_that_does_not_exist_is_rejected(client):
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    r = patch(client, url, [{"op": "replace", "path": "/contact/0/gender", "value": "male"}])
    assert_outcome(r, (400, 422))
    assert client.get(url).json() == created
