"""Index-on-write: the search parameter registry and the values extracted per type.

Every expected value below is worked out by hand from the resource beside it and the
storage contract in fhir_server/search/values.py.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from bson.decimal128 import Decimal128

from fhir_server.jsonio import dumps, parse_json
from fhir_server.search.extract import (
    Acc,
    Index,
    UnknownElement,
    Unsupported,
    _store,
    compile_branches,
    converter,
    dedupe,
    evaluate_fhirpathpy,
    expression_problems,
    fallback_params,
    index_resource,
    reference_type,
    type_plan,
)
from fhir_server.search.registry import Registry, SearchParam, restrict_expression, split_union
from fhir_server.search.values import DATE_MAX, DATE_MIN, SEP, decimal128

REG = Registry.from_definitions()
S = SEP  # the token separator, U+001F


def d128(text: str) -> Decimal128:
    return Decimal128(Decimal(text))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type,misc]


def param(resource_type: str, code: str, registry: Registry = REG) -> SearchParam:
    found = registry.get(resource_type, code)
    assert found is not None, f"{resource_type}.{code}"
    return found


def parsed(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as the server parses it (decimals as JsonDecimal)."""
    return parse_json(dumps(resource))  # type: ignore[no-any-return]


# --- every test resource is also checked against fhirpathpy ------------------------------


def _strict_fhirpath(expression: str) -> str:
    """fhirpathpy raises on ``as`` over a collection; the definitions mean ofType()."""
    expression = re.sub(r"\.as\((\w+)\)", r".ofType(\1)", expression)
    return re.sub(r"\(([A-Za-z.]+) as (\w+)\)", r"\1.ofType(\2)", expression)


def _fhirpathpy_index(resource: dict[str, Any]) -> Index:
    """index_resource, with every expression evaluated by fhirpathpy instead."""
    rt = resource["resourceType"]
    index = Index()
    for plan in type_plan(REG, rt).params:
        param, acc = plan.param, Acc()
        for dt, value in evaluate_fhirpathpy(
            _strict_fhirpath(param.expression or ""), resource, resource, rt
        ):
            if param.type != "composite":
                if (fn := converter(param.type, dt)) is not None:
                    fn(value, acc, resource)
                continue
            entry = {}
            for c in param.components:
                sub = Acc()
                for dt2, v2 in evaluate_fhirpathpy(
                    _strict_fhirpath(c.expression), value, resource, rt, dt
                ):
                    if (fn := converter(c.type, dt2)) is not None:
                        fn(v2, sub, resource)
                if not sub.values:
                    break
                entry[c.code] = dedupe(sub.values)
            else:
                acc.values.append(entry)
        if acc.values or acc.extra:
            _store(plan, acc, index)
    return index


def index(resource: dict[str, Any], registry: Registry = REG) -> Index:
    """index_resource on the parsed resource, checked against fhirpathpy's evaluation of
    the same expressions (for the core registry)."""
    res = parsed(resource)
    compiled = index_resource(res, registry)
    if registry is REG:
        reference = _fhirpathpy_index(res)
        assert (compiled.sp, compiled.so) == (reference.sp, reference.so)
    return compiled


# --- resources used across the tests ------------------------------------------------------

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {
        "lastUpdated": "2024-05-06T07:08:09.123+00:00",
        "tag": [{"system": "http://example.org/tags", "code": "t1", "display": "Tag One"}],
        "security": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
        ],
        "profile": ["http://example.org/StructureDefinition/p|2.0"],
        "source": "http://example.org/source#abc",
    },
    "identifier": [
        {
            "system": "http://hospital.example.org/mrn",
            "value": "MRN-1",
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                ],
                "text": "Medical Record Number",
            },
        },
        {"value": "no-system"},
    ],
    "active": True,
    "name": [
        {"family": "Núñez", "given": ["José", "María"], "prefix": ["Dr."], "suffix": ["Jr."]},
        {"text": "Pepe  NÚÑEZ"},
    ],
    "telecom": [
        {"system": "phone", "value": "+1 555 0100", "use": "home"},
        {"system": "email", "value": "jose@example.org"},
    ],
    "gender": "male",
    "birthDate": "1970-03",
    "address": [
        {
            "line": ["1 Calle Mayor", "Piso 2"],
            "city": "Málaga",
            "district": "Centro",
            "state": "Andalucía",
            "postalCode": "29001",
            "country": "ES",
        }
    ],
    "link": [
        {"other": {"reference": "Patient/p0"}, "type": "replaces"},
        {"other": {"reference": "RelatedPerson/r1"}, "type": "seealso"},
    ],
}

OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                }
            ]
        }
    ],
    "code": {
        "coding": [
            {"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"},
            {"system": "http://snomed.info/sct", "code": "27113001"},
        ],
        "text": "Weight",
    },
    "subject": {"reference": "Patient/p1"},
    "performer": [
        {"reference": "Practitioner/dr1"},
        {"reference": "http://example.org/fhir/Patient/p2"},
    ],
    "encounter": {"reference": "Encounter/e1/_history/3"},
    "effectiveDateTime": "2020-01-02T10:00:00+02:00",
    "valueQuantity": {
        "value": Decimal("72.50"),
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    },
}

BLOOD_PRESSURE = {
    "resourceType": "Observation",
    "id": "bp",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
    "subject": {"reference": "Group/g1"},
    "effectivePeriod": {"start": "2021-06-01"},
    "component": [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {
                "value": 120,
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
            "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "9999-9"}]},
            "valueString": "no quantity here",
        },
    ],
}


@pytest.fixture(scope="module")
def patient() -> Index:
    return index(PATIENT)


@pytest.fixture(scope="module")
def observation() -> Index:
    return index(OBSERVATION)


@pytest.fixture(scope="module")
def blood_pressure() -> Index:
    return index(BLOOD_PRESSURE)


# --- the registry -----------------------------------------------------------------------


def test_registry_has_every_type_and_the_common_parameters() -> None:
    observation = REG.params("Observation")
    assert observation["code"].type == "token"
    assert observation["_lastUpdated"].type == "date"
    assert observation["_lastUpdated"].base == "Resource"
    assert REG.get("Observation", "_lastUpdated") is REG.get("Patient", "_lastUpdated")
    assert REG.get("Observation", "nope") is None
    assert REG.params("Basic")["_id"].expression == "Resource.id"
    for code in ("_text", "_content", "_query"):
        assert not REG.params("Patient")[code].supported
    assert len(list(REG.resource_types())) == 146


def test_multi_base_unions_are_restricted_to_each_type() -> None:
    assert param("AllergyIntolerance", "patient").expression == "AllergyIntolerance.patient"
    assert (
        param("Observation", "patient").expression
        == "Observation.subject.where(resolve() is Patient)"
    )
    code = param("MedicationRequest", "code")
    assert code.expression == "(MedicationRequest.medication as CodeableConcept)"
    assert param("Condition", "code").url == "http://hl7.org/fhir/SearchParameter/clinical-code"


def test_reference_targets_and_components() -> None:
    assert set(param("Observation", "subject").targets) == {
        "Device",
        "Group",
        "Location",
        "Patient",
    }
    assert len(param("Basic", "subject").targets) == 145  # Reference(Any): all but Parameters
    cvq = param("Observation", "code-value-quantity")
    assert [(c.code, c.type, c.expression) for c in cvq.components] == [
        ("code", "token", "code"),
        ("value-quantity", "quantity", "value.as(Quantity)"),
    ]
    assert not cvq.multiple_or
    assert "ge" in param("Observation", "date").comparators
    # published swapped in R4; the generator puts each on its own element
    rel = param("DocumentReference", "relationship")
    assert [(c.code, c.expression) for c in rel.components] == [
        ("relatesto", "target"),
        ("relation", "code"),
    ]


def test_non_r4_parameters_are_left_out() -> None:
    assert REG.get("DeviceDefinition", "classification") is None


def test_patient_compartment() -> None:
    assert REG.patient_compartment("Observation") == ("subject", "performer")
    assert REG.patient_compartment("Patient") == ("link",)
    assert REG.patient_compartment("Organization") == ()


def test_split_and_restrict_unions() -> None:
    expr = "(A.x as T) | A.y.where(z = 'a|b') | B.x"
    assert split_union(expr) == ["(A.x as T)", "A.y.where(z = 'a|b')", "B.x"]
    assert restrict_expression(expr, "Observation") is None
    assert restrict_expression("value.as(Quantity) | value.as(Range)", "Observation") == (
        "value.as(Quantity) | value.as(Range)"
    )


