"""Validation against constraint profiles (issue #14), over HTTP: StructureDefinitions
POSTed as differentials over the R4 base types, then used by ``$validate?profile=`` and by
writes whose ``meta.profile`` names them (profiles/compile.py, profiles/registry.py).

resource-operation-validate.html, ``profile``: "If this is nominated, then the resource is
validated against this specific profile. If a profile is nominated, and the server cannot
validate against the nominated profile, it SHALL return an error."
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import (
    FHIR_JSON,
    app_client,
    assert_outcome,
    bundle_response,
    constraint_profile,
    expressions,
    observation,
    patient,
    post,
    put,
    stored_document_count,
    without_best_practice,
)

from fhir_server.app import create_app

PATIENT_URL = "http://clinic.example/StructureDefinition/clinic-patient"
OBS_URL = "http://clinic.example/StructureDefinition/clinic-glucose"
ID_SYSTEM = "http://clinic.example/cedula"


def profile(url: str, rtype: str, elements: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A differential-only constraint profile of the base type ``rtype``."""
    return constraint_profile(url, rtype, elements, **extra)


PATIENT_PROFILE = profile(
    PATIENT_URL,
    "Patient",
    [
        {
            "path": "Patient",
            "constraint": [
                {
                    "key": "clinic-1",
                    "severity": "error",
                    "human": "A patient has a given name",
                    "expression": "name.given.exists()",
                },
                {
                    "key": "clinic-2",
                    "severity": "warning",
                    "human": "A patient should have a telecom",
                    "expression": "telecom.exists()",
                },
            ],
        },
        {"path": "Patient.identifier", "min": 1},
        {"path": "Patient.identifier.system", "min": 1, "fixedUri": ID_SYSTEM},
        {"path": "Patient.name", "patternHumanName": {"use": "official"}},
        {"path": "Patient.name.family", "maxLength": 10},
        {"path": "Patient.photo", "max": "0"},
        {"path": "Patient.birthDate", "minValueDate": "1900-01-01"},
        {"path": "Patient.multipleBirth[x]", "type": [{"code": "integer"}]},
        {"path": "Patient.multipleBirthInteger", "maxValueInteger": 5},
        {
            "path": "Patient.generalPractitioner",
            "max": "1",
            "type": [
                {
                    "code": "Reference",
                    "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Practitioner"],
                }
            ],
        },
    ],
)

OBS_PROFILE = profile(
    OBS_URL,
    "Observation",
    [
        {"path": "Observation.status", "fixedCode": "final"},
        {
            "path": "Observation.code",
            "patternCodeableConcept": {
                "coding": [{"system": "http://loinc.org", "code": "2339-0"}]
            },
        },
        {"path": "Observation.value[x]", "min": 1, "type": [{"code": "Quantity"}]},
        {"path": "Observation.valueQuantity.value", "minValueDecimal": 0},
        {
            "path": "Observation.valueQuantity",
            "maxValueQuantity": {
                "value": 1000,
                "system": "http://unitsofmeasure.org",
                "code": "mg/dL",
            },
        },
        {"path": "Observation.effective[x]", "type": [{"code": "dateTime"}]},
        {"path": "Observation.effectiveDateTime", "maxValueDateTime": "2100-01-01T00:00:00Z"},
    ],
)


def good_patient(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "identifier": [{"system": ID_SYSTEM, "value": "1710034065"}],
        "name": [{"use": "official", "family": "Núñez", "given": ["José"]}],
        "telecom": [{"system": "phone", "value": "0991234567"}],
    }
    return patient(**{**base, **extra})


def good_observation(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "valueQuantity": {
            "value": 95,
            "unit": "mg/dL",
            "system": "http://unitsofmeasure.org",
            "code": "mg/dL",
        },
        "effectiveDateTime": "2024-05-01T08:00:00Z",
    }
    return observation(**{**base, **extra})


def validate(client, path: str, body: Any = None, **params: str):
    content = None if body is None else json.dumps(body)
    return client.post(
        f"/fhir/{path}/$validate",
        content=content,
        params=params,
        headers={"Content-Type": FHIR_JSON},
    )


