"""The Ecuadorian clinics' profile set (issue #14, profiles/clinics.py, docs/profiles.md):
shipped ``ec-*`` StructureDefinitions, installed at start-up, used by
``$validate?profile=`` and enforced on writes whose ``meta.profile`` names them.

The cédula (módulo 10) and RUC (módulo 11) checks are FHIRPath invariants run by
fhirpathpy; they are compared here with a Python reference implementation over random
valid and invalid numbers, both ways.

profiling.html#constraints (R4): "constraint ... Condition that must evaluate to true";
an error-severity invariant that fails makes the resource non-conformant, a warning
does not.
"""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path
from typing import Any

import pytest
from fhir_helpers import (
    FHIR_JSON,
    assert_outcome,
    expressions,
    post,
    post_bundle,
    without_best_practice,
)
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models

from profiles import clinics

FATHERS = "http://hl7.org/fhir/StructureDefinition/humanname-fathers-family"
MOTHERS = "http://hl7.org/fhir/StructureDefinition/humanname-mothers-family"


# --- reference implementation of the Ecuadorian check digits ---------------------------


def _province_ok(number: str) -> bool:
    return 1 <= int(number[:2]) <= 24 or number[:2] == "30"


def cedula_check(first9: str) -> int:
    """Módulo 10: coefficients 2,1,2,...; a product above 9 counts minus 9."""
    total = 0
    for i, ch in enumerate(first9):
        p = int(ch) * (2 if i % 2 == 0 else 1)
        total += p - 9 if p > 9 else p
    return (10 - total % 10) % 10


def cedula_valid(number: str) -> bool:
    return (
        len(number) == 10
        and number.isascii()
        and number.isdigit()
        and _province_ok(number)
        and int(number[2]) < 6
        and int(number[9]) == cedula_check(number[:9])
    )


def mod11_check(digits: str, coefficients: list[int]) -> int | None:
    """Módulo 11: 11 minus the remainder; 11 is 0 and 10 is no valid check digit."""
    rest = sum(int(d) * c for d, c in zip(digits, coefficients, strict=True)) % 11
    check = 0 if rest == 0 else 11 - rest
    return None if check == 10 else check


PRIVATE = [4, 3, 2, 7, 6, 5, 4, 3, 2]
PUBLIC = [3, 2, 7, 6, 5, 4, 3, 2]


def ruc_valid(number: str) -> bool:
    if not (len(number) == 13 and number.isascii() and number.isdigit()):
        return False
    if not _province_ok(number):
        return False
    third = int(number[2])
    if third < 6:
        return cedula_valid(number[:10]) and number[10:] == "001"
    if third == 6:
        return mod11_check(number[:8], PUBLIC) == int(number[8]) and number[9:] == "0001"
    if third == 9:
        return mod11_check(number[:9], PRIVATE) == int(number[9]) and number[10:] == "001"
    return False


def _province(rng: random.Random) -> str:
    return rng.choice([f"{p:02d}" for p in range(1, 25)] + ["30"])


def make_cedula(rng: random.Random) -> str:
    first9 = (
        _province(rng) + str(rng.randrange(6)) + "".join(str(rng.randrange(10)) for _ in "123456")
    )
    return first9 + str(cedula_check(first9))


def make_ruc(rng: random.Random) -> str:
    kind = rng.choice(["natural", "public", "private"])
    if kind == "natural":
        return make_cedula(rng) + "001"
    while True:
        if kind == "public":
            head = _province(rng) + "6" + "".join(str(rng.randrange(10)) for _ in "12345")
            check = mod11_check(head, PUBLIC)
            tail = "0001"
        else:
            head = _province(rng) + "9" + "".join(str(rng.randrange(10)) for _ in "123456")
            check = mod11_check(head, PRIVATE)
            tail = "001"
        if check is not None:
            return head + str(check) + tail


def mutate(rng: random.Random, number: str) -> str:
    """Change one digit (often the check digit)."""
    i = rng.choice([len(number) - 1, rng.randrange(len(number))])
    if len(number) == 13:
        i = rng.choice([8, 9, i])
    digit = str((int(number[i]) + rng.randrange(1, 10)) % 10)
    return number[:i] + digit + number[i + 1 :]


