"""The in-memory matcher (fhir_server/search/memory.py) against MongoDB itself.

Subscriptions match each new version with ``memory.matches(filter, doc)`` instead of a
query, so the matcher must agree with MongoDB on every filter the search compiler
produces. Differential: a varied set of resources is written through the API, then for
each of many searches the filter is compiled as the server compiles it
(``SearchService.criteria_filter``) and the ids MongoDB's ``find`` returns are compared
with the ids the matcher accepts, over

- the current documents as MongoDB stores them (read back, naive datetimes), and
- the documents as a write hands them to the rules (``VersionWrite.current_document``:
  the index built from the stored resource, tz-aware datetimes, values not BSON
  round-tripped),

with the filter as compiled and as an active Subscription holds it (BSON-encoded in
its state, decoded on load: compiled regexes become ``bson.Regex``, datetimes naive).
The anchor index of active Subscriptions (active.py) must offer every Subscription a
document matches. The last tests are hand-written cases of MongoDB's matching rules,
each checked against a real collection and the matcher alike.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import bson
import pytest
from bson.decimal128 import Decimal128
from fastapi.testclient import TestClient
from pymongo import AsyncMongoClient, MongoClient

from fhir_server.config import Settings
from fhir_server.jsonio import load_stored
from fhir_server.search import memory
from fhir_server.search.extract import index_resource
from fhir_server.search.registry import Registry
from fhir_server.service.search import SearchService
from fhir_server.storage import Storage
from fhir_server.workflows.subscriptions.active import Active, _ByType

BASE = "http://testserver/fhir"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
MRN = "http://hospital.example/mrn"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
TYPES = ("Patient", "Observation", "Encounter", "Condition", "RiskAssessment")

Json = dict[str, Any]

# --- the resources ------------------------------------------------------------------------

FAMILIES = ["Smith", "Smith-Jones", "Núñez", "O'Connell", "van der Berg", "ÅSTRÖM", "Smithers"]
GIVENS = [["John"], ["José", "María"], ["Jo"], ["Ann", "Marie"], ["Zoë"]]
CITIES = ["Boston", "Bostonia", "Cambridge", "São Paulo", "New York"]
BIRTHS = ["1980", "1980-02", "1980-02-29", "1975-06-15", "1990-12-31", "2001-01-01", "1969-07"]
LAB = [
    ("2339-0", "Glucose", "mg/dL"),
    ("8302-2", "Body Height", "cm"),
    ("29463-7", "Body Weight", "kg"),
    ("2093-3", "Total Cholesterol", "mg/dL"),
]
VALUES = ["100", "100.0", "1e2", "99.5", "100.5", "5.4", "-3", "0.0001", "250", "50"]
EFFECTIVE: list[Json] = [
    {"effectiveDateTime": "2020"},
    {"effectiveDateTime": "2020-03"},
    {"effectiveDateTime": "2020-03-04"},
    {"effectiveDateTime": "2020-03-04T10:00:00Z"},
    {"effectiveDateTime": "2020-03-04T10:00:00+05:00"},
    {"effectiveDateTime": "2020-03-03T23:59:59Z"},
    {"effectiveDateTime": "2020-03-05T00:00:00Z"},
    {"effectiveDateTime": "2019-12-31T23:30:00-01:00"},
    {"effectiveDateTime": "2024-01-01"},
    {"effectivePeriod": {"start": "2020-03-04T12:00:00Z"}},
    {"effectivePeriod": {"end": "2020-03-03"}},
    {"effectivePeriod": {"start": "2020-03-03T12:00:00Z", "end": "2020-03-04T12:00:00Z"}},
    {"effectiveInstant": "2020-03-04T10:00:00.123Z"},
    {},
]


def _coding(system: str, code: str, display: str | None = None) -> Json:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def patients() -> Iterator[Json]:
    for i in range(24):
        p: Json = {"resourceType": "Patient", "id": f"p{i}"}
        if i % 7 != 6:
            name: Json = {"family": FAMILIES[i % len(FAMILIES)], "given": GIVENS[i % len(GIVENS)]}
            p["name"] = [name] if i % 3 else [name, {"family": "Maiden", "use": "maiden"}]
        if i % 5 != 4:
            p["gender"] = ["male", "female", "other", "unknown"][i % 4]
        if i % 6 != 5:
            p["birthDate"] = BIRTHS[i % len(BIRTHS)]
        if i % 4 != 3:
            p["active"] = i % 2 == 0
        identifiers: list[Json] = [{"system": MRN, "value": f"MRN{i:03d}"}]
        if i % 3 == 0:
            identifiers[0]["type"] = {
                "coding": [_coding(V2_0203, "MR", "Medical record number")],
                "text": "Medical record",
            }
        if i % 5 == 0:
            identifiers.append({"value": f"LOCAL{i}"})
        p["identifier"] = identifiers
        if i % 4 != 2:
            p["address"] = [
                {
                    "line": [f"{i} Main Street"],
                    "city": CITIES[i % len(CITIES)],
                    "postalCode": f"02{i:03d}",
                    "country": "US" if i % 2 else "BR",
                }
            ]
        telecom: list[Json] = []
        if i % 2 == 0:
            telecom.append({"system": "phone", "value": f"555-01{i:02d}"})
        if i % 3 == 1:
            telecom.append({"system": "email", "value": f"user{i}@example.org"})
        if telecom:
            p["telecom"] = telecom
        if i % 8 == 1:
            p["deceasedDateTime"] = f"2021-0{1 + i % 9}-1{i % 10}T08:00:00Z"
        if i % 3 == 2:
            p["generalPractitioner"] = [{"reference": f"Practitioner/dr{i % 2}"}]
        if i % 4 == 1:
            p["managingOrganization"] = {
                "identifier": {"system": "http://npi.example", "value": f"ORG{i % 3}"}
            }
        meta: Json = {}
        if i % 3 == 0:
            meta["profile"] = ["http://example.org/StructureDefinition/vip-patient"]
        if i % 5 == 1:
            meta["tag"] = [_coding("http://example.org/tags", "vip")]
        if i % 4 == 0:
            meta["source"] = f"http://example.org/source/{i % 2}"
        if meta:
            p["meta"] = meta
        yield p


def observations(rng: random.Random) -> Iterator[Json]:
    for i in range(56):
        code, display, unit = LAB[i % len(LAB)]
        o: Json = {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": ["final", "amended", "preliminary", "cancelled", "final"][i % 5],
            "code": {"coding": [_coding(LOINC, code, display)], "text": display},
        }
        if i % 6 == 0:
            o["code"]["coding"].append(_coding("http://local.example/codes", f"L{i % 4}"))
        category = ["laboratory", "vital-signs", "survey"][i % 3]
        o["category"] = [{"coding": [_coding(OBS_CATEGORY, category)]}]
        subject_kind = i % 9
        if subject_kind < 5:
            o["subject"] = {"reference": f"Patient/p{rng.randrange(24)}"}
        elif subject_kind == 5:
            o["subject"] = {"reference": f"{BASE}/Patient/p{i % 4}"}
        elif subject_kind == 6:
            o["subject"] = {"reference": "http://other.example/fhir/Patient/9"}
        elif subject_kind == 7:
            o["subject"] = {"identifier": {"system": MRN, "value": f"MRN{i % 4:03d}"}}
        o.update(EFFECTIVE[i % len(EFFECTIVE)])
        value_kind = i % 8
        if value_kind < 5:
            quantity: Json = {"value": Decimal(rng.choice(VALUES))}
            if value_kind in (0, 1, 2):
                quantity.update(unit=unit, system=UCUM, code=unit)
            elif value_kind == 3:
                quantity["unit"] = unit
            o["valueQuantity"] = quantity
        elif value_kind == 5:
            o["valueCodeableConcept"] = {
                "coding": [_coding(SNOMED, ["260385009", "10828004"][i % 2])],
                "text": ["Negative", "Positive"][i % 2],
            }
        elif value_kind == 6:
            o["valueString"] = ["Slightly elevated", "normal range", "Élevé"][i % 3]
        if i % 4 == 2:
            o["code"] = {
                "coding": [_coding(LOINC, "85354-9", "Blood pressure panel")],
                "text": "Blood pressure",
            }
            o.pop("valueQuantity", None)
            o["component"] = [
                {
                    "code": {"coding": [_coding(LOINC, "8480-6", "Systolic")]},
                    "valueQuantity": _mmhg(100 + 7 * (i % 7)),
                },
                {
                    "code": {"coding": [_coding(LOINC, "8462-4", "Diastolic")]},
                    "valueQuantity": _mmhg(60 + 5 * (i % 9)),
                },
            ]
        if i % 5 == 3:
            o["encounter"] = {"reference": f"Encounter/e{i % 4}"}
        yield o


def _mmhg(value: int) -> Json:
    return {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}


def encounters() -> Iterator[Json]:
    for i in range(10):
        e: Json = {
            "resourceType": "Encounter",
            "id": f"e{i}",
            "status": ["finished", "in-progress", "cancelled"][i % 3],
            "class": _coding(ACT_CODE, ["AMB", "EMER", "IMP"][i % 3]),
            "subject": {"reference": f"Patient/p{i}"},
            "period": {"start": f"2021-0{1 + i % 6}-10T08:00:00Z"},
        }
        if i % 2 == 0:
            e["period"]["end"] = f"2021-0{1 + i % 6}-10T09:{i:02d}:00Z"
            e["length"] = {"value": 30 + 15 * i, "unit": "min", "system": UCUM, "code": "min"}
        if i % 3 == 1:
            e["serviceProvider"] = {"reference": "Organization/org1"}
        yield e


def conditions() -> Iterator[Json]:
    codes = ["44054006", "38341003", "195662009"]
    for i in range(10):
        c: Json = {
            "resourceType": "Condition",
            "id": f"c{i}",
            "code": {"coding": [_coding(SNOMED, codes[i % 3])]},
            "subject": {"reference": f"Patient/p{i * 2}"},
        }
        if i % 4 != 3:
            status = ["active", "resolved", "inactive"][i % 3]
            c["clinicalStatus"] = {"coding": [_coding(CLINICAL, status)]}
        onset = i % 4
        if onset == 0:
            c["onsetDateTime"] = f"20{10 + i}-05-01"
        elif onset == 1:
            c["onsetAge"] = {"value": 40 + i, "unit": "a", "system": UCUM, "code": "a"}
        elif onset == 2:
            c["onsetPeriod"] = {"start": f"20{10 + i}-01-01"}
        if i % 3 == 0 and "clinicalStatus" in c and status == "resolved":
            c["abatementAge"] = {"value": 50 + i, "unit": "a", "system": UCUM, "code": "a"}
        if i % 2 == 1:
            c["recordedDate"] = f"20{12 + i}-06-0{1 + i % 8}"
        yield c


def risk_assessments() -> Iterator[Json]:
    probabilities: list[Json] = [
        {"probabilityDecimal": Decimal("0.5")},
        {"probabilityDecimal": Decimal("0.50")},
        {"probabilityDecimal": Decimal("0.1")},
        {"probabilityDecimal": Decimal("0.9")},
        {"probabilityRange": {"low": {"value": Decimal("0.2")}, "high": {"value": Decimal("0.6")}}},
        {"probabilityRange": {"low": {"value": Decimal("0.45")}}},
        {"probabilityDecimal": Decimal("0.0001")},
        {},
    ]
    for i, probability in enumerate(probabilities):
        r: Json = {
            "resourceType": "RiskAssessment",
            "id": f"r{i}",
            "status": "final",
            "subject": {"reference": f"Patient/p{i}"},
        }
        if probability:
            r["prediction"] = [{"outcome": {"text": "stroke"}, **probability}]
        yield r


def corpus() -> list[Json]:
    rng = random.Random(15)
    return [
        *patients(),
        *observations(rng),
        *encounters(),
        *conditions(),
        *risk_assessments(),
    ]


# --- the searches -------------------------------------------------------------------------

QUERIES: list[str] = [
    # token
    "Patient?gender=male",
    "Patient?gender=male,female",
    "Patient?gender:not=male",
    "Patient?gender:not=male,female",
    "Patient?gender:missing=true",
    "Patient?active=true",
    "Patient?active:not=true",
    f"Patient?identifier={MRN}|MRN003",
    "Patient?identifier=MRN003,MRN004",
    f"Patient?identifier={MRN}|",
    "Patient?identifier=|LOCAL5",
    f"Patient?identifier:of-type={V2_0203}|MR|MRN006",
    f"Patient?identifier:not={MRN}|MRN000",
    "Patient?identifier:not=http://nowhere.example|",
    "Patient?identifier:text=medical rec",
    "Patient?phone=555-0102",
    "Patient?telecom=user4@example.org,555-0110",
    "Patient?email:missing=false",
    "Patient?_tag=http://example.org/tags|vip",
    f"Observation?code={LOINC}|2339-0",
    "Observation?code=2339-0,8302-2",
    "Observation?code=http://local.example/codes|",
    "Observation?code:text=body",
    f"Observation?code:not={LOINC}|2339-0",
    "Observation?category=vital-signs",
    f"Observation?category={OBS_CATEGORY}|laboratory&status=final",
    "Observation?status=final,amended",
    "Observation?status:not=final&status:not=cancelled",
    f"Observation?value-concept={SNOMED}|10828004",
    "Observation?value-concept:text=neg",
    "Observation?combo-code=8480-6",
    "Observation?component-code=8462-4&status=final",
    f"Encounter?class={ACT_CODE}|EMER",
    "Encounter?class:not=AMB",
    "Condition?clinical-status=active,resolved",
    f"Condition?code={SNOMED}|44054006",
    "Condition?clinical-status:missing=true",
    # string
    "Patient?family=smith",
    "Patient?family=SMI",
    "Patient?family:exact=Smith",
    "Patient?family:contains=mit",
    "Patient?name=nunez",
    "Patient?name=jos",
    "Patient?given=josé",
    "Patient?family:exact=Núñez",
    "Patient?family=smith,nunez",
    "Patient?family=smith&given=john",
    "Patient?family:contains=o'c",
    "Patient?family=van der",
    "Patient?family=astrom",
    "Patient?address-city=boston",
    "Patient?address-city:exact=Boston",
    "Patient?address=main street",
    "Patient?address:contains=paulo",
    "Patient?address-postalcode=0201",
    "Patient?name:missing=true",
    "Observation?value-string=slightly",
    "Observation?value-string:contains=eve",
    # date
    "Patient?birthdate=1980",
    "Patient?birthdate=1980-02",
    "Patient?birthdate=1980-02-29",
    "Patient?birthdate=ne1980",
    "Patient?birthdate=gt1980-02",
    "Patient?birthdate=lt1980-02-29",
    "Patient?birthdate=ge1990",
    "Patient?birthdate=le1975-06",
    "Patient?birthdate=sa1980",
    "Patient?birthdate=eb1980-02-29",
    "Patient?birthdate=ap1980-06-01",
    "Patient?birthdate:missing=true",
    "Patient?death-date=2021",
    "Observation?date=2020-03-04",
    "Observation?date=2020-03-04T10:00:00Z",
    "Observation?date=2020-03-04T10:00:00.123Z",
    "Observation?date=ne2020",
    "Observation?date=gt2020-03-04T12:00:00%2B02:00",
    "Observation?date=lt2020-03",
    "Observation?date=ge2020-03-04",
    "Observation?date=le2020-03-04",
    "Observation?date=sa2020-03-04",
    "Observation?date=eb2020-03-04",
    "Observation?date=ap2020-03-04",
    "Observation?date=ge2020-01-01&date=lt2021-01-01",
    "Observation?date=2019,2024",
    "Observation?date:missing=true",
    "Encounter?date=2021-03",
    "Encounter?date=ge2021-04-10T08:30:00Z",
    "Condition?onset-date=ge2012",
    "Condition?recorded-date=lt2016",
    "Observation?_lastUpdated=gt2000-01-01",
    "Observation?_lastUpdated=lt2000-01-01",
    # number
    "RiskAssessment?probability=0.5",
    "RiskAssessment?probability=0.50",
    "RiskAssessment?probability=5e-1",
    "RiskAssessment?probability=gt0.4",
    "RiskAssessment?probability=lt0.2",
    "RiskAssessment?probability=ge0.5",
    "RiskAssessment?probability=le0.5",
    "RiskAssessment?probability=ne0.5",
    "RiskAssessment?probability=sa0.3",
    "RiskAssessment?probability=eb0.3",
    "RiskAssessment?probability=ap0.5",
    "RiskAssessment?probability=0.1,0.9",
    "RiskAssessment?probability:missing=true",
    # quantity
    "Observation?value-quantity=100",
    "Observation?value-quantity=100||mg/dL",
    f"Observation?value-quantity=100|{UCUM}|mg/dL",
    "Observation?value-quantity=100.0",
    "Observation?value-quantity=1e2",
    "Observation?value-quantity=gt99.5",
    "Observation?value-quantity=lt100",
    f"Observation?value-quantity=ge100|{UCUM}|mg/dL",
    "Observation?value-quantity=le5.4",
    "Observation?value-quantity=ne100",
    "Observation?value-quantity=ne100||mg/dL",
    "Observation?value-quantity=ap100",
    "Observation?value-quantity=sa50",
    "Observation?value-quantity=eb50",
    "Observation?value-quantity=-3",
    "Observation?value-quantity=gt0.00001",
    "Observation?value-quantity=100||kg,250||mg/dL",
    "Observation?value-quantity=gt50&value-quantity=lt250",
    "Observation?component-value-quantity=gt120",
    "Observation?combo-value-quantity=lt70||mm[Hg]",
    "Encounter?length=gt60",
    f"Encounter?length=90|{UCUM}|min",
    "Condition?onset-age=ge45",
    "Condition?abatement-age:missing=false",
    # reference
    "Observation?subject=Patient/p1",
    "Observation?subject=p1",
    "Observation?patient=p2",
    f"Observation?subject={BASE}/Patient/p1",
    "Observation?subject=http://other.example/fhir/Patient/9",
    "Observation?subject:Patient=p3",
    f"Observation?subject:identifier={MRN}|MRN001",
    "Observation?subject:missing=true",
    "Observation?subject=Patient/p1,Patient/p2,Patient/p3",
    "Observation?encounter=Encounter/e1",
    "Patient?general-practitioner=Practitioner/dr1",
    "Patient?organization:identifier=http://npi.example|ORG1",
    "Encounter?service-provider=Organization/org1",
    "Condition?subject=Patient/p4&clinical-status=active",
    # _id
    "Patient?_id=p1",
    "Patient?_id=p1,p2,p9",
    "Observation?_id=o3&code=2339-0",
    # uri
    "Patient?_profile=http://example.org/StructureDefinition/vip-patient",
    "Patient?_profile:below=http://example.org/",
    "Patient?_profile:above=http://example.org/StructureDefinition/vip-patient/v2",
    "Patient?_source=http://example.org/source/0",
    "Patient?_source:below=http://example.org/source",
    # composite
    f"Observation?code-value-quantity={LOINC}|2339-0$gt99",
    "Observation?code-value-quantity=2339-0$100||mg/dL",
    "Observation?code-value-quantity=2339-0$100,8302-2$lt60",
    "Observation?component-code-value-quantity=8480-6$gt120",
    "Observation?combo-code-value-quantity=8462-4$lt70",
    f"Observation?code-value-concept={LOINC}|29463-7${SNOMED}|260385009",
    # chains and _has: resolved to ids, then matched like any filter
    "Observation?subject:Patient.family=smith",
    "Patient?_has:Observation:subject:code=2339-0",
]


# --- the comparison -----------------------------------------------------------------------

FHIR_JSON = "application/fhir+json"
HEADERS = {"Content-Type": FHIR_JSON}


def fhir_json(value: Any) -> str:
    """JSON text with each Decimal as the number it is (``1E+2``, ``100.0``, ``0.50``)."""
    text = json.dumps(value, default=lambda d: f"@@{d}@@")
    return re.sub(r'"@@([^@"]+)@@"', r"\1", text)


def load(client: TestClient, resources: list[Json]) -> None:
    """All of ``resources`` in one transaction."""
    entries = [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    r = client.post("/fhir", content=fhir_json(bundle), headers=HEADERS)
    assert r.status_code == 200, r.text[:2000]


def mongo(url: str | None) -> MongoClient[Json]:
    return MongoClient(url)


@dataclass
class Stored:
    """The current documents of one type: as MongoDB holds them, and as a write hands
    them to the pipeline's rules."""

    read: list[Json]
    written: list[Json]