def errors(r) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return [i for i in r.json()["issue"] if i["severity"] in ("error", "fatal")]


@pytest.fixture
def api(client):
    for sd in (PATIENT_PROFILE, OBS_PROFILE):
        r = post(client, sd)
        assert r.status_code == 201, r.text
    return client


def without(resource: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in keys}


# Each rule: a resource that breaks it, the expression of the issue, its code.
PATIENT_CASES = [
    ("min cardinality", without(good_patient(), "identifier"), "Patient.identifier", "structure"),
    (
        "min cardinality in a datatype",
        good_patient(identifier=[{"value": "1"}]),
        "Patient.identifier[0].system",
        "structure",
    ),
    (
        "fixed value",
        good_patient(identifier=[{"system": "http://other.example/id", "value": "1"}]),
        "Patient.identifier[0].system",
        "value",
    ),
    (
        "pattern value",
        good_patient(name=[{"use": "usual", "family": "Núñez", "given": ["José"]}]),
        "Patient.name[0]",
        "value",
    ),
    (
        "maxLength",
        good_patient(name=[{"use": "official", "family": "Vallejo-Andrade", "given": ["A"]}]),
        "Patient.name[0].family",
        "value",
    ),
    (
        "max 0 (prohibited)",
        good_patient(photo=[{"contentType": "image/png", "url": "http://x.example/p.png"}]),
        "Patient.photo",
        "structure",
    ),
    ("minValueDate", good_patient(birthDate="1899-12-31"), "Patient.birthDate", "value"),
    (
        "choice type narrowed",
        good_patient(multipleBirthBoolean=True),
        "Patient.multipleBirth.ofType(boolean)",
        "structure",
    ),
    (
        "maxValueInteger",
        good_patient(multipleBirthInteger=6),
        "Patient.multipleBirth.ofType(integer)",
        "value",
    ),
    (
        "max cardinality",
        good_patient(
            generalPractitioner=[{"reference": "Practitioner/a"}, {"reference": "Practitioner/b"}]
        ),
        "Patient.generalPractitioner",
        "structure",
    ),
    (
        "targetProfile",
        good_patient(generalPractitioner=[{"reference": "Organization/o1"}]),
        "Patient.generalPractitioner[0]",
        "structure",
    ),
    (
        "constraint (FHIRPath)",
        good_patient(name=[{"use": "official", "family": "Núñez"}]),
        "Patient",
        "invariant",
    ),
]