def test_reference_implementation_on_published_examples():
    # módulo 10 by hand: 1710034065 -> 2+7+2+0+0+3+8+0+3 = 25, (10 - 5) % 10 = 5
    assert cedula_valid("1710034065")
    assert not cedula_valid("1710034066")
    # 1790011674001: private (third digit 9), módulo 11 check digit 4
    assert ruc_valid("1790011674001")
    assert not ruc_valid("1790011675001")
    # 1760001550001: public (third digit 6), check digit 5 at position 9
    assert ruc_valid("1760001550001")
    assert ruc_valid("1710034065001")  # natural person: cédula + 001
    assert not ruc_valid("1710034065000")


# --- the invariants, run by fhirpathpy, against the reference --------------------------


def _definition(ident: str) -> dict[str, Any]:
    return next(sd for sd in clinics.clinic_definitions() if sd["id"] == ident)


def _constraint(ident: str, key: str) -> str:
    for element in _definition(ident)["differential"]["element"]:
        for c in element.get("constraint", []):
            if c["key"] == key:
                return str(c["expression"])
    raise AssertionError(key)


def _invariant(ident: str, key: str, rtype: str) -> Any:
    path = f"{rtype}.identifier.value.select({_constraint(ident, key)})"
    fn = fhirpath_compile(path, models["r4"])

    def holds(number: str) -> bool:
        result = fn({"resourceType": rtype, "identifier": [{"value": number}]})
        assert result in ([True], [False]), (number, result)
        return result == [True]

    return holds


def _samples(make: Any, length: int) -> list[str]:
    rng = random.Random(14)
    valid = [make(rng) for _ in range(200)]
    mutated = [mutate(rng, n) for n in valid]
    noise = ["".join(str(rng.randrange(10)) for _ in range(length)) for _ in range(200)]
    odd = [
        "",
        "abc",
        "17100340655",
        "171003406",
        "17100340a5",
        "\uff11\uff17\uff11\uff10\uff10\uff13\uff14\uff10\uff16\uff15",
    ]  # the last: fullwidth digits
    return valid + mutated + noise + odd


def test_cedula_invariant_agrees_with_the_reference():
    holds = _invariant("ec-patient", "ec-ced-1", "Patient")
    samples = _samples(make_cedula, 10)
    results = {n: (holds(n), cedula_valid(n)) for n in samples}
    disagree = {n: r for n, r in results.items() if r[0] != r[1]}
    assert not disagree
    assert sum(ok for ok, _ in results.values()) >= 200  # the valid ones, and some noise
    assert sum(not ok for ok, _ in results.values()) >= 200
    assert _invariant("ec-practitioner", "ec-ced-1", "Practitioner")("1710034065")


def test_ruc_invariant_agrees_with_the_reference():
    holds = _invariant("ec-organization", "ec-org-1", "Organization")
    samples = _samples(make_ruc, 13)
    results = {n: (holds(n), ruc_valid(n)) for n in samples}
    disagree = {n: r for n, r in results.items() if r[0] != r[1]}
    assert not disagree
    assert sum(ok for ok, _ in results.values()) >= 200
    assert sum(not ok for ok, _ in results.values()) >= 200
    kinds = {n[2] for n, (ok, _) in results.items() if ok}
    assert {"6", "9"} <= kinds and kinds & set("012345")


# --- over HTTP ---------------------------------------------------------------------------


def validate(client, resource: dict[str, Any], url: str):
    return client.post(
        f"/fhir/{resource['resourceType']}/$validate",
        content=json.dumps(resource),
        params={"profile": url},
        headers={"Content-Type": FHIR_JSON},
    )


def issues(client, resource: dict[str, Any], url: str) -> list[dict[str, Any]]:
    r = validate(client, resource, url)
    assert r.status_code == 200, r.text
    found = [
        i
        for i in r.json()["issue"]
        if i["severity"] in ("error", "fatal", "warning") and not _unknown_core_extension(i)
    ]
    return without_best_practice(found)


def _unknown_core_extension(issue: dict[str, Any]) -> bool:
    """The warning that an R4 core extension (the two surnames) has no definition on
    this server: the core extension definitions are not shipped (README, Extensions)."""
    diagnostics = issue.get("diagnostics", "")
    return (
        issue["severity"] == "warning"
        and diagnostics.startswith("The extension http://hl7.org/fhir/StructureDefinition/")
        and "is unknown to this server" in diagnostics
    )


