"""What the server declares about its terminology service: ``GET /metadata?mode=terminology``
(a TerminologyCapabilities resource, capabilitystatement.html#mode) and the terminology
operations in the CapabilityStatement, each served at type and instance level."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from smart_helpers import smart_client
from terminology_helpers import CODE_SYSTEM, SYSTEM, VS_ALL, create, outcome, value_set

from fhir_server.validation import validate_resource
from terminology.service import OPERATIONS

STUB = {  # a code system whose concepts are not here (content not-present)
    "resourceType": "CodeSystem",
    "url": "http://example.org/fhir/CodeSystem/absent",
    "status": "active",
    "content": "not-present",
}


def terminology_statement(client: TestClient, **headers: str) -> dict[str, Any]:
    r = client.get("/fhir/metadata", params={"mode": "terminology"}, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["resourceType"] == "TerminologyCapabilities"
    return body


def listed(statement: dict[str, Any]) -> dict[str, list[tuple[str | None, bool]]]:
    return {
        cs["uri"]: [(v.get("code"), v["isDefault"]) for v in cs["version"]]
        for cs in statement["codeSystem"]
    }


def test_mode_terminology_lists_the_code_systems_held(client: TestClient) -> None:
    """capabilitystatement.html#mode: 'terminology: the server returns a
    TerminologyCapabilities resource'; it lists each code system with its versions, the
    newest the default (what an operation without a version uses)."""
    create(client, CODE_SYSTEM)
    create(client, {**CODE_SYSTEM, "version": "1.10.0"})
    create(client, STUB)
    statement = terminology_statement(client)
    issues = validate_resource(statement, "TerminologyCapabilities")
    assert [i for i in issues if i.severity in ("error", "fatal")] == []
    assert statement["kind"] == "instance"
    assert listed(statement) == {SYSTEM: [("1.0.0", False), ("1.10.0", True)]}
    version = statement["codeSystem"][0]["version"][1]
    assert version["language"] == ["es"]  # the designations' languages
    concept = next(f for f in version["filter"] if f["code"] == "concept")
    assert set(concept["op"]) == {
        "=", "is-a", "descendent-of", "is-not-a", "regex", "in", "not-in", "generalizes"
    }  # fmt: skip
    assert statement["codeSystem"][0]["subsumption"] is True
    names = {p["name"] for p in statement["expansion"]["parameter"]}
    assert {"filter", "count", "offset", "excludeNested", "displayLanguage"} <= names
    assert statement["expansion"]["hierarchical"] is True
    # the default mode is still the CapabilityStatement; an unknown mode is refused
    full = client.get("/fhir/metadata").json()
    assert full["resourceType"] == "CapabilityStatement"
    bad = client.get("/fhir/metadata", params={"mode": "everything"})
    assert bad.status_code == 400 and outcome(bad)["expression"] == ["mode"]


def test_mode_terminology_lists_what_the_token_may_search(mongo_url: str) -> None:
    """/metadata is public (SMART App Launch: discovery needs no token), but the
    CodeSystem resources are not: the list holds what the caller's token may search,
    nothing without a token, and a bad token is refused as on any other path."""
    other = {**CODE_SYSTEM, "url": "http://example.org/fhir/CodeSystem/other", "version": "1"}
    with smart_client(mongo_url) as (client, mint):
        admin = mint.headers("system/*.*")
        for cs in (CODE_SYSTEM, other):
            assert client.post("/fhir/CodeSystem", json=cs, headers=admin).status_code == 201
        assert terminology_statement(client)["codeSystem"] == []
        assert (
            terminology_statement(client, **mint.headers("system/Patient.rs"))["codeSystem"] == []
        )
        assert set(listed(terminology_statement(client, **admin))) == {SYSTEM, other["url"]}
        narrow = mint.headers(f"system/CodeSystem.rs?url={SYSTEM}")
        assert set(listed(terminology_statement(client, **narrow))) == {SYSTEM}
        read_only = mint.headers("system/CodeSystem.r")  # read by id is not listing
        assert terminology_statement(client, **read_only)["codeSystem"] == []
        forged = client.get(
            "/fhir/metadata",
            params={"mode": "terminology"},
            headers={"Authorization": "Bearer not-a-token"},
        )
        assert forged.status_code == 401 and outcome(forged)["code"] == "security"
        assert client.get("/fhir/metadata").status_code == 200  # still public


def test_every_operation_is_declared_and_served_at_type_and_instance_level(
    client: TestClient,
) -> None:
    """Each terminology operation is in rest.resource[type].operation with its
    OperationDefinition, and answers at [base]/[type]/$op and [base]/[type]/[id]/$op."""
    cs = create(client, CODE_SYSTEM)
    vs = create(client, value_set(VS_ALL, {"system": SYSTEM}))
    cm = create(
        client,
        {
            "resourceType": "ConceptMap",
            "status": "active",
            "group": [
                {
                    "source": SYSTEM,
                    "target": "http://x",
                    "element": [{"code": "dm1", "target": [{"code": "y", "equivalence": "equal"}]}],
                }
            ],
        },
    )
    rest = client.get("/fhir/metadata").json()["rest"][0]
    declared = {
        (r["type"], o["name"], o["definition"])
        for r in rest["resource"]
        for o in r.get("operation", [])
    }
    ids = {"CodeSystem": cs["id"], "ValueSet": vs["id"], "ConceptMap": cm["id"]}
    type_args: dict[str, dict[str, str]] = {
        "lookup": {"system": SYSTEM, "code": "dm1"},
        "subsumes": {"system": SYSTEM, "codeA": "diabetes", "codeB": "dm1"},
        "expand": {"url": VS_ALL},
        "translate": {"system": SYSTEM, "code": "dm1"},
    }
    for op in OPERATIONS:
        definition = f"http://hl7.org/fhir/OperationDefinition/{op.type}-{op.name}"
        assert (op.type, op.name, definition) in declared
        if op.name == "validate-code":
            args = {"url": SYSTEM if op.type == "CodeSystem" else VS_ALL, "code": "dm1"}
            if op.type == "ValueSet":
                args["system"] = SYSTEM
        else:
            args = type_args[op.name]
        on_type = client.get(f"/fhir/{op.type}/${op.name}", params=args)
        assert on_type.status_code == 200, (op, on_type.text)
        instance_args = {k: v for k, v in args.items() if k != "url"}
        on_instance = client.get(f"/fhir/{op.type}/{ids[op.type]}/${op.name}", params=instance_args)
        assert on_instance.status_code == 200, (op, on_instance.text)
        assert on_instance.json()["resourceType"] in ("Parameters", "ValueSet")