OBS_CASES = [
    ("fixedCode", good_observation(status="amended"), "Observation.status", "value"),
    (
        "patternCodeableConcept",
        good_observation(code={"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}),
        "Observation.code",
        "value",
    ),
    (
        "choice min 1",
        without(good_observation(), "valueQuantity"),
        "Observation.value",
        "structure",
    ),
    (
        "choice type",
        {**without(good_observation(), "valueQuantity"), "valueString": "high"},
        "Observation.value.ofType(string)",
        "structure",
    ),
    (
        "minValueDecimal",
        good_observation(
            valueQuantity={"value": -0.5, "system": "http://unitsofmeasure.org", "code": "mg/dL"}
        ),
        "Observation.value.ofType(Quantity).value",
        "value",
    ),
    (
        "maxValueQuantity",
        good_observation(
            valueQuantity={"value": 1200, "system": "http://unitsofmeasure.org", "code": "mg/dL"}
        ),
        "Observation.value.ofType(Quantity)",
        "value",
    ),
    (
        "maxValueDateTime",
        good_observation(effectiveDateTime="2101-03-01T00:00:00Z"),
        "Observation.effective.ofType(dateTime)",
        "value",
    ),
]


def test_conforming_resources_pass(api):
    assert errors(validate(api, "Patient", good_patient(), profile=PATIENT_URL)) == []
    assert errors(validate(api, "Observation", good_observation(), profile=OBS_URL)) == []


@pytest.mark.parametrize(
    ("case", "resource", "expression", "code"),
    PATIENT_CASES + OBS_CASES,
    ids=[c[0] for c in PATIENT_CASES + OBS_CASES],
)
def test_each_rule_fails(api, case, resource, expression, code):
    url = PATIENT_URL if resource["resourceType"] == "Patient" else OBS_URL
    found = errors(validate(api, resource["resourceType"], resource, profile=url))
    assert len(found) == 1, found
    assert found[0]["code"] == code and found[0]["expression"] == [expression], found
    assert url in found[0]["diagnostics"]
    # the same resource without the profile is valid R4
    assert errors(validate(api, resource["resourceType"], resource)) == []


def test_messages_name_profile_element_and_rule(api):
    r = validate(api, "Patient", without(good_patient(), "identifier"), profile=PATIENT_URL)
    assert errors(r)[0]["diagnostics"] == (
        f"Patient.identifier: minimum required = 1, but only found 0 (profile {PATIENT_URL})"
    )
    r = validate(api, "Patient", good_patient(name=[{"family": "X"}]), profile=PATIENT_URL)
    text = " ".join(i["diagnostics"] for i in errors(r))
    assert "clinic-1" in text and "A patient has a given name" in text


def test_warning_constraint_is_a_warning(api):
    r = validate(api, "Patient", without(good_patient(), "telecom"), profile=PATIENT_URL)
    assert errors(r) == []
    issues = without_best_practice(r.json()["issue"])
    warnings = [i for i in issues if i["severity"] == "warning"]
    assert [w["expression"] for w in warnings] == [["Patient"]]
    assert "clinic-2" in warnings[0]["diagnostics"]


def test_profile_in_parameters_and_instance_validate(api):
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": good_patient(id="p1", identifier=[{"value": "1"}])},
            {"name": "profile", "valueCanonical": PATIENT_URL},
            {"name": "mode", "valueCode": "update"},
        ],
    }
    r = validate(api, "Patient/p1", body)
    assert expressions(errors(r)) == ["Patient.identifier[0].system"]


def test_versioned_canonical(api):
    versioned = {**PATIENT_PROFILE, "url": PATIENT_URL + "-v", "version": "2.0"}
    assert post(api, versioned).status_code == 201
    r = validate(
        api, "Patient", without(good_patient(), "identifier"), profile=versioned["url"] + "|2.0"
    )
    assert expressions(errors(r)) == ["Patient.identifier"]
    r = validate(api, "Patient", good_patient(), profile=versioned["url"] + "|1.0")
    issues = assert_outcome(r, 400)
    assert issues[0]["code"] == "not-found"


def test_unknown_profile_is_an_error(api):
    unknown = "http://clinic.example/StructureDefinition/nope"
    issues = assert_outcome(validate(api, "Patient", good_patient(), profile=unknown), 400)
    assert issues[0]["code"] == "not-found" and expressions(issues) == ["profile"]
    assert unknown in issues[0]["diagnostics"]
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": good_patient()},
            {"name": "profile", "valueUri": unknown},
        ],
    }
    issues = assert_outcome(validate(api, "Patient", body), 400)
    assert issues[0]["code"] == "not-found" and expressions(issues) == ["profile"]


# --- meta.profile on writes --------------------------------------------------------------------


def claiming(resource: dict[str, Any], *urls: str) -> dict[str, Any]:
    return {**resource, "meta": {"profile": list(urls)}}


def test_create_checks_meta_profile(api, settings):
    before = stored_document_count(settings)
    bad = claiming(without(good_patient(), "identifier"), PATIENT_URL)
    issues = assert_outcome(post(api, bad), 422)
    assert expressions(issues) == ["Patient.identifier"]
    assert stored_document_count(settings) == before
    assert post(api, claiming(good_patient(), PATIENT_URL)).status_code == 201
    bad_obs = claiming(good_observation(status="preliminary"), OBS_URL)
    assert expressions(assert_outcome(post(api, bad_obs), 422)) == ["Observation.status"]
    assert post(api, claiming(good_observation(), OBS_URL)).status_code == 201