def errors(client, resource: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [i for i in issues(client, resource, url) if i["severity"] in ("error", "fatal")]


def ec_patient(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": clinics.CEDULA, "value": "1710034065"}],
        "name": [
            {
                "family": "García López",
                "_family": {
                    "extension": [
                        {"url": FATHERS, "valueString": "García"},
                        {"url": MOTHERS, "valueString": "López"},
                    ]
                },
                "given": ["María", "José"],
            }
        ],
        **extra,
    }


def ec_organization(ruc: str = "1790011674001") -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "name": "Clínica del Valle S.A.",
        "identifier": [{"system": clinics.RUC, "value": ruc}],
    }


def ec_practitioner(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "name": [{"family": "Andrade Vera", "given": ["Lucía"]}],
        "identifier": [
            {"system": clinics.SENESCYT, "value": "1005-2019-2045678"},
            {"system": clinics.CEDULA, "value": "0926687856"},
        ],
        **extra,
    }


def ec_appointment(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "start": "2026-03-02T09:00:00-05:00",
        "end": "2026-03-02T09:30:00-05:00",
        "slot": [{"reference": "Slot/s1"}],
        "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/d1"}, "status": "accepted"},
        ],
        **extra,
    }


def ec_slot(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Slot",
        "schedule": {"reference": "Schedule/sch1"},
        "status": "free",
        "start": "2026-03-02T09:00:00-05:00",
        "end": "2026-03-02T09:30:00-05:00",
        **extra,
    }


def usd(value: float, currency: str = "USD") -> dict[str, Any]:
    return {"value": value, "currency": currency}


def iva(amount: float, code: str = clinics.IVA, kind: str = "tax") -> dict[str, Any]:
    return {
        "type": kind,
        "code": {"coding": [{"system": clinics.SRI_TAX, "code": code, "display": "IVA"}]},
        "factor": 0.15,
        "amount": usd(amount),
    }


def ec_invoice(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Invoice",
        "status": "issued",
        "lineItem": [
            {
                "sequence": 1,
                "chargeItemCodeableConcept": {"text": "Consulta de medicina general"},
                "priceComponent": [{"type": "base", "amount": usd(40)}, iva(6)],
            }
        ],
        "totalNet": usd(40),
        "totalGross": usd(46),
        **extra,
    }


CONFORMING = [
    (clinics.PATIENT, ec_patient()),
    (clinics.PATIENT, ec_patient(identifier=[{"system": clinics.PASSPORT, "value": "X1234567"}])),
    (clinics.ORGANIZATION, ec_organization()),
    (clinics.ORGANIZATION, ec_organization("1760001550001")),
    (clinics.ORGANIZATION, ec_organization("1710034065001")),
    (clinics.PRACTITIONER, ec_practitioner()),
    (clinics.APPOINTMENT, ec_appointment()),
    (clinics.APPOINTMENT, ec_appointment(status="proposed", start=None, end=None)),
    (clinics.SLOT, ec_slot()),
    (clinics.SLOT, ec_slot(status="busy", overbooked=True)),
    (clinics.INVOICE, ec_invoice()),
]


def _clean(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if v is not None}


@pytest.mark.parametrize(("url", "resource"), CONFORMING)
def test_conforming_resources_have_no_issue(client, url, resource):
    assert issues(client, _clean(resource), url) == []


def _without_patient() -> dict[str, Any]:
    apt = ec_appointment()
    apt["participant"] = apt["participant"][1:]
    return apt


def _wrong_slice_value() -> dict[str, Any]:
    inv = ec_invoice()
    inv["lineItem"][0]["priceComponent"][1]["code"]["coding"][0]["code"] = "3"  # ICE
    return inv


def _iva_not_tax() -> dict[str, Any]:
    inv = ec_invoice()
    inv["lineItem"][0]["priceComponent"][1]["type"] = "surcharge"
    return inv


def _line_in_eur() -> dict[str, Any]:
    inv = ec_invoice()
    inv["lineItem"][0]["priceComponent"][0]["amount"]["currency"] = "EUR"
    return inv