def test_only_patient_deceased_needs_fhirpathpy() -> None:
    assert list(fallback_params(REG)) == [
        ("Patient", "deceased", "Patient.deceased.exists() and Patient.deceased != false")
    ]


# --- token --------------------------------------------------------------------------------


def test_token_codeable_concept(observation: Index) -> None:
    assert observation.sp["code"] == [
        "29463-7",
        f"http://loinc.org{S}29463-7",
        "27113001",
        f"http://snomed.info/sct{S}27113001",
    ]
    assert observation.sp["code:text"] == ["body weight", "weight"]
    assert observation.so["code"] == {"a": "27113001", "d": "29463-7"}


def test_token_code_primitive_and_boolean(patient: Index, observation: Index) -> None:
    assert observation.sp["status"] == ["final", f"{S}final"]
    assert patient.sp["gender"] == ["male", f"{S}male"]
    assert patient.sp["active"] == ["true", f"{S}true"]
    assert patient.so["active"] == {"a": "true", "d": "true"}


def test_token_identifier(patient: Index) -> None:
    assert patient.sp["identifier"] == [
        "MRN-1",
        f"http://hospital.example.org/mrn{S}MRN-1",
        "no-system",
        f"{S}no-system",
    ]
    assert patient.sp["identifier:of-type"] == [
        f"http://terminology.hl7.org/CodeSystem/v2-0203{S}MR{S}MRN-1"
    ]
    assert patient.sp["identifier:text"] == ["medical record number"]


def test_token_contact_point_and_where_system(patient: Index) -> None:
    assert patient.sp["telecom"] == [
        "+1 555 0100",
        f"{S}+1 555 0100",
        "jose@example.org",
        f"{S}jose@example.org",
    ]
    assert patient.sp["phone"] == ["+1 555 0100", f"{S}+1 555 0100"]
    assert patient.sp["email"] == ["jose@example.org", f"{S}jose@example.org"]


def test_token_coding_from_meta(patient: Index) -> None:
    assert patient.sp["_tag"] == ["t1", f"http://example.org/tags{S}t1"]
    assert patient.sp["_tag:text"] == ["tag one"]
    assert patient.sp["_security"] == [
        "R",
        f"http://terminology.hl7.org/CodeSystem/v3-Confidentiality{S}R",
    ]


def test_deceased_through_fhirpathpy() -> None:
    alive = index({"resourceType": "Patient", "id": "a"})
    assert alive.sp["deceased"] == ["false", f"{S}false"]
    dead = index({"resourceType": "Patient", "id": "b", "deceasedDateTime": "2020"})
    assert dead.sp["deceased"] == ["true", f"{S}true"]
    not_dead = index({"resourceType": "Patient", "id": "c", "deceasedBoolean": False})
    assert not_dead.sp["deceased"] == ["false", f"{S}false"]


# --- string -------------------------------------------------------------------------------


def test_string_human_name_with_accents(patient: Index) -> None:
    assert patient.sp["name"] == [
        "nunez",
        "jose",
        "maria",
        "dr.",
        "jr.",
        "pepe nunez",
    ]
    assert patient.sp["name:exact"] == ["Núñez", "José", "María", "Dr.", "Jr.", "Pepe  NÚÑEZ"]
    assert patient.sp["family"] == ["nunez"]
    assert patient.sp["given"] == ["jose", "maria"]
    assert patient.so["name"] == {"a": "dr.", "d": "pepe nunez"}
    assert patient.so["family"] == {"a": "nunez", "d": "nunez"}


def test_string_address(patient: Index) -> None:
    assert patient.sp["address"] == [
        "1 calle mayor",
        "piso 2",
        "malaga",
        "centro",
        "andalucia",
        "29001",
        "es",
    ]
    assert patient.sp["address-city"] == ["malaga"]
    assert patient.sp["address-city:exact"] == ["Málaga"]
    assert patient.sp["address-state"] == ["andalucia"]
    assert patient.sp["address-postalcode"] == ["29001"]