def test_update_and_patch_check_meta_profile(api):
    r = put(api, claiming(good_patient(id="u1"), PATIENT_URL))
    assert r.status_code == 201, r.text
    bad = claiming(good_patient(id="u1", birthDate="1850-01-01"), PATIENT_URL)
    assert expressions(assert_outcome(put(api, bad), 422)) == ["Patient.birthDate"]
    patch = [{"op": "replace", "path": "/birthDate", "value": "1850-01-01"}]
    r = api.patch(
        "/fhir/Patient/u1",
        content=json.dumps(patch),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert expressions(assert_outcome(r, 422)) == ["Patient.birthDate"]
    assert api.get("/fhir/Patient/u1").json()["birthDate"] == "1980-02-29"


def test_profile_the_server_does_not_hold_is_ignored(api):
    unknown = "http://elsewhere.example/StructureDefinition/other"
    r = post(api, claiming(without(good_patient(), "identifier"), unknown))
    assert r.status_code == 201, r.text
    r = post(api, claiming(without(good_patient(), "identifier"), unknown, PATIENT_URL))
    assert expressions(assert_outcome(r, 422)) == ["Patient.identifier"]


def test_warn_enforcement_accepts(settings):
    with app_client(settings, profile_enforcement="warn") as c:
        assert post(c, PATIENT_PROFILE).status_code == 201
        bad = claiming(without(good_patient(), "identifier"), PATIENT_URL)
        assert post(c, bad).status_code == 201
        issues = without_best_practice(validate(c, "Patient", bad).json()["issue"])
        assert [(i["severity"], i["expression"]) for i in issues] == [
            ("warning", ["Patient.identifier"])
        ]
        # a nominated profile is still an error
        assert expressions(errors(validate(c, "Patient", bad, profile=PATIENT_URL))) == [
            "Patient.identifier"
        ]


def test_meta_profile_in_validate_without_nominated_profile(api):
    bad = claiming(without(good_patient(), "identifier"), PATIENT_URL)
    assert expressions(errors(validate(api, "Patient", bad))) == ["Patient.identifier"]


# --- the cache ----------------------------------------------------------------------------------


def test_new_version_of_a_profile_is_used_at_once(api):
    stored = api.get("/fhir/StructureDefinition", params={"url": PATIENT_URL}).json()
    sd = stored["entry"][0]["resource"]
    lenient = good_patient(gender="unknown")
    assert errors(validate(api, "Patient", lenient, profile=PATIENT_URL)) == []
    assert post(api, claiming(lenient, PATIENT_URL)).status_code == 201
    stricter = {**sd}
    stricter["differential"] = {
        "element": sd["differential"]["element"]
        + [{"id": "Patient.gender", "path": "Patient.gender", "fixedCode": "female"}]
    }
    assert put(api, stricter).status_code == 200
    found = errors(validate(api, "Patient", lenient, profile=PATIENT_URL))
    assert expressions(found) == ["Patient.gender"]
    assert expressions(assert_outcome(post(api, claiming(lenient, PATIENT_URL)), 422)) == [
        "Patient.gender"
    ]
    # and back: deleting the profile makes meta.profile unknown (ignored) again
    assert api.delete(f"/fhir/StructureDefinition/{sd['id']}").status_code in (200, 204)
    assert post(api, claiming(lenient, PATIENT_URL)).status_code == 201
    assert_outcome(validate(api, "Patient", lenient, profile=PATIENT_URL), 400)


def test_other_process_writes_are_seen(api, settings):
    """A StructureDefinition written through another app (another process's cache) is
    used at once: the registry's stamp is the newest StructureDefinition version."""
    lenient = good_patient(gender="unknown")
    assert post(api, claiming(lenient, PATIENT_URL)).status_code == 201
    sd = api.get("/fhir/StructureDefinition", params={"url": PATIENT_URL}).json()["entry"][0][
        "resource"
    ]
    stricter = {
        **sd,
        "differential": {
            "element": [{"id": "Patient.gender", "path": "Patient.gender", "fixedCode": "female"}]
        },
    }
    with TestClient(create_app(settings), base_url="http://testserver") as other:
        assert put(other, stricter).status_code == 200
    r = post(api, claiming(lenient, PATIENT_URL))
    assert expressions(assert_outcome(r, 422)) == ["Patient.gender"]


# --- transactions and batches -----------------------------------------------------------------


def bundle(kind: str, *resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {
                "fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000000{i}",
                "resource": r,
                "request": {"method": "POST", "url": r["resourceType"]},
            }
            for i, r in enumerate(resources)
        ],
    }