# (case, profile, resource, constraint key or None, the issue's expression, Spanish words)
FAILING = [
    (
        "cedula check digit",
        clinics.PATIENT,
        ec_patient(identifier=[{"system": clinics.CEDULA, "value": "1710034066"}]),
        "ec-ced-1",
        "Patient.identifier[0].value",
        "dígito verificador módulo 10",
    ),
    (
        "cedula province",
        clinics.PATIENT,
        ec_patient(identifier=[{"system": clinics.CEDULA, "value": "2510034065"}]),
        "ec-ced-1",
        "Patient.identifier[0].value",
        "provincia 01-24 o 30",
    ),
    (
        "bad RUC",
        clinics.ORGANIZATION,
        ec_organization("1790011675001"),
        "ec-org-1",
        "Organization.identifier[0].value",
        "módulo 11",
    ),
    (
        "RUC of a public body without 0001",
        clinics.ORGANIZATION,
        ec_organization("1760001550011"),
        "ec-org-1",
        "Organization.identifier[0].value",
        "entidad pública",
    ),
    (
        "practitioner cedula",
        clinics.PRACTITIONER,
        ec_practitioner(
            identifier=[
                {"system": clinics.SENESCYT, "value": "1005-2019-2045678"},
                {"system": clinics.CEDULA, "value": "0926687857"},
            ]
        ),
        "ec-ced-1",
        "Practitioner.identifier[1].value",
        "cédula",
    ),
    (
        "end before start",
        clinics.APPOINTMENT,
        ec_appointment(end="2026-03-02T08:30:00-05:00"),
        "ec-apt-1",
        "Appointment",
        "fin es posterior",
    ),
    (
        "no patient",
        clinics.APPOINTMENT,
        _without_patient(),
        "ec-apt-2",
        "Appointment",
        "paciente",
    ),
    (
        "booked without times",
        clinics.APPOINTMENT,
        _clean(ec_appointment(start=None, end=None)),
        "ec-apt-4",
        "Appointment",
        "hora de inicio y de fin",
    ),
    (
        "slot end before start",
        clinics.SLOT,
        ec_slot(end="2026-03-02T08:00:00-05:00"),
        "ec-slot-1",
        "Slot",
        "franja",
    ),
    (
        "total in EUR",
        clinics.INVOICE,
        ec_invoice(totalGross=usd(46, "EUR")),
        "ec-inv-1",
        "Invoice",
        "dólares",
    ),
    (
        "no currency",
        clinics.INVOICE,
        ec_invoice(totalNet={"value": 40}),
        "ec-inv-1",
        "Invoice",
        "USD",
    ),
    ("a line in EUR", clinics.INVOICE, _line_in_eur(), "ec-inv-1", "Invoice", "USD"),
    ("no IVA", clinics.INVOICE, _wrong_slice_value(), "ec-inv-2", "Invoice", "IVA"),
    ("IVA not a tax", clinics.INVOICE, _iva_not_tax(), "ec-inv-2", "Invoice", "IVA"),
]


@pytest.mark.parametrize(
    ("case", "url", "resource", "key", "expression", "words"),
    FAILING,
    ids=[c[0] for c in FAILING],
)
def test_each_rule_fails_with_its_spanish_text(client, case, url, resource, key, expression, words):
    found = errors(client, resource, url)
    mine = [i for i in found if key in i["diagnostics"]]
    assert mine, found
    assert mine[0]["code"] == "invariant"
    assert mine[0]["expression"] == [expression]
    assert words in mine[0]["diagnostics"]


def test_iva_not_a_tax_also_breaks_ec_inv_3(client):
    keys = " ".join(i["diagnostics"] for i in errors(client, _iva_not_tax(), clinics.INVOICE))
    assert "ec-inv-3" in keys and "El IVA es un componente de tipo impuesto" in keys