def written_document(doc: Json, registry: Registry) -> Json:
    """``VersionWrite.current_document()`` of the version ``doc`` stores (the index
    built from the stored resource, as ResourceService.render builds it)."""
    raw = doc.get("raw")
    index = index_resource(load_stored(raw), registry, BASE) if raw is not None else None
    return {
        "_id": doc["_id"],
        "v": doc["v"],
        "lu": doc["lu"],
        "del": raw is None,
        "raw": raw,
        "sp": index.sp if index else {},
        "so": index.so if index else {},
        "comp": index.comp if index else [],
    }


def read_stored(
    settings: Settings, registry: Registry, types: tuple[str, ...]
) -> dict[str, Stored]:
    with mongo(settings.mongo_url) as mc:
        db = mc[settings.database]
        out = {}
        for t in types:
            read = list(db[t].find({}))
            out[t] = Stored(read, [written_document(d, registry) for d in read])
        return out


async def compile_all(settings: Settings, registry: Registry, queries: list[str]) -> list[Json]:
    """Each query's filter, compiled as the server compiles search criteria (chains and
    ``_has`` resolved by their queries), on an event loop of its own."""
    client: AsyncMongoClient[Json] = AsyncMongoClient(settings.mongo_url, tz_aware=True)
    try:
        search = SearchService(Storage(client, settings.database), registry)
        out = []
        for q in queries:
            resource_type, _, params = q.partition("?")
            pairs = parse_qsl(params, keep_blank_values=True)
            out.append(await search.criteria_filter(resource_type, pairs, None, "s", BASE))
        return out
    finally:
        await client.close()


