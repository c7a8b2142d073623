"""Issue 11, finding 7: tokens that may only write could read.

- A create-only token (``system/Observation.c``) got a whole stored resource back from
  ``If-None-Exist: _id=...``: http.html#ccreate, "One Match: The server ignores the post
  and returns 200 OK" says nothing of a body, and the server returned the match.
- An update-only token got one back from a PATCH that changes nothing; and, once that
  was withheld, still learnt what a resource holds: a JSON Patch ``remove`` or
  ``replace`` of a path the resource lacks fails (RFC 6902 section 4.2: "The target
  location MUST exist for the operation to be successful"), so 200 against 422 says
  whether an element exists, and a ``test`` op compares values outright.
- Conditional criteria answer differently for no, one and several matches, and the
  spec requires the last to be a 412 (http.html#ccreate and #cond-update: "Multiple
  matches: The server returns a 412 Precondition Failed error indicating the client's
  criteria were not selective enough"), so a token without ``s`` could search.

The rules: conditional criteria need the search scope (403 before they are evaluated);
a write answers with the resource only to a token that may read it (Prefer is then
ignored); a PATCH is a read-modify-write, so it needs the read scope on the type besides
update (403 before the resource is loaded, the same whether it exists or not), and a
resource the token may change but not read is patched as a missing one."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import patch_request
from smart_helpers import ADMIN, CATEGORY, observation, smart_client

World = tuple[TestClient, Any]
REPRESENTATION = {"Prefer": "return=representation"}


@pytest.fixture(scope="module")
def world(mongo_url: str) -> Iterator[World]:
    with smart_client(mongo_url) as found:
        yield found


def send(world: World, scope: str, method: str, url: str, **kwargs: Any) -> Any:
    client, mint = world
    headers = {**mint.headers(scope), **REPRESENTATION, **kwargs.pop("headers", {})}
    return client.request(method, f"/fhir/{url}", headers=headers, **kwargs)


def version(world: World, rid: str) -> str:
    client, mint = world
    r = client.get(f"/fhir/Observation/{rid}", headers=mint.headers(ADMIN))
    return str(r.json()["meta"]["versionId"])


def new_obs() -> dict[str, Any]:
    body = observation("x", "pa", "laboratory")
    del body["id"]
    return body


def secret_free(r: Any) -> None:
    """The answer carries nothing of the stored resource."""
    assert "code-oa-lab" not in r.text and "Patient/pa" not in r.text, r.text


def test_create_only_token_gets_no_resource_from_if_none_exist(world: World) -> None:
    criteria = {"If-None-Exist": "_id=oa-lab"}
    r = send(world, "system/Observation.c", "POST", "Observation", json=new_obs(), headers=criteria)
    assert r.status_code == 403, r.text  # criteria are a search: no s, not evaluated
    assert r.json()["issue"][0]["expression"] == ["If-None-Exist"]
    secret_free(r)
    # with search but without read: the spec's 200, the match's id, no body
    r = send(
        world, "system/Observation.cs", "POST", "Observation", json=new_obs(), headers=criteria
    )
    assert r.status_code == 200, r.text
    assert r.content == b""
    assert "/Observation/oa-lab/" in r.headers["content-location"]
    # a token that may read gets the resource, as before
    r = send(
        world, "system/Observation.crs", "POST", "Observation", json=new_obs(), headers=criteria
    )
    assert r.status_code == 200 and r.json()["id"] == "oa-lab"


def test_update_only_token_cannot_probe_with_patch(world: World) -> None:
    """The attack: PATCH remove/replace on a path that exists, one that does not, a
    ``test`` op, and an id that does not exist. Every answer is the same 403 and
    nothing is changed."""
    scope = "system/Observation.u"
    probes = {
        "existing path": ("oa-lab", [{"op": "remove", "path": "/encounter"}]),
        "missing path": ("oa-lab", [{"op": "remove", "path": "/valueString"}]),
        "replace missing": ("oa-lab", [{"op": "replace", "path": "/nothing/here", "value": 1}]),
        "test op": ("oa-lab", [{"op": "test", "path": "/status", "value": "final"}]),
        "missing id": ("no-such-obs", [{"op": "remove", "path": "/encounter"}]),
    }
    answers = {}
    for name, (rid, ops) in probes.items():
        r = send(world, scope, "PATCH", f"Observation/{rid}", **patch_request(ops))
        assert r.status_code == 403, (name, r.text)
        secret_free(r)
        answers[name] = r.json()
    assert all(a == answers["missing id"] for a in answers.values()), answers
    issue = answers["missing id"]["issue"][0]
    assert issue["code"] == "forbidden" and issue["expression"] == ["Observation"]
    # conditional PATCH: refused before its criteria are evaluated
    r = send(world, "system/Observation.us", "PATCH", "Observation?_id=oa-lab", **patch_request([]))
    assert r.status_code == 403 and r.json() == answers["missing id"], r.text
    assert version(world, "oa-lab") == "1"
    assert "encounter" in send(world, ADMIN, "GET", "Observation/oa-lab").json()


def test_patch_of_a_resource_the_token_may_change_but_not_read_is_as_missing(
    world: World,
) -> None:
    """Read granted on part of the type only (vital signs): a laboratory result it may
    update is patched as a missing id, whatever the operations would find."""
    scope = f"system/Observation.u system/Observation.r?category={CATEGORY}|vital-signs"
    present = [{"op": "remove", "path": "/encounter"}]
    absent = [{"op": "remove", "path": "/valueString"}]
    a = send(world, scope, "PATCH", "Observation/oa-lab", **patch_request(present))
    b = send(world, scope, "PATCH", "Observation/oa-lab", **patch_request(absent))
    c = send(world, scope, "PATCH", "Observation/no-such-obs", **patch_request(present))
    assert a.status_code == b.status_code == c.status_code == 404, (a.text, b.text, c.text)
    assert a.text == b.text == c.text.replace("no-such-obs", "oa-lab")
    assert version(world, "oa-lab") == "1"
    # within what it may read, the patch applies and answers with the result
    same = [{"op": "replace", "path": "/status", "value": "final"}]
    r = send(world, scope, "PATCH", "Observation/oa-vital", **patch_request(same))
    assert r.status_code == 200 and r.json()["id"] == "oa-vital", r.text


def test_a_token_that_may_read_patches_and_gets_the_reasons(world: World) -> None:
    same = [{"op": "replace", "path": "/status", "value": "final"}]  # changes nothing
    missing = [{"op": "replace", "path": "/nothing/here", "value": 1}]
    moved = [{"op": "copy", "from": "/code/coding/0/code", "path": "/issued"}]
    scope = "system/Observation.ru"
    r = send(world, scope, "PATCH", "Observation/oa-lab", **patch_request(same))
    assert r.status_code == 200 and r.json()["id"] == "oa-lab"
    r = send(world, scope, "PATCH", "Observation/oa-lab", **patch_request(missing))
    assert r.status_code == 422 and "code-oa-lab" in r.text
    r = send(world, scope, "PATCH", "Observation/oa-lab", **patch_request(moved))
    assert r.status_code in (400, 422) and "code-oa-lab" in r.text
    assert version(world, "oa-lab") == "1"


LAB = f"category={CATEGORY}|laboratory"  # oa-lab and ob-lab: several matches


@pytest.mark.parametrize(
    ("scope", "method", "url", "body"),
    [
        ("system/Observation.u", "PUT", f"Observation?{LAB}", {"json": new_obs()}),
        (
            "system/Observation.ru",
            "PATCH",
            f"Observation?{LAB}",
            patch_request([{"op": "replace", "path": "/status", "value": "final"}]),
        ),
        ("system/Observation.d", "DELETE", f"Observation?{LAB}", {}),
        ("system/Observation.write", "PUT", f"Observation?{LAB}", {"json": new_obs()}),
    ],
)
def test_conditional_writes_without_search_scope_do_not_search(
    world: World, scope: str, method: str, url: str, body: dict[str, Any]
) -> None:
    r = send(world, scope, method, url, **body)
    assert r.status_code == 403, r.text  # not 412 ("several matches")
    assert r.json()["issue"][0]["code"] == "forbidden"
    assert r.json()["issue"][0]["expression"] == ["url"]
    assert version(world, "oa-lab") == "1" and version(world, "ob-lab") == "1"


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def test_transaction_and_batch_entries_follow_the_same_rules(world: World) -> None:
    conditional = {
        "request": {"method": "POST", "url": "Observation", "ifNoneExist": "_id=oa-lab"},
        "resource": new_obs(),
    }
    r = send(world, "system/Observation.c", "POST", "", json=bundle("transaction", conditional))
    assert r.status_code == 403, r.text
    issue = r.json()["issue"][0]
    assert "Bundle.entry[0]" in issue["diagnostics"]
    assert issue["expression"] == ["Bundle.entry[0].request.ifNoneExist"]
    r = send(world, "system/Observation.cs", "POST", "", json=bundle("transaction", conditional))
    assert r.status_code == 200, r.text
    assert "resource" not in r.json()["entry"][0]
    secret_free(r)
    r = send(world, "system/Observation.c", "POST", "", json=bundle("batch", conditional))
    assert r.json()["entry"][0]["response"]["status"].startswith("403")
    r = send(world, "system/Observation.cs", "POST", "", json=bundle("batch", conditional))
    assert r.json()["entry"][0]["response"]["status"] == "200 OK"
    assert "resource" not in r.json()["entry"][0]
    secret_free(r)
    conditional_put = {
        "request": {"method": "PUT", "url": f"Observation?{LAB}"},
        "resource": new_obs(),
    }
    r = send(world, "system/Observation.u", "POST", "", json=bundle("transaction", conditional_put))
    assert r.status_code == 403, r.text
    assert r.json()["issue"][0]["expression"] == ["Bundle.entry[0].request.url"]
    ops = [{"op": "replace", "path": "/status", "value": "final"}]
    patch = {
        "request": {"method": "PATCH", "url": "Observation/oa-lab"},
        "resource": {
            "resourceType": "Binary",
            "contentType": "application/json-patch+json",
            "data": base64.b64encode(json.dumps(ops).encode()).decode(),
        },
    }
    # PATCH entries need read as well: 403 naming the entry, before anything is loaded
    absent = [{"op": "remove", "path": "/valueString"}]
    missing = {
        "request": {"method": "PATCH", "url": "Observation/no-such-obs"},
        "resource": {
            **patch["resource"],
            "data": base64.b64encode(json.dumps(absent).encode()).decode(),
        },
    }
    answers = []
    for entry in (patch, missing):
        r = send(world, "system/Observation.u", "POST", "", json=bundle("transaction", entry))
        assert r.status_code == 403, r.text
        secret_free(r)
        answers.append(r.json())
    assert answers[0] == answers[1]
    assert answers[0]["issue"][0]["expression"] == ["Bundle.entry[0].request.method"]
    statuses = []
    for entry in (patch, missing):
        r = send(world, "system/Observation.u", "POST", "", json=bundle("batch", entry))
        assert r.status_code == 200, r.text
        secret_free(r)
        statuses.append(r.json()["entry"][0]["response"])
    assert statuses[0] == statuses[1] and statuses[0]["status"].startswith("403")
    r = send(world, "system/Observation.ru", "POST", "", json=bundle("transaction", patch))
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["resource"]["id"] == "oa-lab"
    assert version(world, "oa-lab") == "1"


def test_only_a_token_that_may_read_gets_the_written_resource(world: World) -> None:
    """One rule for every write's answer: the resource only to a token that may read
    it, whatever Prefer asks (a create-only token gets Location and ETag)."""
    r = send(world, "system/Observation.cr", "POST", "Observation", json=new_obs())
    assert r.status_code == 201 and r.json()["resourceType"] == "Observation"
    r = send(world, "system/Observation.c", "POST", "Observation", json=new_obs())
    assert r.status_code == 201 and r.content == b"" and "location" in r.headers
