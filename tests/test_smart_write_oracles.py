"""Issue 11, finding 8 (writes): an existence oracle. A patient token's PATCH or DELETE
on another patient's resource got 403 while a missing id got 404 (or 200), so any
token with a write scope could tell which ids exist in other records. Writes on
resources outside the token's reach now answer exactly as for a missing resource: the
same status, the same OperationOutcome (up to the id), the same headers.

For DELETE that answer is success: http.html#delete, "Upon successful deletion, or if
the resource does not exist at all, the server should return either a 200 OK if the
response contains a payload, or a 204 No Content". For PUT it is a 405: a token limited
to one patient's record cannot update-as-create (any id it chose would tell whether
another record uses it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import binary_patch, patch_request
from smart_helpers import ADMIN, observation, smart_client

World = tuple[TestClient, Any]
THEIRS = "ob-lab"  # pb's
MISSING = "no-such-id"
HEADERS = ("etag", "location", "content-location", "last-modified")


@pytest.fixture(scope="module")
def world(mongo_url: str) -> Iterator[World]:
    """One world for the module: every attempt below must leave it unchanged (checked)."""
    with smart_client(mongo_url) as found:
        yield found


PROBE = [{"op": "test", "path": "/status", "value": "final"}]
REPLACE = [{"op": "replace", "path": "/status", "value": "amended"}]


def tx(kind: str, method: str, url: str, resource: Any = None, **req: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"request": {"method": method, "url": url, **req}}
    if resource is not None:
        entry["resource"] = resource
    return {"resourceType": "Bundle", "type": kind, "entry": [entry]}


def request_for(kind: str, rid: str) -> tuple[str, str, dict[str, Any]]:
    mine = observation(rid, "pa", "laboratory")
    if kind == "PATCH test":
        return "PATCH", f"Observation/{rid}", patch_request(PROBE)
    if kind == "PATCH":
        return "PATCH", f"Observation/{rid}", patch_request(REPLACE)
    if kind == "DELETE":
        return "DELETE", f"Observation/{rid}", {}
    if kind == "DELETE If-Match":
        return "DELETE", f"Observation/{rid}", {"headers": {"If-Match": 'W/"1"'}}
    if kind == "PUT":
        return "PUT", f"Observation/{rid}", {"json": mine}
    if kind == "PUT If-Match":
        return "PUT", f"Observation/{rid}", {"json": mine, "headers": {"If-Match": 'W/"1"'}}
    if kind == "conditional PUT with the id":
        # no match for the criteria; the body's id makes it an update-as-create
        return "PUT", "Observation?identifier=urn:none|none", {"json": mine}
    for bundle_kind in ("transaction", "batch"):
        if kind == f"{bundle_kind} PATCH":
            return (
                "POST",
                "",
                {"json": tx(bundle_kind, "PATCH", f"Observation/{rid}", binary_patch(PROBE))},
            )
        if kind == f"{bundle_kind} PUT":
            return "POST", "", {"json": tx(bundle_kind, "PUT", f"Observation/{rid}", mine)}
        if kind == f"{bundle_kind} DELETE":
            return "POST", "", {"json": tx(bundle_kind, "DELETE", f"Observation/{rid}")}
    raise AssertionError(kind)


KINDS = [
    "PATCH test",
    "PATCH",
    "DELETE",
    "DELETE If-Match",
    "PUT",
    "PUT If-Match",
    "conditional PUT with the id",
    "transaction PATCH",
    "transaction PUT",
    "transaction DELETE",
    "batch PATCH",
    "batch PUT",
    "batch DELETE",
]


def answer(world: World, scope: str, kind: str, rid: str) -> tuple[int, dict[str, str], Any]:
    """What the token learns: status, headers, body, with the id it asked about blanked."""
    client, mint = world
    method, url, options = request_for(kind, rid)
    headers = {**mint.headers(scope, patient="pa"), **options.pop("headers", {})}
    r = client.request(method, f"/fhir/{url}", headers=headers, **options)
    seen = {h: r.headers[h].replace(rid, "ID") for h in HEADERS if h in r.headers}
    body = json.loads(r.text.replace(rid, "ID")) if r.content else None
    return r.status_code, seen, body


@pytest.mark.parametrize("scope", ["patient/Observation.cruds", "patient/Observation.cuds"])
@pytest.mark.parametrize("kind", KINDS)
def test_writes_out_of_reach_answer_as_for_a_missing_id(
    world: World, scope: str, kind: str
) -> None:
    theirs = answer(world, scope, kind, THEIRS)
    missing = answer(world, scope, kind, MISSING)
    assert theirs == missing
    if "PATCH" in kind and scope.endswith(".cuds"):
        assert "403" in json.dumps(theirs), theirs  # a PATCH needs read: no lookup at all
    else:
        assert theirs[0] != 403, theirs
    client, mint = world
    stored = client.get(f"/fhir/Observation/{THEIRS}", headers=mint.headers(ADMIN))
    assert stored.status_code == 200 and stored.json()["meta"]["versionId"] == "1"
    assert stored.json()["status"] == "final"