def disagreements(resource_type: str, query: Json, stored: Stored, found: set[str]) -> list[str]:
    """How the matcher departs from MongoDB's ``found`` for this filter: on both forms
    of the documents, with the filter as compiled and as an active Subscription holds
    it; and whether the anchor index offers the Subscription every document it matches."""
    problems = []
    held = bson.decode(bson.encode(query))
    for doc_kind, docs in (("stored", stored.read), ("written", stored.written)):
        for filter_kind, f in (("compiled", query), ("decoded", held)):
            matched = {d["_id"] for d in docs if memory.matches(f, d)}
            if matched != found:
                problems.append(
                    f"{doc_kind} documents, {filter_kind} filter: matcher only "
                    f"{sorted(matched - found)}, MongoDB only {sorted(found - matched)}"
                )
    index = _ByType()
    index.add(Active("s", resource_type, held, True, "", None, "rest-hook", None))
    for d in stored.written:
        if d["_id"] in found and not index.candidates(d):
            problems.append(f"the anchor index does not offer {d['_id']}")
    return problems


@dataclass
class Outcome:
    failures: list[str]
    unsupported: list[str]
    discriminating: int  # queries matching some, not all, live resources of their type


def compare(client: TestClient, settings: Settings, queries: list[str]) -> Outcome:
    registry: Registry = client.app.state.services.search.registry  # type: ignore[attr-defined]
    filters = asyncio.run(compile_all(settings, registry, queries))
    types = tuple(sorted({q.partition("?")[0] for q in queries}))
    stored = read_stored(settings, registry, types)
    outcome = Outcome([], [], 0)
    with mongo(settings.mongo_url) as mc:
        for text, query in zip(queries, filters, strict=True):
            resource_type = text.partition("?")[0]
            try:
                memory.check(query)
            except memory.Unsupported as exc:
                outcome.unsupported.append(f"{text} ({exc})")
                continue
            found = {d["_id"] for d in mc[settings.database][resource_type].find(query)}
            live = {d["_id"] for d in stored[resource_type].read if not d["del"]}
            if found and found != live:
                outcome.discriminating += 1
            for problem in disagreements(resource_type, query, stored[resource_type], found):
                outcome.failures.append(f"{text}\n  filter {query!r}\n  {problem}")
    return outcome