def post_bundle(client, body: dict[str, Any]):
    return client.post("/fhir", content=json.dumps(body), headers={"Content-Type": FHIR_JSON})


def test_transaction_with_a_violating_entry_is_refused(api, settings):
    before = stored_document_count(settings)
    body = bundle(
        "transaction",
        claiming(good_patient(), PATIENT_URL),
        claiming(good_observation(status="amended"), OBS_URL),
    )
    issues = assert_outcome(post_bundle(api, body), 422)
    assert expressions(issues) == ["Bundle.entry[1].resource.status"]
    assert stored_document_count(settings) == before
    body = bundle(
        "transaction",
        claiming(good_patient(), PATIENT_URL),
        claiming(good_observation(), OBS_URL),
    )
    assert len(bundle_response(post_bundle(api, body))) == 2


def test_batch_entry_with_a_violation_fails_alone(api):
    body = bundle(
        "batch",
        claiming(without(good_patient(), "identifier"), PATIENT_URL),
        claiming(good_observation(), OBS_URL),
    )
    entries = bundle_response(post_bundle(api, body), "batch-response")
    assert entries[0]["response"]["status"].startswith("422")
    outcome = entries[0]["response"]["outcome"]
    assert [e for i in outcome["issue"] for e in i.get("expression", [])] == ["Patient.identifier"]
    assert entries[1]["response"]["status"].startswith("201")


# --- slicing (profiling.html#slicing), value and pattern discriminators -------------------------

SLICED_URL = "http://clinic.example/StructureDefinition/sliced-patient"
ETHNICITY = "http://clinic.example/StructureDefinition/ethnicity"
CEDULA = "http://clinic.example/cedula"
PASSPORT = "http://clinic.example/passport"

SLICED_PROFILE = {
    **profile(SLICED_URL, "Patient", []),
    "differential": {
        "element": [
            {
                "id": "Patient.identifier",
                "path": "Patient.identifier",
                "slicing": {
                    "discriminator": [{"type": "value", "path": "system"}],
                    "rules": "closed",
                    "ordered": True,
                },
            },
            {
                "id": "Patient.identifier:cedula",
                "path": "Patient.identifier",
                "sliceName": "cedula",
                "min": 1,
                "max": "1",
            },
            {
                "id": "Patient.identifier:cedula.system",
                "path": "Patient.identifier.system",
                "fixedUri": CEDULA,
            },
            {
                "id": "Patient.identifier:cedula.value",
                "path": "Patient.identifier.value",
                "min": 1,
                "constraint": [
                    {
                        "key": "ced-1",
                        "severity": "error",
                        "human": "A cédula has 10 digits",
                        "expression": "matches('^[0-9]{10}$')",
                    }
                ],
            },
            {
                "id": "Patient.identifier:passport",
                "path": "Patient.identifier",
                "sliceName": "passport",
                "max": "1",
            },
            {
                "id": "Patient.identifier:passport.system",
                "path": "Patient.identifier.system",
                "patternUri": PASSPORT,
            },
            {
                "id": "Patient.telecom",
                "path": "Patient.telecom",
                "slicing": {
                    "discriminator": [{"type": "pattern", "path": "$this"}],
                    "rules": "openAtEnd",
                },
            },
            {
                "id": "Patient.telecom:mobile",
                "path": "Patient.telecom",
                "sliceName": "mobile",
                "min": 1,
                "patternContactPoint": {"system": "phone", "use": "mobile"},
            },
            {
                "id": "Patient.extension:ethnicity",
                "path": "Patient.extension",
                "sliceName": "ethnicity",
                "min": 1,
                "type": [{"code": "Extension", "profile": [ETHNICITY]}],
            },
        ]
    },
}

