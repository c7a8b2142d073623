"""CodeSystem/$lookup, $validate-code and $subsumes over HTTP (codesystem-operations.html),
on a small hierarchical CodeSystem with Spanish designations posted by the test, and on
the R4 core code systems after `load-core`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from terminology_helpers import (
    CODE_SYSTEM,
    SYSTEM,
    create,
    get,
    outcome,
    parts,
    post,
    values,
)

from fhir_server.cli import main
from fhir_server.config import Settings


@pytest.fixture
def cs(client: TestClient) -> dict[str, Any]:
    return create(client, CODE_SYSTEM)


# --- $lookup ------------------------------------------------------------------------------


def test_lookup_gives_name_display_designations_and_properties(
    client: TestClient, cs: dict[str, Any]
) -> None:
    r = get(client, "CodeSystem/$lookup", system=SYSTEM, code="diabetes")
    assert r.status_code == 200, r.text
    out = r.json()
    assert values(out)["name"] == "Clinica"
    assert values(out)["version"] == "1.0.0"
    assert values(out)["display"] == "Diabetes mellitus"
    assert parts(out, "designation") == [{"language": "es", "value": "Diabetes mellitus"}]
    props = {(p["code"], str(p["value"])) for p in parts(out, "property")}
    assert {("parent", "trastorno"), ("child", "dm1"), ("child", "dm2")} <= props
    assert ("grupo", "metabolico") in props and ("inactive", "False") in props


def test_lookup_property_parameter_limits_the_properties(
    client: TestClient, cs: dict[str, Any]
) -> None:
    """'property: A property that the client wishes to be returned in the output. If no
    properties are specified, the server chooses what to return.'"""
    r = get(client, "CodeSystem/$lookup", system=SYSTEM, code="dm1", property=["parent"])
    out = r.json()
    assert parts(out, "property") == [{"code": "parent", "value": "diabetes"}]
    assert parts(out, "designation") == []  # not asked for


def test_lookup_display_language_spanish(client: TestClient, cs: dict[str, Any]) -> None:
    r = get(client, "CodeSystem/$lookup", system=SYSTEM, code="hta", displayLanguage="es-EC")
    out = r.json()
    assert values(out)["display"] == "Hipertensión arterial"
    assert parts(out, "designation") == [{"language": "es", "value": "Hipertensión arterial"}]