def test_matcher_agrees_with_mongodb(client: TestClient, settings: Settings) -> None:
    resources = corpus()
    load(client, resources)
    # current versions only: an update and two deletions leave history behind
    o5 = next(r for r in resources if r["id"] == "o5")
    changed = fhir_json({**o5, "status": "amended"})
    r = client.put("/fhir/Observation/o5", content=changed, headers=HEADERS)
    assert r.status_code == 200, r.text
    for path in ("Patient/p7", "Observation/o11"):
        assert client.delete(f"/fhir/{path}").status_code in (200, 204)

    outcome = compare(client, settings, QUERIES)
    assert not outcome.failures, "\n".join(outcome.failures)
    # A filter the matcher refuses makes its Subscription query at each write instead;
    # every filter the compiler makes for these searches is evaluated in memory.
    assert not outcome.unsupported, outcome.unsupported
    assert outcome.discriminating >= len(QUERIES) * 3 // 4, outcome.discriminating


SUB_MILLISECOND = [
    "Observation?date=2020-03-04T10:00:00.1230Z",
    "Observation?date=2020-03-04T10:00:00.1234Z",
    "Observation?date=gt2020-03-04T10:00:00.1231Z",
    "Observation?date=lt2020-03-04T10:00:00.1239Z",
]


def test_sub_millisecond_instants(client: TestClient, settings: Settings) -> None:
    load(
        client,
        [
            {
                "resourceType": "Observation",
                "id": f"sub{i}",
                "status": "final",
                "code": {"text": "sub-millisecond"},
                "effectiveInstant": instant,
            }
            for i, instant in enumerate(
                ["2020-03-04T10:00:00.1234Z", "2020-03-04T10:00:00.1237Z", "2020-03-04T10:00:00Z"]
            )
        ],
    )
    outcome = compare(client, settings, SUB_MILLISECOND)
    assert not outcome.unsupported
    assert not outcome.failures, "\n".join(outcome.failures)


