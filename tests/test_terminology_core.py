"""The R4 core terminology (terminology/core.py): `fhir-server terminology load-core`
and a server's first start store the FHIR, v3 and v2 code systems and value sets (and
the core concept maps) as ordinary resources, once: by url + version, never twice."""

from __future__ import annotations

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from fhir_server.app import create_app
from fhir_server.cli import main
from fhir_server.config import Settings
from fhir_server.testing import ServerProcess

CANONICALS = {
    "CodeSystem": (
        "http://hl7.org/fhir/administrative-gender",  # FHIR
        "http://terminology.hl7.org/CodeSystem/v3-ActCode",  # v3
        "http://terminology.hl7.org/CodeSystem/v2-0203",  # v2
    ),
    "ValueSet": (
        "http://hl7.org/fhir/ValueSet/administrative-gender",
        "http://terminology.hl7.org/ValueSet/v3-ActEncounterCode",
        "http://terminology.hl7.org/ValueSet/v2-0203",
    ),
    "ConceptMap": ("http://hl7.org/fhir/ConceptMap/cm-administrative-gender-v2",),
}


def totals(http: httpx.Client | TestClient, prefix: str = "") -> dict[str, int]:
    out = {}
    for rtype, urls in CANONICALS.items():
        for url in urls:
            r = http.get(f"{prefix}/{rtype}", params={"url": url, "_summary": "count"})
            assert r.status_code == 200, r.text
            out[url] = r.json()["total"]
    return out


def test_load_core_stores_fhir_v3_v2_once(mongo_url: str, database: str) -> None:
    args = ["terminology", "load-core", "--mongo-url", mongo_url, "--database", database]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "1063 CodeSystem, 1317 ValueSet, 19 ConceptMap" in first.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "already loaded" in again.output
    forced = CliRunner().invoke(main, [*args, "--force"])
    assert forced.exit_code == 0 and "nothing new (2399 already present)" in forced.output

    settings = Settings(mongo_url=mongo_url, database=database, auth_enabled=False)
    with TestClient(create_app(settings)) as http:
        assert set(totals(http, "/fhir").values()) == {1}
        gender = http.get("/fhir/CodeSystem/administrative-gender").json()
        assert [c["code"] for c in gender["concept"]] == ["male", "female", "other", "unknown"]
        assert gender["meta"]["versionId"] == "1"
        assert "text" not in gender  # narrative dropped from the shipped data


def test_load_core_keeps_a_users_resource_of_the_same_canonical(
    mongo_url: str, database: str
) -> None:
    """A CodeSystem the user stored with a core url + version is not overwritten or
    duplicated; a user resource holding a core id pushes the core one to another id."""
    settings = Settings(mongo_url=mongo_url, database=database, auth_enabled=False)
    mine = {
        "resourceType": "CodeSystem",
        "url": "http://hl7.org/fhir/administrative-gender",
        "version": "4.0.1",
        "status": "active",
        "content": "complete",
        "concept": [{"code": "x"}],
    }
    squatter = {
        "resourceType": "CodeSystem",
        "id": "v2-0203",
        "url": "http://example.org/mine",
        "status": "draft",
        "content": "not-present",
    }
    with TestClient(create_app(settings)) as http:
        created = http.post("/fhir/CodeSystem", json=mine)
        assert created.status_code == 201
        assert http.put("/fhir/CodeSystem/v2-0203", json=squatter).status_code == 201
    args = ["terminology", "load-core", "--mongo-url", mongo_url, "--database", database]
    assert "(1 already present)" in CliRunner().invoke(main, args).output
    with TestClient(create_app(settings)) as http:
        found = http.get(
            "/fhir/CodeSystem", params={"url": "http://hl7.org/fhir/administrative-gender"}
        ).json()
        assert found["total"] == 1
        assert found["entry"][0]["resource"]["id"] == created.json()["id"]
        assert http.get("/fhir/CodeSystem/v2-0203").json()["url"] == "http://example.org/mine"
        v2 = http.get(
            "/fhir/CodeSystem", params={"url": "http://terminology.hl7.org/CodeSystem/v2-0203"}
        ).json()
        assert v2["total"] == 1 and v2["entry"][0]["resource"]["id"] == "v2-0203-r4"


@pytest.mark.slow
def test_first_start_loads_core_once(mongo_url: str, database: str) -> None:
    for _ in range(2):  # a restart finds the marker and loads nothing again
        server = ServerProcess(mongo_url=mongo_url, database=database, terminology=True)
        with server, httpx.Client(base_url=server.base_url) as http:
            assert set(totals(http).values()) == {1}