def test_lookup_by_coding_and_version_in_a_post(client: TestClient, cs: dict[str, Any]) -> None:
    r = post(
        client,
        "CodeSystem/$lookup",
        {"name": "coding", "valueCoding": {"system": SYSTEM, "code": "tos", "version": "1.0.0"}},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert values(out)["display"] == "Cough"
    assert ("inactive", True) in {(p["code"], p["value"]) for p in parts(out, "property")}


def test_lookup_at_instance_level(client: TestClient, cs: dict[str, Any]) -> None:
    r = get(client, f"CodeSystem/{cs['id']}/$lookup", code="fiebre")
    assert values(r.json())["display"] == "Fever"


def test_lookup_wrong_version_is_404_on_system(client: TestClient, cs: dict[str, Any]) -> None:
    r = get(client, "CodeSystem/$lookup", system=SYSTEM, code="dm1", version="9")
    assert r.status_code == 404
    assert outcome(r)["expression"] == ["system"]


def test_lookup_errors_are_outcomes_with_expression(client: TestClient, cs: dict[str, Any]) -> None:
    unknown_code = get(client, "CodeSystem/$lookup", system=SYSTEM, code="nope")
    assert unknown_code.status_code == 404 and outcome(unknown_code)["expression"] == ["code"]
    no_system = get(client, "CodeSystem/$lookup", code="dm1")
    assert no_system.status_code == 400 and outcome(no_system)["expression"] == ["system"]
    bad_param = get(client, "CodeSystem/$lookup", system=SYSTEM, code="dm1", colour="red")
    assert bad_param.status_code == 400 and outcome(bad_param)["expression"] == ["colour"]
    coding_no_code = post(client, "CodeSystem/$lookup", {"name": "coding", "valueCoding": {}})
    assert coding_no_code.status_code == 400
    assert outcome(coding_no_code)["expression"] == ["Parameters.parameter[0].valueCoding.code"]
    wrong_type = post(client, "CodeSystem/$lookup", {"name": "coding", "valueString": "x"})
    assert outcome(wrong_type)["expression"] == ["Parameters.parameter[0].valueString"]
    missing = get(client, "CodeSystem/nothere/$lookup", code="x")
    assert missing.status_code == 404
    put = client.put("/fhir/CodeSystem/$lookup", json={})
    assert put.status_code == 405 and put.headers["allow"] == "GET, POST"


def test_lookup_follows_an_updated_code_system(client: TestClient, cs: dict[str, Any]) -> None:
    """The concept store is rebuilt from the new version of the resource."""
    assert get(client, "CodeSystem/$lookup", system=SYSTEM, code="dm1").status_code == 200
    changed = {**cs, "concept": [{"code": "nuevo", "display": "New"}]}
    assert client.put(f"/fhir/CodeSystem/{cs['id']}", json=changed).status_code == 200
    assert get(client, "CodeSystem/$lookup", system=SYSTEM, code="dm1").status_code == 404
    assert (
        values(get(client, "CodeSystem/$lookup", system=SYSTEM, code="nuevo").json())["display"]
        == "New"
    )


# --- $validate-code -------------------------------------------------------------------------


def test_validate_code_known_unknown_and_wrong_display(
    client: TestClient, cs: dict[str, Any]
) -> None:
    ok = values(get(client, "CodeSystem/$validate-code", url=SYSTEM, code="dm2").json())
    assert ok["result"] is True and ok["display"] == "Type 2 diabetes mellitus"
    unknown = values(get(client, "CodeSystem/$validate-code", url=SYSTEM, code="zz").json())
    assert unknown["result"] is False and "zz" in unknown["message"]
    wrong = values(
        get(client, "CodeSystem/$validate-code", url=SYSTEM, code="dm2", display="Sugar").json()
    )
    assert wrong["result"] is True
    assert "Warning" in wrong["message"] and "Type 2 diabetes mellitus" in wrong["message"]
    spanish = values(
        get(
            client,
            "CodeSystem/$validate-code",
            url=SYSTEM,
            code="dm2",
            display="Diabetes mellitus tipo 2",
        ).json()
    )
    assert "message" not in spanish  # a designation is a valid display


def test_validate_code_reports_inactive(client: TestClient, cs: dict[str, Any]) -> None:
    out = values(get(client, f"CodeSystem/{cs['id']}/$validate-code", code="tos").json())
    assert out["result"] is True and out["inactive"] is True and "inactive" in out["message"]


def test_validate_code_coding_and_codeable_concept(client: TestClient, cs: dict[str, Any]) -> None:
    coding = post(
        client,
        "CodeSystem/$validate-code",
        {"name": "coding", "valueCoding": {"system": SYSTEM, "code": "hta"}},
    )
    assert values(coding.json())["result"] is True
    cc = {"coding": [{"system": "http://other", "code": "x"}, {"system": SYSTEM, "code": "fiebre"}]}
    both = post(
        client,
        "CodeSystem/$validate-code",
        {"name": "url", "valueUri": SYSTEM},
        {"name": "codeableConcept", "valueCodeableConcept": cc},
    )
    assert values(both.json())["result"] is True and values(both.json())["display"] == "Fever"


# --- $subsumes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("trastorno", "dm1", "subsumes"),
        ("dm1", "trastorno", "subsumed-by"),
        ("dm1", "dm1", "equivalent"),
        ("dm1", "hta", "not-subsumed"),
    ],
)
def test_subsumes(client: TestClient, cs: dict[str, Any], a: str, b: str, expected: str) -> None:
    r = get(client, "CodeSystem/$subsumes", system=SYSTEM, codeA=a, codeB=b)
    assert values(r.json())["outcome"] == expected


def test_subsumes_codings_and_instance(client: TestClient, cs: dict[str, Any]) -> None:
    r = post(
        client,
        f"CodeSystem/{cs['id']}/$subsumes",
        {"name": "codingA", "valueCoding": {"system": SYSTEM, "code": "hallazgo"}},
        {"name": "codingB", "valueCoding": {"system": SYSTEM, "code": "tos"}},
    )
    assert values(r.json())["outcome"] == "subsumes"
    bad = get(client, "CodeSystem/$subsumes", system=SYSTEM, codeA="dm1", codeB="zz")
    assert bad.status_code == 404 and outcome(bad)["expression"] == ["codeB"]


# --- the R4 core content ---------------------------------------------------------------------


