"""SMART scopes on writes, conditional interactions, $validate, transactions and
batches (issue #5): a write needs a scope for its interaction, and the resource before
and after the change must be within the token's reach, so a patient's app can neither
touch another patient's data nor move its own out of the compartment. A resource out of
reach is as missing (issue 11: no existence oracle, see test_smart_write_oracles.py);
one the token sees but may not change, or a change that would move it out, is 403.
Conditional criteria only ever match within that reach, so they cannot probe."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import patch_request
from smart_helpers import ADMIN, IDENT, TokenMint, ids, observation, smart_client

World = tuple[TestClient, TokenMint]


@pytest.fixture
def world(mongo_url: str) -> Iterator[World]:
    with smart_client(mongo_url) as found:
        yield found


def call(world: World, scope: str, method: str, url: str, **kwargs: Any) -> Any:
    client, mint = world
    patient = kwargs.pop("patient", "pa")
    headers = {**mint.headers(scope, patient=patient), **kwargs.pop("headers", {})}
    return client.request(method, f"/fhir/{url}", headers=headers, **kwargs)


def admin_read(world: World, url: str) -> Any:
    client, mint = world
    return client.get(f"/fhir/{url}", headers=mint.headers(ADMIN))


def new_obs(patient: str, category: str = "laboratory") -> dict[str, Any]:
    resource = observation("x", patient, category)
    del resource["id"]
    resource["identifier"] = [{"system": IDENT, "value": f"new-{patient}"}]
    return resource


# (scope, method, url, body, status)
WRITES: list[tuple[str, str, str, Any, int]] = [
    # create
    ("patient/Observation.c", "POST", "Observation", new_obs("pa"), 201),
    ("patient/Observation.c", "POST", "Observation", new_obs("pb"), 403),
    ("patient/Observation.rs", "POST", "Observation", new_obs("pa"), 403),
    ("patient/Observation.write", "POST", "Observation", new_obs("pa"), 201),
    ("patient/Observation.*", "POST", "Observation", new_obs("pa"), 201),
    ("patient/Observation.read", "POST", "Observation", new_obs("pa"), 403),
    ("patient/*.cruds", "POST", "Practitioner", {"resourceType": "Practitioner"}, 403),
    ("system/Practitioner.c", "POST", "Practitioner", {"resourceType": "Practitioner"}, 201),
    ("user/*.c", "POST", "Observation", new_obs("pb"), 201),  # practitioner user
    (
        "patient/Observation.c?category=laboratory",
        "POST",
        "Observation",
        new_obs("pa", "vital-signs"),
        403,
    ),
    ("patient/Observation.c?category=laboratory", "POST", "Observation", new_obs("pa"), 201),
    # update
    (
        "patient/Observation.u",
        "PUT",
        "Observation/oa-lab",
        observation("oa-lab", "pa", "laboratory"),
        200,
    ),
    (
        "patient/Observation.u",
        "PUT",
        "Observation/ob-lab",
        observation("ob-lab", "pa", "laboratory"),
        405,  # another patient's: as for a missing id (test_smart_write_oracles.py)
    ),
    (
        "patient/Observation.u",
        "PUT",
        "Observation/oa-lab",
        observation("oa-lab", "pb", "laboratory"),
        403,
    ),
    (
        "patient/Observation.cu",
        "PUT",
        "Observation/brand-new",
        observation("brand-new", "pa", "laboratory"),
        405,  # no update-as-create for a token limited to a patient's record
    ),
    (
        "patient/Observation.u",
        "PUT",
        "Observation/brand-new",
        observation("brand-new", "pa", "laboratory"),
        405,
    ),
    (
        "patient/Observation.rs",
        "PUT",
        "Observation/oa-lab",
        observation("oa-lab", "pa", "laboratory"),
        403,
    ),
    # delete
    ("patient/Observation.d", "DELETE", "Observation/oa-vital", None, 200),
    # out of reach deletes as a missing id does (http.html#delete: success)
    ("patient/Observation.d", "DELETE", "Observation/ob-vital", None, 200),
    ("patient/Observation.rs", "DELETE", "Observation/oa-vital", None, 403),
    ("patient/Observation.d?category=laboratory", "DELETE", "Observation/oa-vital", None, 200),
    # $validate previews a write: it takes that write's scope
    ("patient/Observation.c", "POST", "Observation/$validate", new_obs("pa"), 200),
    ("patient/Observation.rs", "POST", "Observation/$validate", new_obs("pa"), 403),
    (
        "patient/Observation.u",
        "POST",
        "Observation/oa-lab/$validate?mode=update",
        observation("oa-lab", "pa", "laboratory"),
        200,
    ),
    (
        "patient/Observation.u",
        "POST",
        "Observation/ob-lab/$validate?mode=update",
        observation("ob-lab", "pb", "laboratory"),
        404,
    ),
]


@pytest.mark.parametrize(("scope", "method", "url", "body", "status"), WRITES)
def test_write(world: World, scope: str, method: str, url: str, body: Any, status: int) -> None:
    r = call(world, scope, method, url, json=body)
    assert r.status_code == status, r.text
    if status == 403:
        assert r.json()["issue"][0]["code"] == "forbidden"
        assert r.json()["issue"][0]["expression"] == [url.split("/")[0]]


def test_refused_writes_change_nothing(world: World) -> None:
    scope = "patient/Observation.cruds"
    moved = observation("oa-lab", "pb", "laboratory")
    assert call(world, scope, "PUT", "Observation/oa-lab", json=moved).status_code == 403
    assert call(world, scope, "DELETE", "Observation/ob-lab").status_code == 200  # as missing
    oa = admin_read(world, "Observation/oa-lab").json()
    assert oa["subject"]["reference"] == "Patient/pa" and oa["meta"]["versionId"] == "1"
    assert admin_read(world, "Observation/ob-lab").status_code == 200
    assert admin_read(world, "Observation/brand-new").status_code == 404


def test_patch(world: World) -> None:
    scope = "patient/Observation.ru"  # a PATCH reads what it changes
    ok = [{"op": "replace", "path": "/status", "value": "amended"}]
    assert call(world, scope, "PATCH", "Observation/oa-lab", **patch_request(ok)).status_code == 200
    # a "test" op must not probe another patient's resource
    probe = [{"op": "test", "path": "/status", "value": "final"}]
    r = call(world, scope, "PATCH", "Observation/ob-lab", **patch_request(probe))
    assert r.status_code == 404, r.text  # as for a missing id
    move = [{"op": "replace", "path": "/subject/reference", "value": "Patient/pb"}]
    r = call(world, scope, "PATCH", "Observation/oa-vital", **patch_request(move))
    assert r.status_code == 403, r.text
    assert admin_read(world, "Observation/oa-vital").json()["subject"]["reference"] == "Patient/pa"
    r = call(world, "patient/Observation.rs", "PATCH", "Observation/oa-lab", **patch_request(ok))
    assert r.status_code == 403


def test_conditional_create_cannot_see_other_patients(world: World) -> None:
    scope = "patient/Observation.cruds"
    body = new_obs("pa")
    # ob-lab's identifier: the criteria do not find it, so a new resource is created
    r = call(
        world,
        scope,
        "POST",
        "Observation",
        json=body,
        headers={"If-None-Exist": f"identifier={IDENT}|ob-lab"},
    )
    assert r.status_code == 201, r.text
    r = call(
        world,
        scope,
        "POST",
        "Observation",
        json=body,
        headers={"If-None-Exist": f"identifier={IDENT}|oa-lab"},
    )
    assert r.status_code == 200 and r.json()["id"] == "oa-lab"


def test_conditional_update_and_patch_cannot_reach_other_patients(world: World) -> None:
    scope = "patient/Observation.cruds"
    body = observation("x", "pa", "laboratory")
    del body["id"]
    r = call(world, scope, "PUT", f"Observation?identifier={IDENT}|ob-lab", json=body)
    assert r.status_code == 201, r.text  # no match within reach: a new resource
    assert r.json()["id"] != "ob-lab"
    assert admin_read(world, "Observation/ob-lab").json()["subject"]["reference"] == "Patient/pb"
    ops = [{"op": "replace", "path": "/status", "value": "amended"}]
    r = call(world, scope, "PATCH", f"Observation?identifier={IDENT}|ob-lab", **patch_request(ops))
    assert r.status_code == 404, r.text
    r = call(world, scope, "PUT", f"Observation?identifier={IDENT}|oa-vital", json=body)
    assert r.status_code == 200 and r.json()["id"] == "oa-vital"


def test_conditional_delete_only_deletes_within_reach(world: World) -> None:
    scope = "patient/Observation.cruds"
    r = call(world, scope, "DELETE", "Observation?category=laboratory")
    assert r.status_code == 200, r.text
    assert admin_read(world, "Observation/oa-lab").status_code == 410
    assert admin_read(world, "Observation/ob-lab").status_code == 200
    r = call(world, "patient/Observation.rs", "DELETE", "Observation?category=laboratory")
    assert r.status_code == 403


def entry(method: str, url: str, resource: Any = None, **request: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        e["resource"] = resource
    return e


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def test_transaction_with_a_forbidden_entry_fails_whole(world: World) -> None:
    scope = "patient/Observation.cruds"
    tx = bundle(
        "transaction",
        entry("POST", "Observation", new_obs("pa")),
        entry("PUT", "Observation/ob-lab", observation("ob-lab", "pa", "laboratory")),
    )
    r = call(world, scope, "POST", "", json=tx)
    assert r.status_code == 405, r.text  # another patient's resource: as a missing id
    issue = r.json()["issue"][0]
    assert issue["code"] == "not-supported" and "Bundle.entry[1]" in issue["diagnostics"]
    found = admin_read(world, f"Observation?identifier={IDENT}|new-pa").json()
    assert ids(found) == set()  # the first entry was not kept
    # an entry of a type no scope covers
    tx = bundle(
        "transaction",
        entry("POST", "Observation", new_obs("pa")),
        entry(
            "POST",
            "Encounter",
            {"resourceType": "Encounter", "status": "planned", "class": {"code": "AMB"}},
        ),
    )
    r = call(world, scope, "POST", "", json=tx)
    assert r.status_code == 403 and "Bundle.entry[1]" in r.json()["issue"][0]["diagnostics"]
    # creating for another patient, a read out of reach
    for bad in (
        entry("POST", "Observation", new_obs("pb")),
        entry("GET", "Observation/ob-vital"),
    ):
        tx = bundle("transaction", entry("POST", "Observation", new_obs("pa")), bad)
        r = call(world, scope, "POST", "", json=tx)
        assert r.status_code in (403, 404), r.text
        assert "Bundle.entry[1]" in r.json()["issue"][0]["diagnostics"]
    assert ids(admin_read(world, f"Observation?identifier={IDENT}|new-pa").json()) == set()
    # deleting another patient's resource deletes nothing, as for a missing id
    r = call(
        world,
        scope,
        "POST",
        "",
        json=bundle("transaction", entry("DELETE", "Observation/ob-vital")),
    )
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"] == {"status": "204 No Content"}
    assert admin_read(world, "Observation/ob-vital").status_code == 200


def test_transaction_conditional_entries_stay_within_reach(world: World) -> None:
    scope = "patient/Observation.cruds"
    body = new_obs("pa")
    tx = bundle(
        "transaction",
        entry("POST", "Observation", body, ifNoneExist=f"identifier={IDENT}|ob-lab"),
        entry("DELETE", f"Observation?identifier={IDENT}|ob-vital"),
        entry("GET", "Observation/oa-lab"),
    )
    r = call(world, scope, "POST", "", json=tx)
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["201 Created", "204 No Content", "200 OK"]
    assert admin_read(world, "Observation/ob-vital").status_code == 200
    assert admin_read(world, "Observation/ob-lab").status_code == 200


def test_batch_entries_are_checked_one_by_one(world: World) -> None:
    scope = "patient/Observation.cruds"
    b = bundle(
        "batch",
        entry("GET", "Observation/oa-lab"),
        entry("GET", "Observation/ob-lab"),
        entry("POST", "Observation", new_obs("pb")),
        entry("POST", "Observation", new_obs("pa")),
        entry("GET", "Encounter/ea"),
        entry("GET", "Observation"),
    )
    r = call(world, scope, "POST", "", json=b)
    assert r.status_code == 200, r.text
    out = r.json()["entry"]
    assert [e["response"]["status"][:3] for e in out] == ["200", "404", "403", "201", "403", "200"]
    assert ids(out[5]["resource"]) >= {"Observation/oa-lab", "Observation/oa-vital"}
    assert not any(i.startswith("Observation/ob") for i in ids(out[5]["resource"]))


def test_binary_patch_entry_in_transaction_is_checked(world: World) -> None:
    ops = [{"op": "replace", "path": "/status", "value": "amended"}]
    binary = {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(json.dumps(ops).encode()).decode(),
    }
    scope = "patient/Observation.cruds"
    tx = bundle("transaction", entry("PATCH", "Observation/ob-lab", binary))
    r = call(world, scope, "POST", "", json=tx)
    assert r.status_code == 404, r.text  # another patient's: as for a missing id
    tx = bundle("transaction", entry("PATCH", "Observation/oa-lab", binary))
    assert call(world, scope, "POST", "", json=tx).status_code == 200


def test_history_hides_versions_from_before_a_resource_joined_the_record(world: World) -> None:
    """A practitioner moves ob-vital from pb's record to pa's: pa's app sees the
    version written for pa, not the one that belonged to pb (version-time compartment)."""
    client, mint = world
    moved = observation("ob-vital", "pa", "vital-signs")
    r = client.put("/fhir/Observation/ob-vital", json=moved, headers=mint.headers("user/*.u"))
    assert r.status_code == 200, r.text
    versions = []
    for url in ("Observation/ob-vital/_history", "Observation/_history", "_history"):
        r = call(world, "patient/*.rs", "GET", url)
        assert r.status_code == 200, r.text
        versions.append(
            {
                (e["resource"]["id"], e["resource"]["meta"]["versionId"])
                for e in r.json()["entry"]
                if e["resource"]["id"] == "ob-vital"
            }
        )
    assert versions == [{("ob-vital", "2")}] * 3
    assert call(world, "patient/*.rs", "GET", "Observation/ob-vital/_history/2").status_code == 200
    r = call(world, "patient/*.rs", "GET", "Observation/ob-vital/_history/1")
    assert r.status_code == 404  # vread: that version was in pb's record
    r = call(world, "patient/*.rs", "GET", "Observation/ob-vital/_history", patient="pb")
    assert r.status_code == 404  # pb no longer sees a resource now in pa's record


def test_transaction_conditional_references_resolve_within_reach(world: World) -> None:
    """http.html#trules conditional references ("Patient?name=...") are searches too:
    another patient cannot be found (412, no match), the token's own patient can."""
    scope = "patient/*.cruds"
    body = new_obs("pa")
    body["subject"] = {"reference": "Patient?name=Bravo"}
    r = call(
        world, scope, "POST", "", json=bundle("transaction", entry("POST", "Observation", body))
    )
    assert r.status_code == 412, r.text
    body["subject"] = {"reference": "Patient?name=Alpha"}
    r = call(
        world, scope, "POST", "", json=bundle("transaction", entry("POST", "Observation", body))
    )
    assert r.status_code == 200, r.text
    created = r.json()["entry"][0]["response"]["location"].split("/_history")[0]
    assert admin_read(world, created).json()["subject"]["reference"] == "Patient/pa"
