"""Searches embedded in other requests (issue 11, finding 3) are compiled under the
token's policy exactly as the search API compiles them: conditional headers and URLs,
conditional references in transactions, and the search parameters of granular scopes.
Each test is an oracle attack: the answer must not depend on the fact probed.
(``_typeFilter`` is in test_bulk_export_authz.py: it needs a worker.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from smart_helpers import ADMIN, TokenMint, observation, smart_client

HIV = "http://snomed.info/sct|86406008"
OTHER = "http://snomed.info/sct|38341003"
# pa's observations whose performer has an encounter coded ``code`` (any patient's)
HAS = "performer:Practitioner._has:Encounter:practitioner:reason-code={code}"


@pytest.fixture
def world(mongo_url: str) -> Iterator[tuple[TestClient, TokenMint]]:
    """smart_helpers' world plus an HIV-coded Encounter of ``pb`` with ``dr``, the
    practitioner who also performed ``pa``'s lab result."""
    with smart_client(mongo_url) as (client, mint):
        hiv = {
            "resourceType": "Encounter",
            "id": "eb-hiv",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "Patient/pb"},
            "participant": [{"individual": {"reference": "Practitioner/dr"}}],
            "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "86406008"}]}],
        }
        r = client.put("/fhir/Encounter/eb-hiv", json=hiv, headers=mint.headers(ADMIN))
        assert r.status_code == 201
        yield client, mint


def answer(r: Any) -> str:
    """A response as an attacker compares it: status, and the first issue's code (an
    error) or the number of entries (a Bundle)."""
    if r.status_code >= 400:
        return f"{r.status_code} {r.json()['issue'][0]['code']}"
    if r.status_code == 200 and r.json().get("resourceType") == "Bundle":
        return f"200 {len(r.json().get('entry', []))} entries"
    return str(r.status_code)


def test_conditional_criteria_cannot_chain_into_a_type_the_token_may_not_search(
    world: tuple[TestClient, TokenMint],
) -> None:
    """An Observation-only token probes Patient names through the criteria of every
    conditional interaction: each is refused as the search API refuses the chain."""
    client, mint = world
    token = mint.headers("system/Observation.cruds")
    new = observation("new", "pa", "vital-signs")
    answers: dict[str, list[str]] = {}
    for name in ("Alpha", "Nobody"):
        criteria = f"subject:Patient.name={name}"
        answers[name] = [
            answer(client.get(f"/fhir/Observation?{criteria}", headers=token)),
            answer(
                client.post(
                    "/fhir/Observation", json=new, headers={**token, "If-None-Exist": criteria}
                )
            ),
            answer(client.put(f"/fhir/Observation?{criteria}", json=new, headers=token)),
            answer(client.delete(f"/fhir/Observation?{criteria}", headers=token)),
            answer(
                client.patch(
                    f"/fhir/Observation?{criteria}",
                    json=[{"op": "replace", "path": "/status", "value": "amended"}],
                    headers={**token, "Content-Type": "application/json-patch+json"},
                )
            ),
        ]
    assert answers["Alpha"] == answers["Nobody"] == ["403 forbidden"] * 5


def test_conditional_criteria_has_sees_only_the_tokens_patient(
    world: tuple[TestClient, TokenMint],
) -> None:
    """Patient ``pa``'s token asks, through If-None-Exist and a conditional update,
    whether the practitioner it shares with ``pb`` has an HIV-coded encounter. The
    search API sees only pa's encounters (no match): so do the conditions."""
    client, mint = world
    token = mint.headers("patient/*.cruds", patient="pa")
    answers: dict[str, list[str]] = {}
    for n, code in enumerate((HIV, OTHER)):
        criteria = HAS.format(code=code)
        new = observation(f"new{n}", "pa", "vital-signs")
        del new["id"]
        answers[code] = [
            answer(client.get(f"/fhir/Observation?{criteria}", headers=token)),
            answer(
                client.post(
                    "/fhir/Observation", json=new, headers={**token, "If-None-Exist": criteria}
                )
            ),
        ]
    # 201: no match, a new resource; a match would have answered 200 with oa-lab
    assert answers[HIV] == answers[OTHER] == ["200 0 entries", "201"]


def test_conditional_references_resolve_under_the_tokens_policy(
    world: tuple[TestClient, TokenMint],
) -> None:
    """http.html#trules: a conditional reference ``Patient?...`` "is resolved as a
    search". Patient ``pa``'s token names ``pb`` by name: it must find nothing, as
    its search would, so the transaction fails exactly as for a name nobody has.
    An Observation-only token may not search Patient at all: refused either way."""
    client, mint = world

    def transaction(headers: dict[str, str], reference: str) -> str:
        resource = observation("x", "pa", "vital-signs")
        del resource["id"], resource["encounter"]
        resource["subject"] = {"reference": reference}
        entry = {"resource": resource, "request": {"method": "POST", "url": "Observation"}}
        body = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
        return answer(client.post("/fhir", json=body, headers=headers))

    own = mint.headers("patient/*.cruds", patient="pa")
    assert transaction(own, "Patient?name=Bravo") == transaction(own, "Patient?name=Nobody")
    assert transaction(own, "Patient?name=Bravo") == "412 conflict"
    observations = mint.headers("system/Observation.cruds")
    answers = {transaction(observations, f"Patient?name={n}") for n in ("Alpha", "Nobody")}
    assert answers == {"403 forbidden"}


def test_a_granular_scope_cannot_chain_outside_the_token(
    world: tuple[TestClient, TokenMint],
) -> None:
    """A client may ask for any scope narrower than its own, parameters included
    (smart_auth.clients.scope_covered). A granular scope whose parameter chains
    through ``_has`` into other patients' encounters would make the token's own view
    answer the question: such a scope grants nothing, whatever the answer."""
    client, mint = world
    answers = {}
    for code in (HIV, OTHER):
        scope = f"patient/Observation.rs?{HAS.format(code=code)} patient/Patient.rs"
        token = mint.headers(scope, patient="pa")
        answers[code] = answer(client.get("/fhir/Observation", headers=token))
    assert answers[HIV] == answers[OTHER] == "403 forbidden"


def test_conditional_criteria_read_this_servers_absolute_references_as_search_does(
    world: tuple[TestClient, TokenMint],
) -> None:
    """search.html#reference: a reference parameter may be an absolute URL; one on this
    server's base names the same resource as ``Type/id``. The search API finds pa's
    vital-signs result that way, so If-None-Exist with the same criteria must find it
    too (and not create a duplicate)."""
    client, mint = world
    token = mint.headers(ADMIN)
    criteria = "subject=http://testserver/fhir/Patient/pa&category=vital-signs"
    assert answer(client.get(f"/fhir/Observation?{criteria}", headers=token)) == "200 1 entries"
    new = observation("dup", "pa", "vital-signs")
    del new["id"]
    r = client.post("/fhir/Observation", json=new, headers={**token, "If-None-Exist": criteria})
    assert r.status_code == 200 and r.json()["id"] == "oa-vital"