def test_missing_senescyt_and_missing_identifiers(client):
    no_senescyt = ec_practitioner(identifier=[{"system": clinics.CEDULA, "value": "0926687856"}])
    found = errors(client, no_senescyt, clinics.PRACTITIONER)
    assert "ec-prac-1" in " ".join(i["diagnostics"] for i in found)
    assert any("senescyt" in i["diagnostics"] and "minimum" in i["diagnostics"] for i in found)
    no_ruc = {"resourceType": "Organization", "name": "Sin RUC"}
    found = errors(client, no_ruc, clinics.ORGANIZATION)
    assert "Organization.identifier" in expressions(found)
    anonymous = _clean(ec_patient(identifier=None))
    found = errors(client, anonymous, clinics.PATIENT)
    assert expressions(found) == ["Patient.identifier"]


def test_warnings_do_not_make_a_resource_fail(client):
    # the family name does not hold the mother's surname the extension gives
    wrong_family = ec_patient()
    wrong_family["name"][0]["family"] = "García Pérez"
    found = issues(client, wrong_family, clinics.PATIENT)
    assert [(i["severity"], i["expression"]) for i in found] == [("warning", ["Patient.name[0]"])]
    assert "ec-pat-2" in found[0]["diagnostics"] and "apellido" in found[0]["diagnostics"]
    # an identifier, but neither a cédula nor a passport
    other = ec_patient(identifier=[{"system": "urn:other", "value": "1"}])
    found = issues(client, other, clinics.PATIENT)
    assert [(i["severity"], "ec-pat-1" in i["diagnostics"]) for i in found] == [("warning", True)]
    cancelled = ec_appointment(status="cancelled")
    found = issues(client, cancelled, clinics.APPOINTMENT)
    assert [(i["severity"], "ec-apt-3" in i["diagnostics"]) for i in found] == [("warning", True)]
    reason = {"text": "El paciente no puede asistir"}
    assert (
        issues(
            client,
            ec_appointment(status="cancelled", cancelationReason=reason),
            clinics.APPOINTMENT,
        )
        == []
    )
    overbooked_free = ec_slot(overbooked=True)
    found = issues(client, overbooked_free, clinics.SLOT)
    assert [(i["severity"], "ec-slot-2" in i["diagnostics"]) for i in found] == [("warning", True)]


def test_the_iva_rate_is_a_warning(client):
    inv = ec_invoice()
    inv["lineItem"][0]["priceComponent"][1]["factor"] = 0.16
    found = issues(client, inv, clinics.INVOICE)
    assert [(i["severity"], "ec-inv-4" in i["diagnostics"]) for i in found] == [("warning", True)]


def test_meta_profile_enforced_on_create(client):
    """A create whose meta.profile names a clinics' profile is refused (422) when the
    resource does not conform, stored (201) when it does."""
    for url, good, bad, where in [
        (
            clinics.PATIENT,
            ec_patient(),
            ec_patient(identifier=[{"system": clinics.CEDULA, "value": "1710034066"}]),
            "Patient.identifier[0].value",
        ),
        (
            clinics.ORGANIZATION,
            ec_organization(),
            ec_organization("1790011675001"),
            "Organization.identifier[0].value",
        ),
        (
            clinics.PRACTITIONER,
            ec_practitioner(),
            ec_practitioner(identifier=[{"system": "urn:other", "value": "1"}]),
            "Practitioner",
        ),
        (clinics.INVOICE, ec_invoice(), ec_invoice(totalNet=usd(40, "EUR")), "Invoice"),
    ]:
        meta = {"profile": [url]}
        r = post(client, {**good, "meta": meta})
        assert r.status_code == 201, r.text
        assert r.json()["meta"]["profile"] == [url]
        found = assert_outcome(post(client, {**bad, "meta": meta}), 422)
        assert where in expressions(found), found


def test_appointment_with_meta_profile(client):
    """Booked through the scheduling pipeline: the profile's end-after-start rule answers
    422 with its Spanish text; a conforming appointment is stored."""
    pat = post(client, ec_patient()).json()
    meta = {"profile": [clinics.APPOINTMENT]}
    good = ec_appointment(
        meta=meta,
        slot=None,
        participant=[{"actor": {"reference": f"Patient/{pat['id']}"}, "status": "accepted"}],
    )
    r = post(client, _clean(good))
    assert r.status_code == 201, r.text
    bad = _clean({**good, "start": "2026-03-03T10:00:00-05:00", "end": "2026-03-03T09:00:00-05:00"})
    found = assert_outcome(post(client, bad), 422)
    text = " ".join(i.get("diagnostics", "") for i in found)
    assert "ec-apt-1" in text and "posterior a la de inicio" in text, found


