"""The CapabilityStatement lists ``rest.resource.supportedProfile``: the constraint
StructureDefinitions the server holds for each type (issue #14, profiles/capability.py).

capabilitystatement-definitions.html#CapabilityStatement.rest.resource.supportedProfile:
"A list of profiles that represent different use cases supported by the system. For a
server, 'supported by the system' means the system hosts/produces a set of resources
that are conformant to a particular profile". The statement is cached; a written or
deleted StructureDefinition shows at the next GET /metadata.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from fhir_helpers import post
from test_profiles_install import structure_definition

import profiles


def supported(client: TestClient) -> dict[str, list[str]]:
    r = client.get("/fhir/metadata")
    assert r.status_code == 200, r.text
    resources: list[dict[str, Any]] = r.json()["rest"][0]["resource"]
    return {x["type"]: x["supportedProfile"] for x in resources if "supportedProfile" in x}


def test_supported_profiles_follow_the_stored_structure_definitions(client: TestClient) -> None:
    # the shipped resource profiles (the clinics' set); the shipped extensions are not
    shipped = {
        d["type"]: [d["url"]]
        for d in profiles.definitions()
        if d.get("derivation") == "constraint" and d.get("kind") == "resource"
    }
    assert shipped and "Extension" not in shipped
    assert supported(client) == shipped
    sd = structure_definition("cap-patient")
    r = post(client, sd)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    obs = {
        **structure_definition("cap-obs"),
        "type": "Observation",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
        "differential": {"element": [{"id": "Observation", "path": "Observation"}]},
    }
    assert post(client, obs).status_code == 201
    both = {**shipped, "Observation": [obs["url"]]}
    assert supported(client) == {**both, "Patient": sorted([*shipped["Patient"], sd["url"]])}
    assert client.delete(f"/fhir/StructureDefinition/{rid}").status_code in (200, 204)
    assert supported(client) == both
