"""The definition-driven pass against the fhir.resources R4B models, over invalid input.

The R4B model pass is opt-in (FHIR_VALIDATE_R4B_MODELS). That is only sound if the
structural pass, driven by the R4 StructureDefinitions, finds everything the models
find for R4: here, valid resources of every type the R4B models can read are generated
from the element model, broken one place at a time in the ways FHIR JSON can be broken
(json.html, datatypes.html), and for each the R4B pass must find nothing that the
structural pass did not already report at the same place (or inside or around it, as
``r4b.Reported.covers`` defines). Errors R4 itself contradicts are dropped by ``r4b.convert``;
those are the R4/R4B differences listed in fhir_server/validation/__init__.py.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from fhir_helpers import app_client, assert_outcome, expressions

from fhir_server.config import Settings
from fhir_server.outcome import Issue
from fhir_server.validation import r4b, validate_resource
from fhir_server.validation.model import (
    COMPLEX,
    PRIMITIVE,
    RESOURCE,
    RESOURCE_TYPE,
    Element,
    TypeInfo,
    model,
)

XHTML = '<div xmlns="http://www.w3.org/1999/xhtml"><p>x</p></div>'
GOOD: dict[str, Any] = {
    "boolean": True,
    "integer": 7,
    "positiveInt": 3,
    "unsignedInt": 0,
    "decimal": Decimal("1.5"),
    "string": "texto",
    "markdown": "*texto*",
    "code": "abc",
    "id": "a-1.b",
    "uri": "http://example.org/a",
    "url": "http://example.org/a",
    "canonical": "http://example.org/StructureDefinition/x",
    "oid": "urn:oid:1.2.3",
    "uuid": "urn:uuid:9d2f3c3e-6b8a-4c1e-9f0a-2b7c5d4e3f21",
    "date": "2020-02-29",
    "dateTime": "2020-02-29T10:15:00-05:00",
    "instant": "2020-02-29T10:15:00.123Z",
    "time": "23:59:59",
    "base64Binary": "aGVsbG8=",
    "xhtml": XHTML,
}
# Values each primitive type must refuse (datatypes.html regexes, json.html types), and
# values every type must refuse (wrong JSON types, empty strings, objects, arrays).
BAD: dict[str, list[Any]] = {
    "boolean": ["true", 1, 0],
    "integer": ["7", Decimal("7.5"), 2**31, -(2**31) - 1, True],
    "positiveInt": [0, -1, "3", 2**31],
    "unsignedInt": [-1, "0", 2**31],
    "decimal": ["1.5", True, float("inf")],
    "string": [5, True, "   "],
    "markdown": [5],
    "code": [" lead", "two  spaces", 5],
    "id": ["a b", "x" * 65, "a/b", 5],
    "uri": ["http://a b", 5],
    "url": ["http://a b"],
    "canonical": ["a b"],
    "oid": ["1.2.3", "urn:oid:01.2"],
    "uuid": ["9d2f3c3e-6b8a-4c1e-9f0a-2b7c5d4e3f21", "urn:uuid:XYZ"],
    "date": ["2021-02-29", "2020-13-01", "2020-04-31", "20", "2020-1-1", "2020-02-29T10:00:00Z"],
    "dateTime": [
        "2021-02-29T10:00:00Z",
        "2020-06-31",
        "2020-02-29T10:00:00",
        "2020-02-29T24:00:00Z",
        "2020-02-29T10:00Z",
        "2020-02-29T10:00:00+15:00",
    ],
    "instant": ["2020-02-29", "2020-02-29T10:00:00", "2019-02-29T10:00:00Z", "2020-02-30T1:00:00Z"],
    "time": ["24:00:00", "10:00", "10:00:00Z", "9:00:00"],
    "base64Binary": ["not base64!", 5],
    "xhtml": ["<p>x</p>", 5],
}
EVERY_TYPE_BAD: list[Any] = ["", {}, [], {"value": 1}]
MAX_DEPTH = 3


def generate(info: TypeInfo, rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """A valid instance of ``info``: its required elements, and (above MAX_DEPTH) about a
    third of the optional ones, one type per choice."""
    m = model()
    out: dict[str, Any] = {}
    required = {label: keys for label, keys in info.required}
    chosen: set[str] = set()
    for key, el in info.elements.items():
        if el.kind in (RESOURCE, RESOURCE_TYPE) or key in ("id", "extension", "modifierExtension"):
            continue
        label = el.group or key
        if label in chosen:
            continue
        must = label in required
        if not must and (depth >= MAX_DEPTH or rng.random() > 0.35):
            continue
        if el.group:  # pick one type of the choice, at random
            key = rng.choice(info.choice_groups[el.group])
            el = info.elements[key]
        chosen.add(label)
        value = instance(el, rng, depth)
        if value is None:
            if must:
                raise LookupError(f"cannot generate required {info.name}.{key}")
            continue
        out[key] = [value] if el.many else value
    if info.name in m.resources:
        out = {"resourceType": info.name, **out}
    return keep_invariants(info.name, out)


def keep_invariants(name: str, value: dict[str, Any]) -> dict[str, Any]:
    """The invariants checked beyond the element model, kept by a generated value: att-1
    and the data's size and hash (attachments.py), bdl-1 .. bdl-5 (bundle_rules.py) by a
    searchset whose entries are found resources."""
    if name == "Attachment" and "data" in value:
        data = base64.b64decode(value["data"])
        value["contentType"] = "text/plain"
        if "size" in value:
            value["size"] = len(data)
        if "hash" in value:
            value["hash"] = base64.b64encode(hashlib.sha1(data).digest()).decode()
    elif name == "Bundle":
        value["type"] = "searchset"
        for entry in value.get("entry", []):
            entry.pop("request", None)
            entry.pop("response", None)
            entry.setdefault("search", {"mode": "match"})
            entry["resource"] = {"resourceType": "Patient", "active": True}  # bdl-5
    return value


def instance(el: Element, rng: random.Random, depth: int) -> Any:
    if el.kind == PRIMITIVE:
        if el.codes:
            return sorted(el.codes)[0]
        return GOOD[el.type_name]
    if el.kind == COMPLEX:
        assert el.info is not None
        if el.type_name == "Extension":
            return {"url": "http://example.org/ext", "valueString": "x"}
        value = generate(el.info, rng, depth + 1)
        return value or {"extension": [{"url": "http://example.org/ext", "valueBoolean": True}]}
    return None


def places(value: Any, info: TypeInfo, path: list[Any]) -> Iterator[tuple[list[Any], Element]]:
    """Every element present in a generated resource, with its definition."""
    for key, item in value.items():
        el = info.elements.get(key)
        if el is None or el.kind not in (PRIMITIVE, COMPLEX):
            continue
        yield [*path, key], el
        if el.kind == COMPLEX:
            assert el.info is not None
            items = item if el.many else [item]
            for i, sub in enumerate(items):
                where = [*path, key, i] if el.many else [*path, key]
                yield from places(sub, el.info, where)


def mutations(resource: dict[str, Any], info: TypeInfo, rng: random.Random) -> Iterator[Any]:
    """One broken copy of ``resource`` per way of breaking each place (sampled)."""
    for path, el in places(resource, info, []):
        bad = list(BAD.get(el.type_name, [])) if el.kind == PRIMITIVE else ["x", 5, True]
        bad += EVERY_TYPE_BAD
        if el.codes:
            bad.append("not-a-code-here")
        for value in rng.sample(bad, min(4, len(bad))):
            yield replaced(resource, path, el, value)
        yield replaced(resource, path, el, None, shape="flip")
    yield {**resource, "notAnElement": "x"}
    for _label, keys in info.required:
        yield {k: v for k, v in resource.items() if k not in keys}


def replaced(
    resource: dict[str, Any], path: list[Any], el: Element, value: Any, shape: str = ""
) -> dict[str, Any]:
    copied = copy.deepcopy(resource)
    parent: Any = copied
    for seg in path[:-1]:
        parent = parent[seg]
    key = path[-1]
    current = parent[key]
    if shape == "flip":  # an array where the element does not repeat, or the reverse
        parent[key] = current[0] if el.many else [current]
    elif el.many:
        parent[key] = [value]
    else:
        parent[key] = value
    return copied


def r4b_only(resource: dict[str, Any], info: TypeInfo, found: list[Issue]) -> list[Issue]:
    """What the R4B pass reports that the structural pass (``found``) did not."""
    errors = [i for i in found if i.severity in ("error", "fatal")]
    return r4b.r4b_issues(resource, info, info.name, errors)


def usable_types() -> list[str]:
    m = model()
    return sorted(t for t in m.resources if t not in m.r4b_unusable)


@pytest.mark.parametrize("seed", range(2))
def test_generated_resources_are_valid_for_both_passes(seed: int) -> None:
    m = model()
    for name in usable_types():
        rng = random.Random(f"{name}-{seed}")
        resource = generate(m.types[name], rng)
        # random values meet the structure, not the FHIRPath invariants (obs-6, qty-3,
        # ...), which neither pass compared here is about (test_validation_invariants.py)
        assert validate_resource(resource, invariants=False) == [], name
        assert validate_resource(resource, r4b_models=True, invariants=False) == [], name


@pytest.mark.parametrize("seed", range(2))
def test_the_r4b_models_catch_nothing_the_definitions_miss(seed: int) -> None:
    m = model()
    misses: list[str] = []
    broken = 0
    for name in usable_types():
        rng = random.Random(f"{name}-{seed}")
        info = m.types[name]
        for bad in mutations(generate(info, rng), info, rng):
            structural = validate_resource(bad)
            broken += bool(structural)
            extra = r4b_only(bad, info, structural)
            misses += [f"{name}: {i.expression} {i.diagnostics}" for i in extra]
    assert broken > 5000  # the generator really broke things
    assert misses == []


@pytest.mark.parametrize(
    ("elements", "expression"),
    [
        ({"birthDate": "2021-02-29"}, "Patient.birthDate"),
        ({"birthDate": "2023-04-31"}, "Patient.birthDate"),
        ({"deceasedDateTime": "1900-02-29T10:00:00Z"}, "Patient.deceased.ofType(dateTime)"),
        ({"meta": {"lastUpdated": "2021-02-29T00:00:00Z"}}, "Patient.meta.lastUpdated"),
    ],
)
def test_calendar_validity_without_the_r4b_models(
    elements: dict[str, Any], expression: str
) -> None:
    """datatypes.html#date: dates "SHALL be valid dates"; the R4 regexes allow day 31 of
    every month and 29 February of every year, so the calendar is checked on its own."""
    issues = validate_resource({"resourceType": "Patient", **elements})
    assert [(i.code, i.expression) for i in issues] == [("value", (expression,))]


@pytest.mark.parametrize("value", ["2020-02-29", "2000-02-29", "2024-12-31", "1970", "1970-02"])
def test_real_days_pass(value: str) -> None:
    assert validate_resource({"resourceType": "Patient", "birthDate": value}) == []


def test_both_settings_answer_the_same_over_http(settings: Settings) -> None:
    """FHIR_VALIDATE_R4B_MODELS on or off, a create and $validate of broken resources
    give the same 400 and the same error locations (http.html#create)."""
    m = model()
    rng = random.Random("http")
    samples: list[dict[str, Any]] = []
    for name in ("Patient", "Observation", "Encounter", "MedicationRequest", "Appointment"):
        info = m.types[name]
        broken = list(mutations(generate(info, rng), info, rng))
        samples += rng.sample(broken, 8)
    answers: list[list[tuple[int, list[str], list[str]]]] = []
    for flag in (False, True):
        with app_client(settings, validate_r4b_models=flag) as client:
            answers.append([answer(client, resource) for resource in samples])
    assert answers[0] == answers[1]
    assert all(status == 400 for status, _, _ in answers[0])


def answer(client: TestClient, resource: dict[str, Any]) -> tuple[int, list[str], list[str]]:
    body = orjson.dumps(resource, default=str)
    headers = {"Content-Type": "application/fhir+json"}
    created = client.post(f"/fhir/{resource['resourceType']}", content=body, headers=headers)
    checked = client.post(
        f"/fhir/{resource['resourceType']}/$validate", content=body, headers=headers
    )
    assert checked.status_code in (200, 400), checked.text
    errors = [i for i in checked.json()["issue"] if i["severity"] == "error"]
    return (
        created.status_code,
        expressions(assert_outcome(created, 400)),
        [e for i in errors for e in i.get("expression", [])],
    )