MOBILE = {"system": "phone", "use": "mobile", "value": "0991234567"}
ETHNIC = {"url": ETHNICITY, "valueString": "mestizo"}


def sliced_patient(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "identifier": [{"system": CEDULA, "value": "1710034065"}],
        "telecom": [MOBILE],
        "extension": [ETHNIC],
    }
    return patient(**{**base, **extra})


SLICING_CASES = [
    (
        "slice min (value discriminator)",
        sliced_patient(identifier=[{"system": PASSPORT, "value": "A123"}]),
        ["Patient.identifier"],
    ),
    (
        "slice max",
        sliced_patient(
            identifier=[
                {"system": CEDULA, "value": "1710034065"},
                {"system": CEDULA, "value": "0912345678"},
            ]
        ),
        ["Patient.identifier"],
    ),
    (
        "closed slicing",
        sliced_patient(
            identifier=[
                {"system": CEDULA, "value": "1710034065"},
                {"system": "http://other.example/id", "value": "1"},
            ]
        ),
        ["Patient.identifier[1]"],
    ),
    (
        "ordered slicing",
        sliced_patient(
            identifier=[
                {"system": PASSPORT, "value": "A123"},
                {"system": CEDULA, "value": "1710034065"},
            ]
        ),
        ["Patient.identifier[1]"],
    ),
    (
        "a rule inside a slice",
        sliced_patient(identifier=[{"system": CEDULA, "value": "17100"}]),
        ["Patient.identifier[0].value"],
    ),
    (
        "pattern discriminator on $this",
        sliced_patient(telecom=[{"system": "phone", "use": "home", "value": "022345678"}]),
        ["Patient.telecom"],
    ),
    (
        "openAtEnd",
        sliced_patient(telecom=[{"system": "email", "value": "a@b.example"}, MOBILE]),
        ["Patient.telecom[0]"],
    ),
    (
        "extension slice by url (its type's profile)",
        sliced_patient(extension=[{"url": "http://other.example/x", "valueString": "a"}]),
        ["Patient.extension"],
    ),
]


@pytest.fixture
def sliced(client):
    assert post(client, SLICED_PROFILE).status_code == 201
    return client


def test_sliced_conforming(sliced):
    ok = sliced_patient(
        identifier=[
            {"system": CEDULA, "value": "1710034065"},
            {"system": PASSPORT, "value": "A123"},
        ],
        telecom=[MOBILE, {"system": "email", "value": "a@b.example"}],
    )
    assert errors(validate(sliced, "Patient", ok, profile=SLICED_URL)) == []


@pytest.mark.parametrize(
    ("case", "resource", "where"), SLICING_CASES, ids=[c[0] for c in SLICING_CASES]
)
def test_slicing_rule_fails(sliced, case, resource, where):
    found = errors(validate(sliced, "Patient", resource, profile=SLICED_URL))
    assert expressions(found) == where, found
    assert all(SLICED_URL in i["diagnostics"] for i in found)
    assert errors(validate(sliced, "Patient", resource)) == []


# --- how profiles are read ----------------------------------------------------------------------


def test_snapshot_is_used_when_present(client):
    """profiling.html: the snapshot is the full definition; when a profile has one it is
    what applies (here, on purpose, it says something else than the differential)."""
    url = "http://clinic.example/StructureDefinition/with-snapshot"
    sd = profile(url, "Patient", [{"path": "Patient.active", "fixedBoolean": True}])
    # sdf-3 and sdf-8b: every snapshot element has a definition, cardinalities and a base
    sd["snapshot"] = {
        "element": [
            {
                "id": "Patient",
                "path": "Patient",
                "min": 0,
                "max": "*",
                "definition": "A patient.",
                "base": {"path": "Patient", "min": 0, "max": "*"},
            },
            {
                "id": "Patient.gender",
                "path": "Patient.gender",
                "min": 1,
                "max": "1",
                "type": [{"code": "code"}],
                "fixedCode": "female",
                "definition": "The gender, here always female.",
                "base": {"path": "Patient.gender", "min": 0, "max": "1"},
            },
        ]
    }
    assert post(client, sd).status_code == 201
    r = validate(client, "Patient", patient(active=False), profile=url)
    assert expressions(errors(r)) == ["Patient.gender"]