def test_string_plain_and_markdown() -> None:
    org = index({"resourceType": "Organization", "id": "o", "name": "ACME  Ltd", "alias": ["Acmé"]})
    assert org.sp["name"] == ["acme ltd", "acme"]
    assert org.sp["name:exact"] == ["ACME  Ltd", "Acmé"]
    plan = index(
        {
            "resourceType": "PlanDefinition",
            "id": "x",
            "status": "draft",
            "description": "**Bold** plan",
        }
    )
    assert plan.sp["description"] == ["**bold** plan"]


# --- date ---------------------------------------------------------------------------------


def test_date_precision_and_time_zone(patient: Index, observation: Index) -> None:
    assert patient.sp["birthdate"] == [{"lo": utc(1970, 3, 1), "hi": utc(1970, 4, 1)}]
    assert observation.sp["date"] == [
        {"lo": utc(2020, 1, 2, 8, 0, 0), "hi": utc(2020, 1, 2, 8, 0, 1)}
    ]
    assert observation.so["date"] == {"a": utc(2020, 1, 2, 8, 0, 0), "d": utc(2020, 1, 2, 8, 0, 1)}


def test_date_instant_last_updated(patient: Index) -> None:
    lo = utc(2024, 5, 6, 7, 8, 9, 123000)
    assert patient.sp["_lastUpdated"] == [{"lo": lo, "hi": lo + timedelta(milliseconds=1)}]


def test_date_periods_with_open_ends(blood_pressure: Index) -> None:
    assert blood_pressure.sp["date"] == [{"lo": utc(2021, 6, 1), "hi": DATE_MAX}]
    assert blood_pressure.so["date"] == {"a": utc(2021, 6, 1), "d": DATE_MAX}
    ended = index(
        {
            "resourceType": "Encounter",
            "id": "e",
            "status": "finished",
            "class": {"code": "AMB"},
            "period": {"end": "2022-02-03T04:05:06Z"},
        }
    )
    assert ended.sp["date"] == [{"lo": DATE_MIN, "hi": utc(2022, 2, 3, 4, 5, 7)}]
    assert "length" not in ended.sp


def test_date_timing_outer_limits() -> None:
    plan = index(
        {
            "resourceType": "CarePlan",
            "id": "cp",
            "status": "active",
            "intent": "plan",
            "subject": {"reference": "Patient/p1"},
            "activity": [
                {
                    "detail": {
                        "status": "scheduled",
                        "scheduledTiming": {
                            "event": ["2023-01-10", "2023-01-05T10:00:00Z"],
                            "repeat": {
                                "boundsPeriod": {"start": "2023-01-01", "end": "2023-01-20"}
                            },
                        },
                    }
                },
                {"detail": {"status": "scheduled", "scheduledString": "whenever"}},
            ],
        }
    )
    assert plan.sp["activity-date"] == [{"lo": utc(2023, 1, 1), "hi": utc(2023, 1, 21)}]


# --- number and quantity ------------------------------------------------------------------


def test_number_decimal_and_range() -> None:
    risk = index(
        {
            "resourceType": "RiskAssessment",
            "id": "r",
            "status": "final",
            "subject": {"reference": "Patient/p1"},
            "prediction": [
                {"probabilityDecimal": 0.25},
                {"probabilityRange": {"low": {"value": 0.1}}},
            ],
        }
    )
    assert risk.sp["probability"] == [
        {"lo": d128("0.25"), "hi": d128("0.25")},
        {"lo": d128("0.1"), "hi": d128("Infinity")},
    ]
    assert risk.so["probability"] == {"a": d128("0.1"), "d": d128("Infinity")}
    seq = index(
        {
            "resourceType": "MolecularSequence",
            "id": "m",
            "coordinateSystem": 0,
            "variant": [{"start": 7}],
        }
    )
    assert seq.sp["variant-start"] == [{"lo": d128("7"), "hi": d128("7")}]


def test_quantity(observation: Index) -> None:
    weight = {
        "lo": d128("72.50"),
        "hi": d128("72.50"),
        "s": "http://unitsofmeasure.org",
        "c": "kg",
        "u": "kg",
    }
    assert observation.sp["value-quantity"] == [weight]
    assert observation.sp["combo-value-quantity"] == [weight]
    assert observation.so["value-quantity"] == {"a": d128("72.50"), "d": d128("72.50")}
    assert str(observation.sp["value-quantity"][0]["lo"]) == "72.50"  # precision kept


