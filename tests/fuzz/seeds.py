"""Seed inputs of the atheris targets: small valid examples the fuzzer mutates."""

from __future__ import annotations

import json

_RESOURCES = [
    {"resourceType": "Patient", "id": "p1", "active": True, "gender": "female",
     "birthDate": "1970-01-01", "name": [{"family": "Fuzz", "given": ["Ana"]}],
     "_birthDate": {"extension": [{"url": "http://x/e", "valueDateTime": "1970-01-01T08:00:00Z"}]},
     "multipleBirthInteger": 2, "deceasedBoolean": False,
     "telecom": [{"system": "phone", "value": "+1 555"}],
     "extension": [{"url": "http://x/a", "valueDecimal": 1.50},
                   {"url": "http://x/b", "valueCodeableConcept": {"text": "t"}}]},
    {"resourceType": "Observation", "status": "final",
     "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
     "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2020-02-29T10:00:00+01:00",
     "valueQuantity": {"value": 72.0, "unit": "/min", "system": "http://unitsofmeasure.org"},
     "component": [{"code": {"text": "c"}, "valueString": "x"}],
     "contained": [{"resourceType": "Practitioner", "id": "pr"}]},
    {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0c6b4c1e-7f7a-4d0e-9d5c-2a1f0e0c9b11",
         "resource": {"resourceType": "Encounter", "status": "finished",
                      "class": {"code": "AMB"}},
         "request": {"method": "POST", "url": "Encounter"}}]},
    {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient"}},
        {"name": "n", "valueInteger": -3}, {"name": "p", "part": [{"name": "q"}]}]},
    {"resourceType": "Questionnaire", "status": "draft", "item": [
        {"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string"}]}]},
    {"resourceType": "Patient", "text": {"status": "generated",
     "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}},
]  # fmt: skip

_QUERIES = [
    "name=smith&birthdate=ge1970-01-01",
    "family:exact=Fuzz&_count=10&_sort=-birthdate,_id",
    "subject:Patient.name=ana&code=http://loinc.org|8867-4",
    "value-quantity=ap5.4|http://unitsofmeasure.org|mg&date=lt2020-02",
    "_has:Observation:patient:code=1234-5&_include=Observation:subject",
    "code-value-quantity=http://loinc.org|8867-4$gt70&_revinclude:iterate=Encounter:patient",
    "_lastUpdated=ge2020-01-01T00:00:00Z&_tag:not=a|b&_elements=id,name&_summary=true",
    "code:text=heart&_total=accurate&identifier:of-type=http://t|MR|123",
    "subject=Patient/p1,Patient/p2&_id=a,b&gender:missing=false&probability=gt0.5",
    "url:below=http://x/&_profile=http://p&patient.general-practitioner.name=x",
]


def json_seeds() -> list[bytes]:
    return [json.dumps(r).encode() for r in _RESOURCES]


def search_seeds() -> list[bytes]:
    """One byte choosing the types (fuzz_search.TARGETS), then the query."""
    return [bytes([i % 8]) + q.encode() for i, q in enumerate(_QUERIES)]


def write(directory: str, seeds: list[bytes]) -> None:
    from pathlib import Path

    for i, seed in enumerate(seeds):
        Path(directory, f"seed-{i}").write_bytes(seed)