# --- MongoDB's rules, case by case ---------------------------------------------------------

T0 = datetime(2020, 3, 4, 10, 0, 0, 123000, tzinfo=UTC)
D = Decimal128

# (name, filter, {id: document}, ids that match): each checked against a real collection
# and against the matcher.
CASES: list[tuple[str, Json, dict[str, Json], set[str]]] = [
    (
        "equality reaches array elements and whole arrays",
        {"a": 1},
        {"scalar": {"a": 1}, "in": {"a": [2, 1]}, "out": {"a": [2, 3]}, "nested": {"a": [[1]]}},
        {"scalar", "in"},
    ),
    (
        "whole-array equality",
        {"a": [1, 2]},
        {"same": {"a": [1, 2]}, "order": {"a": [2, 1]}, "inner": {"a": [[1, 2], 3]}},
        {"same", "inner"},
    ),
    (
        "each comparison of a field may hold on another element",
        {"a": {"$gt": 1, "$lt": 3}},
        {"split": {"a": [0, 5]}, "one": {"a": [2]}, "none": {"a": [0, 1]}, "missing": {}},
        {"split", "one"},
    ),
    (
        "$elemMatch holds both on one element",
        {"a": {"$elemMatch": {"$gt": 1, "$lt": 3}}},
        {"split": {"a": [0, 5]}, "one": {"a": [2]}, "scalar": {"a": 2}},
        {"one"},
    ),
    (
        "$elemMatch on sub-documents, and never on a non-array",
        {"r": {"$elemMatch": {"lo": {"$gte": 1}, "hi": {"$lte": 5}}}},
        {
            "one": {"r": [{"lo": 0, "hi": 9}, {"lo": 2, "hi": 4}]},
            "apart": {"r": [{"lo": 2, "hi": 9}, {"lo": 0, "hi": 4}]},
            "plain": {"r": {"lo": 2, "hi": 4}},
        },
        {"one"},
    ),
    (
        "$elemMatch with $or inside (a date's ge/le)",
        {"r": {"$elemMatch": {"$or": [{"hi": {"$gt": 5}}, {"lo": {"$gte": 3}}]}}},
        {"hi": {"r": [{"lo": 0, "hi": 6}]}, "lo": {"r": [{"lo": 3, "hi": 4}]}, "no": {"r": []}},
        {"hi", "lo"},
    ),
    (
        "null matches missing and null, and null elements",
        {"a": None},
        {"missing": {}, "null": {"a": None}, "element": {"a": [1, None]}, "set": {"a": 1}},
        {"missing", "null", "element"},
    ),
    (
        "$ne and $nin hold for a missing field",
        {"a": {"$ne": 1}, "b": {"$nin": ["x", "y"]}},
        {"missing": {}, "other": {"a": 2, "b": "z"}, "in": {"a": [1, 2]}, "b": {"b": ["x"]}},
        {"missing", "other"},
    ),
    (
        "$exists sees an empty array and a null",
        {"a": {"$exists": True}},
        {"empty": {"a": []}, "null": {"a": None}, "missing": {"b": 1}},
        {"empty", "null"},
    ),
    (
        "$not of $elemMatch holds for a missing field",
        {"r": {"$not": {"$elemMatch": {"lo": 1}}}},
        {"missing": {}, "other": {"r": [{"lo": 2}]}, "has": {"r": [{"lo": 1}]}},
        {"missing", "other"},
    ),
    (
        "$not of a regular expression holds for a missing field and non-strings",
        {"a": {"$not": re.compile("^x")}},
        {"missing": {}, "number": {"a": 1}, "xy": {"a": ["y", "xy"]}, "y": {"a": "y"}},
        {"missing", "number", "y"},
    ),
    (
        "a regular expression matches strings only, elements included",
        {"a": {"$regex": "^a\\x1fb"}},
        {"str": {"a": "a\x1fbc"}, "el": {"a": ["z", "a\x1fb"]}, "num": {"a": 1}},
        {"str", "el"},
    ),
    (
        "numbers compare across int, double and Decimal128",
        {"n": 1},
        {"int": {"n": 1}, "double": {"n": 1.0}, "dec": {"n": D("1.000")}, "str": {"n": "1"}},
        {"int", "double", "dec"},
    ),
    (
        "Decimal128 0.1 is not the double 0.1",
        {"n": D("0.1")},
        {"dec": {"n": D("0.10")}, "double": {"n": 0.1}},
        {"dec"},
    ),
    (
        "Decimal128 infinities order around every number",
        {"n": {"$gt": D("-Infinity"), "$lt": D("Infinity")}},
        {"big": {"n": D("1E+6000")}, "inf": {"n": D("Infinity")}, "int": {"n": -(2**62)}},
        {"big", "int"},
    ),
    (
        "comparisons stay within a type bracket",
        {"a": {"$gte": 0}},
        {"num": {"a": 0}, "str": {"a": "1"}, "date": {"a": T0}, "bool": {"a": True}},
        {"num"},
    ),
    (
        "booleans are not numbers",
        {"a": True},
        {"true": {"a": True}, "one": {"a": 1}},
        {"true"},
    ),
    (
        "dates compare by instant, whatever the time zone",
        {"d": {"$gte": T0, "$lt": datetime(2020, 3, 4, 10, 0, 1)}},
        {"at": {"d": T0}, "before": {"d": datetime(2020, 3, 4, 9, 0, tzinfo=UTC)}},
        {"at"},
    ),
    (
        "$in of several strings over arrays",
        {"a": {"$in": ["x", "y"]}, "del": False},
        {"x": {"a": ["w", "x"], "del": False}, "gone": {"a": "y", "del": True}, "no": {"a": []}},
        {"x"},
    ),
    (
        "null through an array of sub-documents",
        {"a.b": None},
        {
            "lacks": {"a": [{"b": 1}, {"c": 1}]},
            "has": {"a": [{"b": 1}]},
            "empty": {"a": []},
            "nulls": {"a": [None]},
            "scalar": {"a": 1},
        },
        {"lacks", "scalar"},
    ),
    (
        "datetimes are kept to the millisecond",
        {"d": {"$lt": datetime(2020, 3, 4, 10, 0, 0, 123900, tzinfo=UTC)}},
        {
            "same": {"d": datetime(2020, 3, 4, 10, 0, 0, 123400, tzinfo=UTC)},
            "before": {"d": T0 - timedelta(milliseconds=1)},
        },
        {"before"},
    ),
    (
        "$and, $or and $nor",
        {"$and": [{"a": 1}], "$or": [{"b": 1}, {"c": 1}], "$nor": [{"d": 1}]},
        {"ab": {"a": 1, "b": 1}, "ac_d": {"a": 1, "c": 1, "d": 1}, "a": {"a": 1}},
        {"ab"},
    ),
]


@pytest.mark.parametrize(
    ("query", "docs", "expected"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_mongodb_rules(
    mongo_url: str, database: str, query: Json, docs: dict[str, Json], expected: set[str]
) -> None:
    """MongoDB gives ``expected`` for the case, and so does the matcher: on the
    documents as given (tz-aware datetimes, microseconds) and as read back."""
    with mongo(mongo_url) as mc:
        collection = mc[database]["rules"]
        collection.insert_many([{"_id": k, **v} for k, v in docs.items()])
        assert {d["_id"] for d in collection.find(query)} == expected
        read = list(collection.find({}))
    assert {k for k, v in docs.items() if memory.matches(query, {"_id": k, **v})} == expected
    assert {d["_id"] for d in read if memory.matches(query, d)} == expected