def test_quantity_money_age_and_range() -> None:
    item = index(
        {
            "resourceType": "ChargeItem",
            "id": "c",
            "status": "billed",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
            "priceOverride": {"value": 12.3, "currency": "EUR"},
            "quantity": {"value": 2},
            "factorOverride": 0.5,
        }
    )
    assert item.sp["price-override"] == [
        {"lo": d128("12.3"), "hi": d128("12.3"), "s": "urn:iso:std:iso:4217", "c": "EUR"}
    ]
    assert item.sp["quantity"] == [{"lo": d128("2"), "hi": d128("2")}]
    assert item.sp["factor-override"] == [{"lo": d128("0.5"), "hi": d128("0.5")}]
    onset = index(
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": {"reference": "Patient/p1"},
            "onsetAge": {
                "value": 40,
                "unit": "yr",
                "system": "http://unitsofmeasure.org",
                "code": "a",
            },
            "abatementRange": {"high": {"value": 50, "code": "a"}},
        }
    )
    assert onset.sp["onset-age"] == [
        {"lo": d128("40"), "hi": d128("40"), "s": "http://unitsofmeasure.org", "c": "a", "u": "yr"}
    ]
    assert onset.sp["abatement-age"] == [{"lo": d128("-Infinity"), "hi": d128("50"), "c": "a"}]
    assert "onset-date" not in onset.sp


def test_decimal128_matches_bson_and_rounds_long_values() -> None:
    for text in [
        "0",
        "-0.000",
        "1.50",
        "158.79260415288329",
        "-1E-6176",
        "1E+6111",
        "12345678901234567890123456789012.34",
    ]:
        assert decimal128(Decimal(text)).bid == Decimal128(Decimal(text)).bid, text
    assert decimal128(3).bid == Decimal128(Decimal(3)).bid
    assert decimal128(Decimal("1." + "1" * 40)) == d128("1." + "1" * 33)


# --- reference ----------------------------------------------------------------------------


def test_reference_forms(observation: Index) -> None:
    assert observation.sp["subject"] == ["Patient/p1"]
    assert observation.sp["patient"] == ["Patient/p1"]
    assert observation.sp["performer"] == [
        "Practitioner/dr1",
        "Patient/p2",
        "http://example.org/fhir/Patient/p2",
    ]
    assert observation.sp["encounter"] == ["Encounter/e1", "Encounter/e1/_history/3"]
    assert observation.so["performer"] == {
        "a": "Practitioner/dr1",
        "d": "http://example.org/fhir/Patient/p2",
    }


def test_reference_to_another_server_given_the_base_url() -> None:
    obs = {
        "resourceType": "Observation",
        "id": "o",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "http://other.example/fhir/Patient/pa"},
        "performer": [
            {"reference": "http://testserver/fhir/Patient/pb"},
            {"reference": "Practitioner/d"},
        ],
    }
    ix = index_resource(obs, REG, base_url="http://testserver/fhir/")
    assert ix.sp["subject"] == ["http://other.example/fhir/Patient/pa"]
    assert ix.sp["patient"] == ["http://other.example/fhir/Patient/pa"]  # no local key
    assert ix.sp["performer"] == [
        "Patient/pb",
        "http://testserver/fhir/Patient/pb",
        "Practitioner/d",
    ]
    assert ix.comp == ["Patient/pb"]
    # without the base URL any absolute reference may be local
    assert index_resource(obs).sp["subject"] == [
        "Patient/pa",
        "http://other.example/fhir/Patient/pa",
    ]