def test_profile_of_a_profile(api):
    """A differential over another profile (baseDefinition a stored profile): the base
    profile's rules hold as well as its own."""
    url = "http://clinic.example/StructureDefinition/clinic-patient-female"
    sd = profile(url, "Patient", [{"path": "Patient.gender", "fixedCode": "female"}])
    sd["baseDefinition"] = PATIENT_URL
    assert post(api, sd).status_code == 201
    both = without(good_patient(), "identifier")
    found = errors(validate(api, "Patient", both, profile=url))
    assert sorted(expressions(found)) == ["Patient.gender", "Patient.identifier"]
    assert {PATIENT_URL, url} == {i["diagnostics"].rsplit("(profile ", 1)[1][:-1] for i in found}
    assert errors(validate(api, "Patient", good_patient(gender="female"), profile=url)) == []
    orphan = {**sd, "url": url + "-orphan", "baseDefinition": "http://nowhere.example/SD/x"}
    assert post(api, orphan).status_code == 201
    issues = assert_outcome(validate(api, "Patient", good_patient(), profile=orphan["url"]), 400)
    assert issues[0]["code"] == "not-supported" and expressions(issues) == ["profile"]


def test_base_required_elements_are_not_reported_twice(api):
    """Observation.status is 1..1 in R4: the base pass reports it missing, once."""
    url = "http://clinic.example/StructureDefinition/obs-status"
    sd = profile(url, "Observation", [{"path": "Observation.status", "min": 1}])
    assert post(api, sd).status_code == 201
    found = errors(validate(api, "Observation", without(good_observation(), "status"), profile=url))
    assert expressions(found) == ["Observation.status"]


def test_profile_issues_are_bounded(settings):
    """As the base pass, profile validation stops at FHIR_VALIDATION_MAX_ISSUES."""
    with app_client(settings, validation_max_issues=10) as c:
        assert post(c, PATIENT_PROFILE).status_code == 201
        many = good_patient(identifier=[{"value": str(i)} for i in range(50)])
        issues = validate(c, "Patient", many, profile=PATIENT_URL).json()["issue"]
        assert len([i for i in issues if i["severity"] == "error"]) == 10
        assert issues[-1]["code"] == "too-costly"
        issues = assert_outcome(post(c, claiming(many, PATIENT_URL)), 422)
        assert len(issues) == 11 and issues[-1]["code"] == "too-costly"


def test_mode_profile_checks_the_stored_resource(api):
    """resource-validation-mode ``profile``: the server checks an existing resource,
    nominated by id (not provided as a parameter), against the nominated profile."""
    assert put(api, good_patient(id="m1")).status_code == 201
    assert put(api, without(good_patient(id="m2"), "identifier")).status_code == 201
    assert errors(validate(api, "Patient/m1", mode="profile", profile=PATIENT_URL)) == []
    found = errors(validate(api, "Patient/m2", mode="profile", profile=PATIENT_URL))
    assert expressions(found) == ["Patient.identifier"]
    assert_outcome(validate(api, "Patient/nope", mode="profile", profile=PATIENT_URL), 404)
    issues = assert_outcome(validate(api, "Patient/m1", mode="profile"), 400)
    assert expressions(issues) == ["profile"]
    issues = assert_outcome(
        validate(api, "Patient/m1", good_patient(id="m1"), mode="profile", profile=PATIENT_URL),
        400,
    )
    assert expressions(issues) == ["resource"]
    issues = assert_outcome(validate(api, "Patient", mode="profile", profile=PATIENT_URL), 400)
    assert expressions(issues) == ["mode"]


