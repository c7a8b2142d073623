"""Attacks on bulk export's authorization (issue 11, findings 3, 4 and the Group oracle
of 8), through the real HTTP API with real tokens, a real worker and a real broker.

- ``_typeFilter`` is a search embedded in the kick-off: it must be compiled under the
  token's policy exactly as the search API compiles it, or the number of exported rows
  answers questions the token may not ask (the bulk data CapabilityStatement: "The FHIR
  server SHALL limit the data returned to only those FHIR resources for which the
  client is authorized").
- An export job belongs to the client, the user and the patient context that started
  it; anyone else is told exactly what a missing job tells them.
- ``Group/[id]/$export`` by a token that may not read the group answers the same
  whether the group exists or not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pymongo import MongoClient
from smart_helpers import TokenMint, seed
from test_bulk_export import (  # noqa: F401 (the worker fixtures)
    ASYNC,
    kick_off,
    make_settings,
    open_client,
    queue,
    wait,
    worker,
)

from fhir_server.config import Settings

HIV = "http://snomed.info/sct|86406008"
OTHER = "http://snomed.info/sct|38341003"


@pytest.fixture
def secured(mongo_url: str, queue: str, worker: Any) -> Iterator[tuple[TestClient, TokenMint]]:  # noqa: F811
    """The SMART test world (smart_helpers.world), plus an HIV-coded Encounter of
    patient ``pb`` with the practitioner ``dr``, who also performed ``pa``'s lab result."""
    settings: Settings = make_settings(mongo_url, queue, auth_enabled=True)
    mint = TokenMint(mongo_url, settings.database)
    try:
        with open_client(settings) as client:
            seed(client, mint)
            hiv = {
                "resourceType": "Encounter",
                "id": "eb-hiv",
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "subject": {"reference": "Patient/pb"},
                "participant": [{"individual": {"reference": "Practitioner/dr"}}],
                "reasonCode": [
                    {"coding": [{"system": "http://snomed.info/sct", "code": "86406008"}]}
                ],
            }
            admin = mint.headers("system/*.cruds")
            assert client.put("/fhir/Encounter/eb-hiv", json=hiv, headers=admin).status_code == 201
            yield client, mint
    finally:
        mint.close()
        with MongoClient(mongo_url) as mc:
            mc.drop_database(settings.database)


def exported_count(client: TestClient, url: str, headers: dict[str, str]) -> int | str:
    """Resources the export wrote, or the refusal's status and issue when refused."""
    r = client.get(url, headers={**ASYNC, **headers})
    if r.status_code != 202:
        issue = r.json()["issue"][0]
        return f"{r.status_code} {issue['code']} {issue.get('expression')}"
    manifest = wait(client, r.headers["Content-Location"], headers=headers)
    assert manifest.status_code == 200, manifest.text
    return sum(item["count"] for item in manifest.json()["output"])


def search_count(client: TestClient, url: str, headers: dict[str, str]) -> int | str:
    r = client.get(url, headers=headers)
    if r.status_code != 200:
        issue = r.json()["issue"][0]
        return f"{r.status_code} {issue['code']}"
    return len(r.json().get("entry", []))


# --- finding 3: _typeFilter under the token's policy ---------------------------------------


def test_type_filter_cannot_chain_into_a_type_the_token_may_not_search(
    secured: tuple[TestClient, TokenMint],
) -> None:
    """An Observation-only token probes Patient names through a chain: the exported row
    count must not depend on whether a patient of that name exists. The search API
    refuses the chain (403): so must the export."""
    client, mint = secured
    observations = mint.headers("system/Observation.rs")
    answers = {}
    for name in ("Alpha", "Nobody"):
        query = f"Observation?subject:Patient.name={name}"
        url = f"/fhir/$export?_type=Observation&_typeFilter={query}"
        answers[name] = exported_count(client, url, observations)
        assert search_count(client, f"/fhir/{query}", observations) == "403 forbidden"
    assert answers["Alpha"] == answers["Nobody"] == "403 forbidden ['_typeFilter', 'Patient']"