def test_where_resolve_keeps_only_that_type(blood_pressure: Index) -> None:
    assert blood_pressure.sp["subject"] == ["Group/g1"]
    assert "patient" not in blood_pressure.sp
    appointment = index(
        {
            "resourceType": "Appointment",
            "id": "a",
            "status": "booked",
            "participant": [
                {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
                {"actor": {"reference": "Practitioner/d"}, "status": "accepted"},
                {"actor": {"reference": "Location/l"}, "status": "accepted"},
            ],
        }
    )
    assert appointment.sp["patient"] == ["Patient/p1"]
    assert appointment.sp["practitioner"] == ["Practitioner/d"]
    assert appointment.sp["location"] == ["Location/l"]
    assert appointment.comp == ["Patient/p1"]


def test_reference_type_sources() -> None:
    root = {"contained": [{"resourceType": "Patient", "id": "c1"}]}
    assert reference_type({"reference": "#c1"}, root) == "Patient"
    assert reference_type({"reference": "Patient/1/_history/2"}, {}) == "Patient"
    assert reference_type({"reference": "https://x.org/fhir/Group/9"}, {}) == "Group"
    assert reference_type({"reference": "Patient?identifier=a|b"}, {}) == "Patient"
    assert reference_type({"reference": "urn:uuid:1234"}, {}) is None
    assert reference_type({"type": "Patient", "identifier": {"value": "x"}}, {}) == "Patient"


def test_reference_identifier() -> None:
    obs = index(
        {
            "resourceType": "Observation",
            "id": "o",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"type": "Patient", "identifier": {"system": "urn:mrn", "value": "42"}},
        }
    )
    assert "subject" not in obs.sp
    assert obs.sp["subject:identifier"] == ["42", f"urn:mrn{S}42"]
    assert obs.sp["patient:identifier"] == ["42", f"urn:mrn{S}42"]


def test_reference_to_canonical_uri_and_embedded_resource() -> None:
    plan = index(
        {
            "resourceType": "CarePlan",
            "id": "cp",
            "status": "active",
            "intent": "plan",
            "subject": {"reference": "Patient/p1"},
            "instantiatesCanonical": ["http://example.org/PlanDefinition/pd|1.0"],
        }
    )
    assert plan.sp["instantiates-canonical"] == [
        "http://example.org/PlanDefinition/pd",
        "http://example.org/PlanDefinition/pd|1.0",
    ]
    cmap = index(
        {"resourceType": "ConceptMap", "id": "m", "status": "draft", "sourceUri": "http://x.org/vs"}
    )
    assert cmap.sp["source-uri"] == ["http://x.org/vs"]
    assert "source" not in cmap.sp
    bundle = index(
        {
            "resourceType": "Bundle",
            "id": "b",
            "type": "document",
            "entry": [
                {"resource": {"resourceType": "Composition", "id": "c1"}},
                {"resource": {"resourceType": "Patient", "id": "p1"}},
            ],
        }
    )
    assert bundle.sp["composition"] == ["Composition/c1"]


# --- uri ----------------------------------------------------------------------------------


def test_uri_and_profile(patient: Index) -> None:
    assert patient.sp["_profile"] == [
        "http://example.org/StructureDefinition/p",
        "http://example.org/StructureDefinition/p|2.0",
    ]
    assert patient.sp["_source"] == ["http://example.org/source#abc"]
    vs = index({"resourceType": "ValueSet", "id": "v", "status": "draft", "url": "http://x.org/vs"})
    assert vs.sp["url"] == ["http://x.org/vs"]
    assert vs.so["url"] == {"a": "http://x.org/vs", "d": "http://x.org/vs"}


def test_id_is_not_stored(patient: Index) -> None:
    assert "_id" not in patient.sp


# --- composite ----------------------------------------------------------------------------


def test_composite_code_value_quantity(observation: Index) -> None:
    codes = [
        "29463-7",
        f"http://loinc.org{S}29463-7",
        "27113001",
        f"http://snomed.info/sct{S}27113001",
    ]
    weight = {
        "lo": d128("72.50"),
        "hi": d128("72.50"),
        "s": "http://unitsofmeasure.org",
        "c": "kg",
        "u": "kg",
    }
    assert observation.sp["code-value-quantity"] == [{"code": codes, "value-quantity": [weight]}]
    assert "code-value-concept" not in observation.sp  # no valueCodeableConcept
    assert "code-value-quantity" not in observation.so


