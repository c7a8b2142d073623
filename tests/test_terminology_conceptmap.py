"""ConceptMap/$translate over HTTP (conceptmap-operation-translate.html), and the SMART
policy on every terminology operation (as for a read: the token must be able to read
the types the operation reads)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from smart_helpers import smart_client
from terminology_helpers import (
    CODE_SYSTEM,
    SYSTEM,
    VS_ALL,
    create,
    get,
    outcome,
    parts,
    post,
    value_set,
    values,
)

CIE10 = "http://hl7.org/fhir/sid/icd-10"
MAP_URL = "http://example.org/fhir/ConceptMap/clinica-cie10"
CONCEPT_MAP: dict[str, Any] = {
    "resourceType": "ConceptMap",
    "url": MAP_URL,
    "status": "active",
    "sourceUri": "http://example.org/fhir/ValueSet/clinica-all",
    "targetUri": "http://example.org/fhir/ValueSet/cie10",
    "group": [
        {
            "source": SYSTEM,
            "target": CIE10,
            "element": [
                {
                    "code": "dm1",
                    "target": [
                        {
                            "code": "E10",
                            "display": "Diabetes mellitus tipo 1",
                            "equivalence": "equivalent",
                        }
                    ],
                },
                {
                    "code": "diabetes",
                    "target": [
                        {"code": "E10", "equivalence": "wider"},
                        {"code": "E11", "equivalence": "wider"},
                    ],
                },
                {
                    "code": "fiebre",
                    "target": [
                        {"code": "R50.9", "equivalence": "narrower", "comment": "sin especificar"}
                    ],
                },
            ],
            "unmapped": {"mode": "fixed", "code": "R69", "display": "Causas desconocidas"},
        }
    ],
}


@pytest.fixture
def cmap(client: TestClient) -> dict[str, Any]:
    return create(client, CONCEPT_MAP)


def matches(r: Any) -> list[tuple[str, str | None]]:
    assert r.status_code == 200, r.text
    return [
        (m["equivalence"], (m.get("concept") or {}).get("code")) for m in parts(r.json(), "match")
    ]


def test_translate_code_system_by_url(client: TestClient, cmap: dict[str, Any]) -> None:
    r = get(client, "ConceptMap/$translate", url=MAP_URL, system=SYSTEM, code="dm1")
    assert values(r.json())["result"] is True
    match = parts(r.json(), "match")[0]
    assert match["equivalence"] == "equivalent"
    assert match["concept"] == {
        "system": CIE10,
        "code": "E10",
        "display": "Diabetes mellitus tipo 1",
    }
    assert match["source"] == MAP_URL
    assert matches(
        get(client, "ConceptMap/$translate", url=MAP_URL, system=SYSTEM, code="diabetes")
    ) == [
        ("wider", "E10"),
        ("wider", "E11"),
    ]


def test_translate_coding_codeable_concept_and_instance(
    client: TestClient, cmap: dict[str, Any]
) -> None:
    r = post(
        client,
        f"ConceptMap/{cmap['id']}/$translate",
        {"name": "coding", "valueCoding": {"system": SYSTEM, "code": "fiebre"}},
    )
    assert matches(r) == [("narrower", "R50.9")]
    assert parts(r.json(), "match")[0]["message"] == "sin especificar"
    cc = {"coding": [{"system": SYSTEM, "code": "dm1"}]}
    r = post(
        client, "ConceptMap/$translate", {"name": "codeableConcept", "valueCodeableConcept": cc}
    )
    assert matches(r) == [("equivalent", "E10")]


def test_translate_by_source_and_target_value_sets(
    client: TestClient, cmap: dict[str, Any]
) -> None:
    found = get(
        client,
        "ConceptMap/$translate",
        system=SYSTEM,
        code="dm1",
        source="http://example.org/fhir/ValueSet/clinica-all",
        target="http://example.org/fhir/ValueSet/cie10",
    )
    assert matches(found) == [("equivalent", "E10")]
    other = get(
        client, "ConceptMap/$translate", system=SYSTEM, code="dm1", target="http://example.org/x"
    )
    assert matches(other) == [] and values(other.json())["result"] is False
    assert matches(
        get(client, "ConceptMap/$translate", system=SYSTEM, code="dm1", targetsystem=CIE10)
    ) == [("equivalent", "E10")]


def test_translate_reverse_turns_the_equivalence_round(
    client: TestClient, cmap: dict[str, Any]
) -> None:
    """reverse: 'the operation is being used to produce the source for a given target'.
    The diabetes -> E11 target is *wider* than its source, so reversed the source is
    *narrower* than E11."""
    r = get(client, "ConceptMap/$translate", url=MAP_URL, system=CIE10, code="E11", reverse="true")
    assert matches(r) == [("narrower", "diabetes")]
    assert parts(r.json(), "match")[0]["concept"]["system"] == SYSTEM


def test_translate_unmapped_fixed(client: TestClient, cmap: dict[str, Any]) -> None:
    assert matches(
        get(client, "ConceptMap/$translate", url=MAP_URL, system=SYSTEM, code="hta")
    ) == [("equivalent", "R69")]


def test_translate_errors(client: TestClient, cmap: dict[str, Any]) -> None:
    none = get(client, "ConceptMap/$translate", url=MAP_URL)
    assert none.status_code == 400 and outcome(none)["expression"] == ["code"]
    unknown = get(client, "ConceptMap/$translate", url=MAP_URL + "x", system=SYSTEM, code="dm1")
    assert unknown.status_code == 404 and outcome(unknown)["expression"] == ["url"]
    bad_reverse = get(client, "ConceptMap/$translate", url=MAP_URL, code="dm1", reverse="maybe")
    assert bad_reverse.status_code == 400 and outcome(bad_reverse)["expression"] == ["reverse"]


def test_core_concept_map_translates(client: TestClient) -> None:
    from click.testing import CliRunner

    from fhir_server.cli import main

    db = client.app.state.services.settings  # type: ignore[attr-defined]
    args = ["terminology", "load-core", "--mongo-url", db.mongo_url, "--database", db.database]
    assert CliRunner().invoke(main, args).exit_code == 0
    r = get(
        client,
        "ConceptMap/$translate",
        url="http://hl7.org/fhir/ConceptMap/cm-administrative-gender-v2",
        system="http://hl7.org/fhir/administrative-gender",
        code="female",
    )
    assert matches(r) == [("equal", "F")]


# --- authorization ---------------------------------------------------------------------


def test_operations_need_read_scopes_on_what_they_read(mongo_url: str) -> None:
    with smart_client(mongo_url) as (client, mint):
        admin = mint.headers("system/*.*")
        cs = client.post("/fhir/CodeSystem", json=CODE_SYSTEM, headers=admin).json()
        client.post("/fhir/ValueSet", json=value_set(VS_ALL, {"system": SYSTEM}), headers=admin)
        lookup = f"/fhir/CodeSystem/$lookup?system={SYSTEM}&code=dm1"
        assert client.get(lookup).status_code == 401
        denied = client.get(lookup, headers=mint.headers("system/Patient.rs"))
        assert denied.status_code == 403 and outcome(denied)["code"] == "forbidden"
        assert client.get(lookup, headers=mint.headers("system/CodeSystem.rs")).status_code == 200
        expand = f"/fhir/ValueSet/$expand?url={VS_ALL}"
        # $expand reads the code systems too
        assert client.get(expand, headers=mint.headers("system/ValueSet.rs")).status_code == 403
        both = mint.headers("system/ValueSet.rs system/CodeSystem.rs")
        assert client.get(expand, headers=both).status_code == 200
        # a granular scope narrows which code systems exist for the operation
        other = mint.headers("system/CodeSystem.rs?url=http://example.org/other")
        hidden = client.get(lookup, headers=other)
        assert hidden.status_code == 404 and outcome(hidden)["expression"] == ["system"]
        instance = client.get(f"/fhir/CodeSystem/{cs['id']}/$lookup?code=dm1", headers=other)
        assert instance.status_code == 404


def test_inline_concept_map_is_validated_like_a_write(client: TestClient) -> None:
    """An inline conceptMap is checked as a POST of it would be, so a malformed one is a
    400 naming the element, never a crash while translating."""
    broken = {"resourceType": "ConceptMap", "status": "active", "group": [{"element": ["x"]}]}
    r = post(
        client,
        "ConceptMap/$translate",
        {"name": "conceptMap", "resource": broken},
        {"name": "code", "valueCode": "a"},
    )
    assert r.status_code == 400
    assert outcome(r)["expression"][0].startswith("ConceptMap.group[0].element[0]")