def test_type_filter_has_sees_only_the_tokens_patient(
    secured: tuple[TestClient, TokenMint],
) -> None:
    """Patient ``pa``'s token chains ``_has`` through the practitioner both patients
    share, to learn whether any of that practitioner's encounters (``pb``'s included)
    is HIV-coded. The search API evaluates ``_has`` only over what the token may
    search (``pa``'s encounters): no match either way. The export must agree."""
    client, mint = secured
    own = mint.headers("patient/*.rs", patient="pa")
    answers = {}
    for code in (HIV, OTHER):
        query = f"Observation?performer:Practitioner._has:Encounter:practitioner:reason-code={code}"
        url = f"/fhir/Patient/$export?_type=Observation&_typeFilter={query}"
        answers[code] = (
            exported_count(client, url, own),
            search_count(client, f"/fhir/{query}", own),
        )
    assert answers[HIV] == answers[OTHER] == (0, 0)
    # the filter itself works: pa's own lab result is found through pa's own encounter
    mine = "Observation?performer:Practitioner._has:Observation:performer:category=laboratory"
    url = f"/fhir/Patient/$export?_type=Observation&_typeFilter={mine}"
    assert exported_count(client, url, own) == search_count(client, f"/fhir/{mine}", own) == 1


# --- finding 4: export jobs belong to client + user + patient context --------------------------


def test_another_user_of_the_same_app_cannot_see_fetch_or_cancel_an_export(
    secured: tuple[TestClient, TokenMint],
) -> None:
    """Two patients use the same public app: one client id, two users. Patient ``pb``'s
    user holds ``pa``'s status URL (it leaks into a log, a shared screen...). Status,
    manifest download and cancel must answer exactly as for a job that does not exist.
    So must the same user in another patient's context."""
    client, mint = secured
    app = {"client_id": "public-app", "scope": "patient/*.rs"}
    pa = mint.headers(**app, patient="pa", subject="user-pa", fhir_user="Patient/pa")
    pb = mint.headers(**app, patient="pb", subject="user-pb", fhir_user="Patient/pb")
    pa_elsewhere = mint.headers(**app, patient="pb", subject="user-pa", fhir_user="Patient/pa")
    status_url = kick_off(client, "/fhir/Patient/$export", headers=pa)
    manifest = wait(client, status_url, headers=pa)
    assert manifest.status_code == 200
    file_url = manifest.json()["output"][0]["url"]
    job = status_url.rsplit("/", 1)[1]
    nobody = "0" * len(job)
    missing_status = status_url.replace(job, nobody)
    missing_file = file_url.replace(job, nobody)

    def seen(r: Any) -> tuple[int, Any]:
        body = r.json()
        return r.status_code, [
            (i["code"], i["diagnostics"].replace(job, "?").replace(nobody, "?"))
            for i in body["issue"]
        ]

    for other in (pb, pa_elsewhere):
        missing = seen(client.get(missing_status, headers=other))
        assert missing[0] == 404
        assert seen(client.get(status_url, headers=other)) == missing
        assert seen(client.get(file_url, headers=other)) == seen(
            client.get(missing_file, headers=other)
        )
        assert seen(client.delete(status_url, headers=other)) == missing
    # the owner, with a fresh token of the same client, user and patient, still may
    again = mint.headers(**app, patient="pa", subject="user-pa", fhir_user="Patient/pa")
    assert client.get(file_url, headers=again).status_code == 200
    assert client.delete(status_url, headers=again).status_code == 202


# --- finding 8: Group/[id]/$export is no existence oracle -----------------------------------


def test_group_export_does_not_tell_a_token_without_group_access_whether_it_exists(
    secured: tuple[TestClient, TokenMint],
) -> None:
    """A token that may not read a group is answered the same for an existing and a
    missing one: 403 when no scope covers Group at all (as a read of Group/[id] is),
    404 when its scopes cover Group but not this group. Its members' data is never
    exported through a group the token may not read."""
    client, mint = secured
    group = {"resourceType": "Group", "id": "g", "type": "person", "actual": True}
    group["member"] = [{"entity": {"reference": "Patient/pa"}}]
    admin = mint.headers("system/*.cruds")
    assert client.put("/fhir/Group/g", json=group, headers=admin).status_code == 201

    def answer(url: str, headers: dict[str, str]) -> tuple[int, str]:
        r = client.get(url, headers={**ASYNC, **headers})
        return r.status_code, r.json()["issue"][0]["code"]

    for scope, expected in (
        ("system/Patient.rs system/Observation.rs", (403, "forbidden")),
        ("system/Group.rs?type=animal system/Patient.rs system/Observation.rs", (404, "not-found")),
    ):
        token = mint.headers(scope)
        existing = answer("/fhir/Group/g/$export", token)
        assert existing == answer("/fhir/Group/nope/$export", token) == expected
    allowed = mint.headers("system/Group.rs system/Patient.rs")
    assert client.get("/fhir/Group/g/$export", headers={**ASYNC, **allowed}).status_code == 202