def test_composite_per_component(blood_pressure: Index) -> None:
    def mmhg(v: str) -> dict[str, Any]:
        return {"lo": d128(v), "hi": d128(v), "s": "http://unitsofmeasure.org", "c": "mm[Hg]"}

    assert blood_pressure.sp["component-code-value-quantity"] == [
        {
            "component-code": ["8480-6", f"http://loinc.org{S}8480-6"],
            "component-value-quantity": [mmhg("120")],
        },
        {
            "component-code": ["8462-4", f"http://loinc.org{S}8462-4"],
            "component-value-quantity": [mmhg("80")],
        },
    ]
    # the panel itself has no value: only its components pair a code with a quantity
    assert [e["combo-code"][0] for e in blood_pressure.sp["combo-code-value-quantity"]] == [
        "8480-6",
        "8462-4",
    ]
    assert "code-value-quantity" not in blood_pressure.sp
    assert blood_pressure.sp["component-value-quantity"] == [mmhg("120"), mmhg("80")]


def test_composite_with_resource_relative_component() -> None:
    seq = index(
        {
            "resourceType": "MolecularSequence",
            "id": "m",
            "coordinateSystem": 0,
            "referenceSeq": {"chromosome": {"coding": [{"system": "http://s", "code": "1"}]}},
            "variant": [{"start": 10, "end": 12}],
        }
    )
    assert seq.sp["chromosome-variant-coordinate"] == [
        {
            "chromosome": ["1", f"http://s{S}1"],
            "variant-start": [{"lo": d128("10"), "hi": d128("10")}],
            "variant-end": [{"lo": d128("12"), "hi": d128("12")}],
        }
    ]


# --- compartments and missing values -------------------------------------------------------


def test_compartments(patient: Index, observation: Index, blood_pressure: Index) -> None:
    assert observation.comp == ["Patient/p1", "Patient/p2"]
    assert blood_pressure.comp == []
    assert patient.comp == ["Patient/p1", "Patient/p0"]
    encounter = index(
        {
            "resourceType": "Encounter",
            "id": "e",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": "Patient/p9/_history/1"},
        }
    )
    assert encounter.comp == ["Patient/p9"]
    org = index({"resourceType": "Organization", "id": "o", "name": "x"})
    assert org.comp == []


def test_absent_values_leave_no_keys() -> None:
    bare = index({"resourceType": "Observation", "id": "x", "status": "final", "code": {}})
    assert bare.sp == {"status": ["final", f"{S}final"]}
    assert bare.so == {"status": {"a": "final", "d": "final"}}


def test_text_only_codeable_concept_has_text_but_no_codes() -> None:
    obs = index(
        {"resourceType": "Observation", "id": "x", "status": "final", "code": {"text": "Héllo"}}
    )
    assert "code" not in obs.sp
    assert obs.sp["code:text"] == ["hello"]


# --- custom parameters --------------------------------------------------------------------


def custom(code: str, ptype: str, base: list[str], expression: str, **more: Any) -> dict[str, Any]:
    return {
        "resourceType": "SearchParameter",
        "url": f"http://example.org/SearchParameter/{code}",
        "status": "active",
        "code": code,
        "type": ptype,
        "base": base,
        "expression": expression,
        **more,
    }


def test_with_custom_adds_and_overrides() -> None:
    reg = REG.with_custom(
        [
            custom(
                "nickname",
                "string",
                ["Patient", "Practitioner"],
                "Patient.name.given | Practitioner.name.given",
            ),
            custom("gender", "token", ["Patient"], "Patient.gender | Patient.active"),
            custom("tagged", "token", ["Resource"], "Resource.meta.tag"),
            custom(
                "given-family",
                "composite",
                ["Patient"],
                "Patient.name",
                component=[
                    {
                        "definition": "http://example.org/SearchParameter/nickname",
                        "expression": "given",
                    },
                    {
                        "definition": "http://hl7.org/fhir/SearchParameter/individual-family",
                        "expression": "family",
                    },
                ],
            ),
        ]
    )
    assert REG.get("Patient", "nickname") is None  # the original is unchanged
    assert param("Patient", "nickname", reg).expression == "Patient.name.given"
    assert param("Practitioner", "nickname", reg).expression == "Practitioner.name.given"
    assert param("Observation", "tagged", reg).base == "Resource"
    ix = index(PATIENT, reg)
    assert ix.sp["nickname"] == ["jose", "maria"]
    assert ix.sp["gender"] == ["male", f"{S}male", "true", f"{S}true"]
    assert ix.sp["tagged"] == ["t1", f"http://example.org/tags{S}t1"]
    assert ix.sp["given-family"] == [{"nickname": ["jose", "maria"], "family": ["nunez"]}]
    assert index(PATIENT).sp["gender"] == ["male", f"{S}male"]