def test_core_v3_hierarchy_and_v2_codes(client: TestClient, settings: Settings) -> None:
    args = ["terminology", "load-core", "--mongo-url", settings.mongo_url or ""]
    assert CliRunner().invoke(main, [*args, "--database", settings.database]).exit_code == 0
    v3 = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    r = get(client, "CodeSystem/$subsumes", system=v3, codeA="_ActEncounterCode", codeB="AMB")
    assert values(r.json())["outcome"] == "subsumes"
    lookup = get(
        client,
        "CodeSystem/$lookup",
        system="http://hl7.org/fhir/administrative-gender",
        code="female",
    )
    assert values(lookup.json())["display"] == "Female"
    v2 = get(
        client,
        "CodeSystem/$validate-code",
        url="http://terminology.hl7.org/CodeSystem/v2-0203",
        code="MR",
    )
    assert values(v2.json())["result"] is True


def test_decimal_and_coding_properties_keep_their_exact_json(client: TestClient) -> None:
    """A valueDecimal keeps its digits (datatypes.html#decimal: 1.50 is not 1.5), a
    valueCoding comes back whole; the concept store holds neither as BSON numbers."""
    cs = {
        "resourceType": "CodeSystem",
        "url": "http://example.org/fhir/CodeSystem/weights",
        "status": "active",
        "content": "complete",
        "property": [{"code": "weight", "type": "decimal"}, {"code": "kind", "type": "Coding"}],
        "concept": [
            {
                "code": "a",
                "property": [
                    {"code": "weight", "valueDecimal": 1.50},
                    {"code": "kind", "valueCoding": {"system": "http://x", "code": "k"}},
                ],
                "designation": [
                    {
                        "use": {
                            "system": "http://x",
                            "code": "u",
                            "extension": [{"url": "http://x/e", "valueDecimal": 2.0}],
                        },
                        "value": "A",
                    }
                ],
            }
        ],
    }
    raw = json.dumps(cs).replace('"valueDecimal": 1.5', '"valueDecimal": 1.50')
    created = client.post(
        "/fhir/CodeSystem", content=raw, headers={"Content-Type": "application/fhir+json"}
    )
    assert created.status_code == 201, created.text
    r = get(client, "CodeSystem/$lookup", system=cs["url"], code="a")
    assert r.status_code == 200, r.text
    assert '"valueDecimal":1.50' in r.text.replace(" ", "")
    assert {"name": "value", "valueCoding": {"system": "http://x", "code": "k"}} in [
        q for p in r.json()["parameter"] if p["name"] == "property" for q in p["part"]
    ]
    assert parts(r.json(), "designation") == [{"value": "A"}]  # a use BSON cannot hold is dropped
    weighed = value_set_expand_with(client, cs["url"], "weight", "1.50")
    assert weighed == ["a"]


def value_set_expand_with(client: TestClient, system: str, prop: str, value: str) -> list[str]:
    vs = {
        "resourceType": "ValueSet",
        "status": "active",
        "compose": {
            "include": [
                {"system": system, "filter": [{"property": prop, "op": "=", "value": value}]}
            ]
        },
    }
    r = post(client, "ValueSet/$expand", {"name": "valueSet", "resource": vs})
    assert r.status_code == 200, r.text
    return [c["code"] for c in r.json()["expansion"].get("contains", [])]


def test_children_of_a_generation_written_before_documents_held_them(
    client: TestClient, cs: dict[str, Any], settings: Settings
) -> None:
    """Concept documents carry their children, so $lookup reads one document; a
    generation stored before they did (no ``ch``, no ``children`` flag on its system)
    is still answered, by querying the children."""
    from fastapi.testclient import TestClient as Fresh
    from pymongo import MongoClient

    from fhir_server.app import create_app

    first = get(client, "CodeSystem/$lookup", system=SYSTEM, code="trastorno", property="child")
    assert {p["value"] for p in parts(first.json(), "property")} == {"diabetes", "hta"}
    with MongoClient(settings.mongo_url) as mc:
        db = mc[settings.database]
        assert db["terminology_concepts"].count_documents({"ch": "dm1"}) == 1
        db["terminology_concepts"].update_many({}, {"$unset": {"ch": ""}})
        db["terminology_systems"].update_many({}, {"$unset": {"children": ""}})
    with Fresh(create_app(settings)) as other:  # no cached code system
        again = get(other, "CodeSystem/$lookup", system=SYSTEM, code="trastorno", property="child")
        assert {p["value"] for p in parts(again.json(), "property")} == {"diabetes", "hta"}
