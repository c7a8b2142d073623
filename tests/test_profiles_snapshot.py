"""``StructureDefinition/$snapshot`` on differential-only profiles, over HTTP (issue #14;
profiles/snapshot.py, fhir_server/api/snapshot.py).

structuredefinition-operation-snapshot.html: "Generates a snapshot from a differential
... In: definition (0..1, StructureDefinition) ... url (0..1, string): The StructureDefinition's
canonical URL (i.e. 'StructureDefinition.url'). The server must know the structure
definition, or be able to retrieve it from other known repositories. Out: return (1..1,
StructureDefinition)". profiling.html: in a snapshot, slices follow the element they slice.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from fhir_helpers import assert_outcome, constraint_profile, patient, post
from smart_helpers import smart_client

URL = "http://clinic.example/StructureDefinition/snap-patient"
CHILD = "http://clinic.example/StructureDefinition/snap-child"
SYSTEM = "http://clinic.example/cedula"


def profile(url: str, elements: list[dict[str, Any]], base: str | None = None) -> dict[str, Any]:
    """A Patient profile whose differential is ``elements`` as given (ids included)."""
    sd = constraint_profile(url, "Patient", [], differential={"element": elements})
    return {**sd, "baseDefinition": base} if base else sd


PROFILE = profile(
    URL,
    [
        {
            "id": "Patient.identifier",
            "path": "Patient.identifier",
            "min": 1,
            "slicing": {
                "discriminator": [{"type": "value", "path": "system"}],
                "rules": "open",
            },
        },
        {"id": "Patient.identifier.system", "path": "Patient.identifier.system", "min": 1},
        {
            "id": "Patient.identifier:cedula",
            "path": "Patient.identifier",
            "sliceName": "cedula",
            "max": "1",
        },
        {
            "id": "Patient.identifier:cedula.system",
            "path": "Patient.identifier.system",
            "fixedUri": SYSTEM,
        },
        {"id": "Patient.deceased[x]", "path": "Patient.deceased[x]", "max": "0"},
    ],
)


def by_id(sd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in sd["snapshot"]["element"]}


def ids(sd: dict[str, Any]) -> list[str]:
    return [e["id"] for e in sd["snapshot"]["element"]]


def check_generated(sd: dict[str, Any]) -> None:
    assert sd["resourceType"] == "StructureDefinition" and sd["url"] == URL
    assert sd["differential"] == PROFILE["differential"]  # kept as given
    elements = by_id(sd)
    order = ids(sd)
    assert order[0] == "Patient"
    # the R4 order of Patient's elements (patient.html#resource)
    top = [i for i in order if i.count(".") == 1 and ":" not in i]
    assert top == [
        f"Patient.{n}"
        for n in [
            "id",
            "meta",
            "implicitRules",
            "language",
            "text",
            "contained",
            "extension",
            "modifierExtension",
            "identifier",
            "active",
            "name",
            "telecom",
            "gender",
            "birthDate",
            "deceased[x]",
            "address",
            "maritalStatus",
            "multipleBirth[x]",
            "photo",
            "contact",
            "communication",
            "generalPractitioner",
            "managingOrganization",
            "link",
        ]
    ]
    # the base element, overridden by the differential; its base is the R4 one
    identifier = elements["Patient.identifier"]
    assert identifier["min"] == 1 and identifier["max"] == "*"
    assert identifier["base"] == {"path": "Patient.identifier", "min": 0, "max": "*"}
    assert identifier["type"] == [{"code": "Identifier"}]
    assert identifier["slicing"]["rules"] == "open"
    # a path into a data type unrolls it
    system = elements["Patient.identifier.system"]
    assert system["min"] == 1 and system["type"] == [{"code": "uri"}]
    assert "Patient.identifier.value" in elements
    # the slice follows its sliced element and that element's children
    cedula = elements["Patient.identifier:cedula"]
    assert cedula["sliceName"] == "cedula" and cedula["max"] == "1"
    # a slice starts from the base element, not from the sliced one as constrained here
    assert cedula["min"] == 0
    assert elements["Patient.identifier:cedula.system"]["min"] == 0
    assert "slicing" not in cedula
    assert order.index("Patient.identifier:cedula") > order.index("Patient.identifier.value")
    assert elements["Patient.identifier:cedula.system"]["fixedUri"] == SYSTEM
    assert order.index("Patient.identifier:cedula.system") > order.index(
        "Patient.identifier:cedula"
    )
    # elements the differential does not touch come from the base
    assert elements["Patient.deceased[x]"]["max"] == "0"
    assert elements["Patient.deceased[x]"]["type"] == [{"code": "boolean"}, {"code": "dateTime"}]
    assert elements["Patient.gender"]["binding"] == {
        "strength": "required",
        "valueSet": "http://hl7.org/fhir/ValueSet/administrative-gender",
    }
    contact_name = elements["Patient.contact.name"]  # backbone elements are unrolled
    assert contact_name["type"] == [{"code": "HumanName"}] and contact_name["max"] == "1"
    assert elements["Patient.contact"]["type"] == [{"code": "BackboneElement"}]
    link_other = elements["Patient.link.other"]
    assert link_other["min"] == 1  # required in R4
    assert len(order) == len(set(order))


def test_snapshot_of_a_stored_differential(client: TestClient) -> None:
    r = post(client, PROFILE)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    for method in ("GET", "POST"):
        instance = client.request(method, f"/fhir/StructureDefinition/{rid}/$snapshot")
        assert instance.status_code == 200, instance.text
        check_generated(instance.json())
    typed = client.get("/fhir/StructureDefinition/$snapshot", params={"url": URL})
    assert typed.status_code == 200, typed.text
    check_generated(typed.json())
    params = {"resourceType": "Parameters", "parameter": [{"name": "url", "valueString": URL}]}
    check_generated(client.post("/fhir/StructureDefinition/$snapshot", json=params).json())
    # nothing stored changed
    assert "snapshot" not in client.get(f"/fhir/StructureDefinition/{rid}").json()


def test_a_generated_snapshot_validates_as_its_differential(client: TestClient) -> None:
    """A profile read from the generated snapshot checks what its differential checks
    (profiles/compile.py reads the snapshot when there is one)."""
    r = client.post("/fhir/StructureDefinition/$snapshot", json=PROFILE)
    assert r.status_code == 200, r.text
    url = "http://clinic.example/StructureDefinition/snap-copy"
    for sd in (PROFILE, {**r.json(), "url": url}):
        assert post(client, sd).status_code == 201
    good = patient(identifier=[{"system": SYSTEM, "value": "1"}])
    bad = patient(identifier=[{"value": "1"}])
    dead = patient(identifier=[{"system": SYSTEM, "value": "1"}], deceasedBoolean=False)
    for profile_url in (URL, url):
        verdicts = []
        for resource in (good, bad, dead, patient()):
            r = client.post(
                "/fhir/Patient/$validate", params={"profile": profile_url}, json=resource
            )
            errors = [i for i in r.json()["issue"] if i["severity"] == "error"]
            verdicts.append(not errors)
        assert verdicts == [True, False, False, False], profile_url


def test_snapshot_of_a_posted_definition(client: TestClient) -> None:
    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "definition", "resource": PROFILE}],
    }
    r = client.post("/fhir/StructureDefinition/$snapshot", json=params)
    assert r.status_code == 200, r.text
    check_generated(r.json())
    # paths without ids, and a type-choice rename, are read too
    legacy = profile(
        "http://clinic.example/StructureDefinition/legacy",
        [{"path": "Patient.multipleBirthInteger", "maxValueInteger": 5}],
    )
    r = client.post("/fhir/StructureDefinition/$snapshot", json=legacy)
    assert r.status_code == 200, r.text
    assert by_id(r.json())["Patient.multipleBirth[x]"]["maxValueInteger"] == 5


def test_profile_of_a_profile(client: TestClient) -> None:
    assert post(client, PROFILE).status_code == 201
    child = profile(
        CHILD,
        [{"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1}],
        base=URL,
    )
    r = client.post("/fhir/StructureDefinition/$snapshot", json=child)
    assert r.status_code == 200, r.text
    elements = by_id(r.json())
    assert elements["Patient.birthDate"]["min"] == 1
    assert elements["Patient.identifier:cedula.system"]["fixedUri"] == SYSTEM  # inherited


def test_failures(client: TestClient) -> None:
    issues = assert_outcome(
        client.get("/fhir/StructureDefinition/$snapshot", params={"url": "http://nope/x"}), 404
    )
    assert issues[0]["expression"] == ["url"]
    bad = profile(
        "http://clinic.example/StructureDefinition/bad",
        [
            {"id": "Patient.name", "path": "Patient.name", "min": 1},
            {"id": "Patient.nickname", "path": "Patient.nickname", "min": 1},
        ],
    )
    issues = assert_outcome(client.post("/fhir/StructureDefinition/$snapshot", json=bad), 422)
    assert issues[0]["expression"] == ["StructureDefinition.differential.element[1]"]
    assert "Patient.nickname" in issues[0]["diagnostics"]
    orphan = profile(CHILD, [], base="http://clinic.example/StructureDefinition/unknown")
    issues = assert_outcome(client.post("/fhir/StructureDefinition/$snapshot", json=orphan), 422)
    assert issues[0]["expression"] == ["StructureDefinition.baseDefinition"]
    # neither or both of definition and url
    assert_outcome(client.get("/fhir/StructureDefinition/$snapshot"), 400)
    both = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "url", "valueString": URL},
            {"name": "definition", "resource": PROFILE},
        ],
    }
    assert_outcome(client.post("/fhir/StructureDefinition/$snapshot", json=both), 400)
    assert_outcome(client.get("/fhir/StructureDefinition/nope/$snapshot"), 404)
    r = client.delete("/fhir/StructureDefinition/$snapshot")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"


def test_declared_in_the_capability_statement(client: TestClient) -> None:
    rest = client.get("/fhir/metadata").json()["rest"][0]
    sd = next(x for x in rest["resource"] if x["type"] == "StructureDefinition")
    assert {
        "name": "snapshot",
        "definition": "http://hl7.org/fhir/OperationDefinition/StructureDefinition-snapshot",
    } in sd["operation"]


def test_needs_read_access_to_structure_definitions(mongo_url: str) -> None:
    with smart_client(mongo_url) as (client, mint):
        admin = mint.headers("system/*.*")
        r = client.post("/fhir/StructureDefinition", json=PROFILE, headers=admin)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        path = f"/fhir/StructureDefinition/{rid}/$snapshot"
        assert client.get(path).status_code == 401
        other = mint.headers("system/Patient.read")
        assert_outcome(client.get(path, headers=other), 403)
        params = {"url": URL}
        typed = "/fhir/StructureDefinition/$snapshot"
        assert_outcome(client.get(typed, params=params, headers=other), 403)
        reader = mint.headers("system/StructureDefinition.read")
        assert client.get(path, headers=reader).status_code == 200
        assert client.get(typed, params=params, headers=reader).status_code == 200