def test_compiled_shapes() -> None:
    def branches(expression: str, resource_type: str) -> list[Any]:
        return compile_branches(expression, resource_type, resource_type)

    assert branches("Observation.value.as(Quantity)", "Observation") == [
        ((("get", "valueQuantity"),), "Quantity")
    ]
    assert branches("(Observation.value as string)", "Observation") == [
        ((("get", "valueString"),), "string")
    ]
    assert branches("Bundle.entry[0].resource", "Bundle") == [
        ((("get", "entry"), ("index", 0), ("get", "resource")), "Resource")
    ]
    assert branches("Patient.telecom.where(system='email')", "Patient") == [
        ((("get", "telecom"), ("eq", "system", "email")), "ContactPoint")
    ]
    assert branches("Resource.meta.tag", "Patient") == [
        ((("get", "meta"), ("get", "tag")), "Coding")
    ]
    with pytest.raises(UnknownElement):
        branches("Patient.nope", "Patient")
    with pytest.raises(Unsupported):
        branches("Patient.name.exists()", "Patient")
    with pytest.raises(Unsupported):
        branches("Observation.value.where(value = 'x')", "Observation")


def test_unsupported_shapes_fall_back_to_fhirpathpy() -> None:
    reg = REG.with_custom(
        [
            custom("named", "token", ["Patient"], "Patient.name.exists()"),
            custom("first-given", "string", ["Patient"], "Patient.name.given.first()"),
            custom("ghost", "string", ["Patient"], "Patient.ghost"),
        ]
    )
    assert expression_problems("Patient", param("Patient", "named", reg)) == [
        "'Patient.name.exists()' falls back to fhirpathpy: function exists()"
    ]
    assert expression_problems("Patient", param("Patient", "first-given", reg)) == []
    assert expression_problems("Patient", param("Patient", "ghost", reg)) == [
        "'Patient.ghost' falls back to fhirpathpy: Patient has no element 'ghost'"
    ]
    ix = index(PATIENT, reg)
    assert ix.sp["named"] == ["true", f"{S}true"]
    assert ix.sp["first-given"] == ["jose"]
    assert "ghost" not in ix.sp


@pytest.mark.parametrize(
    "bad",
    [
        {"resourceType": "Patient"},
        custom("x", "fuzzy", ["Patient"], "Patient.name"),
        custom("x", "token", ["NotAType"], "NotAType.x"),
        custom(
            "x",
            "composite",
            ["Patient"],
            "Patient",
            component=[{"definition": "http://nowhere", "expression": "name"}],
        ),
    ],
)
def test_with_custom_rejects_unusable_definitions(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        REG.with_custom([bad])


def test_datetime_system_type_is_read_as_fhir_datetime() -> None:
    """``value.as(DateTime)`` (code-value-date) names the System type, which fhirpathpy
    never matches to a FHIR dateTime; the definition clearly means valueDateTime."""
    obs = {
        "resourceType": "Observation",
        "id": "d",
        "status": "final",
        "code": {"coding": [{"code": "c"}]},
        "valueDateTime": "2020-01-02",
    }
    day = {"lo": utc(2020, 1, 2), "hi": utc(2020, 1, 3)}
    assert index_resource(obs).sp["code-value-date"] == [
        {"code": ["c", f"{S}c"], "value-date": [day]}
    ]
    assert "code-value-date" not in _fhirpathpy_index(obs).sp


def test_time_zone_offsets_are_normalised() -> None:
    obs = index(
        {
            "resourceType": "Observation",
            "id": "t",
            "status": "final",
            "code": {"text": "x"},
            "effectiveInstant": "2020-01-02T00:30:00.5-05:30",
        }
    )
    lo = datetime(2020, 1, 2, 0, 30, 0, 500000, tzinfo=timezone(-timedelta(hours=5, minutes=30)))
    assert obs.sp["date"] == [{"lo": lo, "hi": lo + timedelta(milliseconds=100)}]