def test_transaction_put_and_patch_entries_are_checked(api, settings):
    assert put(api, claiming(good_patient(id="t1"), PATIENT_URL)).status_code == 201
    bad = claiming(good_patient(id="t1", birthDate="1850-01-01"), PATIENT_URL)
    body = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": bad, "request": {"method": "PUT", "url": "Patient/t1"}}],
    }
    issues = assert_outcome(post_bundle(api, body), 422)
    assert expressions(issues) == ["Bundle.entry[0].resource.birthDate"]
    ops = [{"op": "replace", "path": "/birthDate", "value": "1850-01-01"}]
    patch = {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(json.dumps(ops).encode()).decode(),
    }
    body["entry"] = [{"resource": patch, "request": {"method": "PATCH", "url": "Patient/t1"}}]
    before = stored_document_count(settings)
    issues = assert_outcome(post_bundle(api, body), 422)
    assert expressions(issues) == ["Bundle.entry[0].resource.birthDate"]
    assert stored_document_count(settings) == before
    assert api.get("/fhir/Patient/t1").json()["birthDate"] == "1980-02-29"


def test_slice_discriminated_inside_a_slice_of_the_slice(client):
    """As the R4 bp profile: components sliced by ``code.coding.code``, the value fixed in
    a slice of the component's coding; and a constraint on a primitive that needs its
    type (vs-1's ``$this as dateTime``)."""
    url = "http://clinic.example/StructureDefinition/bp"

    def element(ident: str, **extra: Any) -> dict[str, Any]:
        path = ".".join(part.split(":")[0] for part in ident.split("."))
        return {"id": ident, "path": path, **extra}

    code_slicing = {"discriminator": [{"type": "value", "path": "code"}], "rules": "open"}
    sd = {
        **profile(url, "Observation", []),
        "differential": {
            "element": [
                element(
                    "Observation.effective[x]",
                    constraint=[
                        {
                            "key": "day-1",
                            "severity": "error",
                            "human": "precise to the day",
                            "expression": "($this as dateTime).toString().length() >= 10",
                        }
                    ],
                ),
                element(
                    "Observation.component",
                    slicing={
                        "discriminator": [{"type": "value", "path": "code.coding.code"}],
                        "rules": "open",
                    },
                ),
                element("Observation.component:sys", sliceName="sys", min=1, max="1"),
                element("Observation.component:sys.code.coding", slicing=code_slicing),
                element("Observation.component:sys.code.coding:loinc", sliceName="loinc", min=1),
                element("Observation.component:sys.code.coding:loinc.code", fixedCode="8480-6"),
                element("Observation.component:sys.value[x]", type=[{"code": "Quantity"}]),
            ]
        },
    }
    assert post(client, sd).status_code == 201

    def component(code: str, **value: Any) -> dict[str, Any]:
        return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]}, **value}

    ok = good_observation(component=[component("8480-6", valueQuantity={"value": 120})])
    assert errors(validate(client, "Observation", ok, profile=url)) == []
    missing = good_observation(component=[component("8462-4", valueQuantity={"value": 80})])
    found = errors(validate(client, "Observation", missing, profile=url))
    assert expressions(found) == ["Observation.component"]
    wrong_type = good_observation(component=[component("8480-6", valueString="120")])
    found = errors(validate(client, "Observation", wrong_type, profile=url))
    assert expressions(found) == ["Observation.component[0].value.ofType(string)"]
    imprecise = good_observation(
        effectiveDateTime="2024-05", component=[component("8480-6", valueQuantity={"value": 1})]
    )
    found = errors(validate(client, "Observation", imprecise, profile=url))
    assert expressions(found) == ["Observation.effective.ofType(dateTime)"]
    assert "day-1" in found[0]["diagnostics"]


def test_profile_of_another_type(api):
    found = errors(validate(api, "Observation", good_observation(), profile=PATIENT_URL))
    assert len(found) == 1 and found[0]["code"] == "invalid"
    assert "applies to Patient resources" in found[0]["diagnostics"]