def test_shipped_and_served(client):
    for sd in clinics.clinic_definitions():
        r = client.get("/fhir/StructureDefinition", params={"url": sd["url"]})
        assert r.status_code == 200
        found = r.json()["entry"]
        assert [e["resource"]["id"] for e in found] == [sd["id"]]
        assert found[0]["resource"]["derivation"] == "constraint"
        # every invariant: Spanish text, English translation and requirements
        for element in sd["differential"]["element"]:
            for c in element.get("constraint", []):
                assert c["human"] and c["requirements"], c
                ext = c["_human"]["extension"][0]
                assert ext["url"] == "http://hl7.org/fhir/StructureDefinition/translation"
                assert c["source"] == sd["url"]
    assert {sd["type"] for sd in clinics.clinic_definitions()} == {
        "Patient",
        "Organization",
        "Practitioner",
        "Appointment",
        "Slot",
        "Invoice",
    }


def test_shipped_definitions_are_valid_structure_definitions(client):
    for sd in clinics.clinic_definitions():
        r = client.post(
            "/fhir/StructureDefinition/$validate",
            content=json.dumps(sd),
            headers={"Content-Type": FHIR_JSON},
        )
        assert r.status_code == 200, r.text
        bad = [i for i in r.json()["issue"] if i["severity"] in ("error", "fatal")]
        assert not bad, (sd["id"], bad)


# --- the IG package ----------------------------------------------------------------------


def test_package_layout(tmp_path: Path):
    """The FHIR NPM package layout: package/package.json, a file per resource named
    [type]-[id].json, package/.index.json listing them."""
    path = clinics.build_package(tmp_path)
    assert path.name == "fhir-server.ec.clinics-1.0.0.tgz"
    with tarfile.open(path, "r:gz") as tar:
        names = sorted(tar.getnames())
        manifest = json.load(tar.extractfile("package/package.json"))  # type: ignore[arg-type]
        index = json.load(tar.extractfile("package/.index.json"))  # type: ignore[arg-type]
        stored = {
            n: json.load(tar.extractfile(n))  # type: ignore[arg-type]
            for n in names
            if n.startswith("package/StructureDefinition-")
        }
    assert all(n.startswith("package/") for n in names)
    assert manifest["name"] == "fhir-server.ec.clinics"
    assert manifest["fhirVersions"] == ["4.0.1"]
    assert manifest["dependencies"] == {"hl7.fhir.r4.core": "4.0.1"}
    ids = sorted(sd["id"] for sd in clinics.clinic_definitions())
    assert sorted(stored) == [f"package/StructureDefinition-{i}.json" for i in ids]
    assert len(ids) == 6
    assert index["index-version"] == 1
    assert sorted(f["filename"] for f in index["files"]) == [
        f"StructureDefinition-{i}.json" for i in ids
    ]
    for entry in index["files"]:
        sd = stored["package/" + entry["filename"]]
        assert (entry["url"], entry["id"], entry["type"]) == (sd["url"], sd["id"], sd["type"])
        assert entry["resourceType"] == "StructureDefinition"


def test_transaction_with_an_invalid_ruc_is_refused(client):
    """A transaction is atomic (http.html#transaction): one entry that breaks its
    claimed profile refuses the whole Bundle with 422, the entry's path in the issue."""
    meta = {"profile": [clinics.ORGANIZATION]}

    def entry(resource: dict[str, Any]) -> dict[str, Any]:
        return {
            "resource": {**resource, "meta": meta},
            "request": {"method": "POST", "url": resource["resourceType"]},
        }

    bad = [entry(ec_organization()), entry(ec_organization("1790011675001"))]
    found = assert_outcome(post_bundle(client, bad), 422)
    assert "Bundle.entry[1].resource.identifier[0].value" in expressions(found), found
    assert "módulo 11" in " ".join(i.get("diagnostics", "") for i in found)
    found = client.get("/fhir/Organization", params={"identifier": f"{clinics.RUC}|"})
    assert found.json().get("entry", []) == []
    good = [entry(ec_organization()), entry(ec_organization("1760001550001"))]
    r = post_bundle(client, good)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["201", "201"]
