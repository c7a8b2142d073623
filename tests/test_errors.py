"""Bad input: never a 500, always an OperationOutcome (http.html#Status-Codes), with an
``expression`` naming the element where one applies, and nothing stored."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import (
    FHIR_JSON,
    app_client,
    assert_outcome,
    create,
    expressions,
    observation,
    patient,
    stored_document_count,
)


def post_raw(client: TestClient, body: bytes | str, rtype: str = "Patient", **headers: str):
    return client.post(
        f"/fhir/{rtype}", content=body, headers={"Content-Type": FHIR_JSON, **headers}
    )


def assert_nothing_stored(client: TestClient, settings) -> None:
    total = client.get("/fhir/_history", params={"_summary": "count"}).json()["total"]
    shipped = sum(  # what the server ships at start-up (fhir_server/service/shipped.py)
        client.get(f"/fhir/{t}/_history", params={"_summary": "count"}).json()["total"]
        for t in ("StructureDefinition", "OperationDefinition")
    )
    assert total == shipped
    assert stored_document_count(settings) == 0


# --- unparseable bodies ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"resourceType": "Patient",',
        b'{"resourceType": "Patient", "active": true,}',
        b"{'resourceType': 'Patient'}",
        b'{"resourceType": "Patient"} trailing',
        b"[]",
        b'[{"resourceType": "Patient"}]',
        b'"Patient"',
        b"42",
        b"null",
        b"true",
        b'{"resourceType": "Patient", "active": true, "active": false}',  # duplicate key
        b'{"resourceType": "Patient", "multipleBirthInteger": NaN}',
        b'{"resourceType": "Patient", "multipleBirthInteger": Infinity}',
        b'{"resourceType": "Patient", "multipleBirthInteger": -Infinity}',
        b'{"resourceType": "Patient", "name": [{"family": "\xff\xfe"}]}',  # not UTF-8
        b'{"resourceType": "Patient", "name": [{"family": "\xc3"}]}',  # truncated UTF-8
        b"\xef\xbb\xbf" + b'{"resourceType": "Patient"}',  # RFC 8259: no BOM
        b"",
        b"   \n ",
    ],
)
def test_unparseable_body_is_400(client, settings, body):
    issues = assert_outcome(post_raw(client, body), 400)
    assert expressions(issues) == ["$this"], issues  # the body as a whole
    assert_nothing_stored(client, settings)


@pytest.mark.parametrize("depth", [100, 1000, 100_000])
def test_deep_nesting_is_400(client, settings, depth):
    # a deeply nested (and otherwise invalid) value never crashes the server
    body = '{"resourceType": "Patient", "extension": ' + "[" * depth + "]" * depth + "}"
    assert_outcome(post_raw(client, body), 400)
    # deeply nested, but structurally valid, extensions: accepted or refused, no crash
    nested = '{"url": "http://x", "extension": [' * depth + '{"url": "http://x", '
    nested += '"valueString": "leaf"}' + "]}" * depth
    r = post_raw(client, '{"resourceType": "Patient", "extension": [' + nested + "]}")
    if r.status_code != 201:
        assert_outcome(r, 400)


def test_nesting_within_limits_is_accepted(client):
    nested: dict[str, Any] = {"url": "http://x", "valueString": "leaf"}
    for _ in range(20):
        nested = {"url": "http://x", "extension": [nested]}
    r = post_raw(client, json.dumps(patient(extension=[nested])))
    assert r.status_code == 201, r.text


# --- body size -------------------------------------------------------------------------


@pytest.fixture
def small_client(settings) -> Iterator[TestClient]:
    with app_client(settings, max_body_bytes=2048) as c:
        yield c


def test_body_over_the_limit_is_413(small_client):
    """Each 413 names the body as a whole (`$this`): every error has an expression."""
    big = json.dumps(patient(name=[{"family": "x" * 4000}]))
    issues = assert_outcome(post_raw(small_client, big), 413)
    assert expressions(issues) == ["$this"], issues
    # also when streamed without a Content-Length (chunked)
    r = small_client.post(
        "/fhir/Patient",
        content=iter([big[:1000].encode(), big[1000:].encode()]),
        headers={"Content-Type": FHIR_JSON},
    )
    assert expressions(assert_outcome(r, 413)) == ["$this"]
    ops = [{"op": "add", "path": "/name/0/given/-", "value": "y" * 4000}]
    rid = create(small_client, patient())["id"]
    r = small_client.patch(
        f"/fhir/Patient/{rid}",
        content=json.dumps(ops),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert_outcome(r, 413)
    small = json.dumps(patient())
    assert post_raw(small_client, small).status_code == 201


# --- routing ---------------------------------------------------------------------------


def test_unknown_resource_type_is_404(client):
    for method, url in (
        ("GET", "/fhir/Foo/1"),
        ("POST", "/fhir/Foo"),
        ("PUT", "/fhir/Foo/1"),
        ("DELETE", "/fhir/Foo/1"),
        ("GET", "/fhir/Foo/_history"),
        ("GET", "/fhir/patient/1"),  # http.html: URLs are case sensitive
        ("GET", "/fhir/Resource/1"),  # abstract
        ("GET", "/fhir/DomainResource/1"),
    ):
        body = json.dumps({"resourceType": url.split("/")[2], "id": "1"})
        r = client.request(method, url, content=body, headers={"Content-Type": FHIR_JSON})
        assert_outcome(r, 404)


def test_unknown_route_is_404_outcome(client):
    for url in ("/fhir/Patient/1/_history/1/extra", "/nothing-here", "/fhir/Patient/1/2/3/4"):
        assert_outcome(client.get(url), 404)


def test_wrong_method_is_405_outcome(client):
    for method, url in (
        ("POST", "/fhir/Patient/123"),
        ("PUT", "/fhir/Patient/123/_history/1"),
        ("DELETE", "/fhir/Patient/123/_history/1"),
        ("POST", "/fhir/Patient/_history"),
        ("PUT", "/fhir/metadata"),
        ("POST", "/fhir/metadata"),
        ("DELETE", "/fhir/_history"),
    ):
        r = client.request(method, url, content=b"{}", headers={"Content-Type": FHIR_JSON})
        assert_outcome(r, 405)


@pytest.mark.parametrize("rid", ["a" * 65, "a%20b", "a_b", "%C3%B1", "a%3Ab"])
def test_invalid_id_in_url_is_400(client, settings, rid):
    # datatypes.html#id: [A-Za-z0-9\-\.]{1,64}
    assert_outcome(client.get(f"/fhir/Patient/{rid}"), (400, 404))
    r = client.put(
        f"/fhir/Patient/{rid}",
        content=json.dumps(patient(id=rid)),
        headers={"Content-Type": FHIR_JSON},
    )
    assert_outcome(r, 400)
    assert_outcome(client.delete(f"/fhir/Patient/{rid}"), (400, 404))
    assert_nothing_stored(client, settings)


def test_invalid_id_in_url_read_is_400(client):
    assert_outcome(client.get(f"/fhir/Patient/{'a' * 65}"), 400)
    assert_outcome(client.get("/fhir/Patient/a%20b"), 400)


@pytest.mark.parametrize(("vid", "status"), [("abc", 400), ("0", 400), ("-1", 400), ("2", 404)])
def test_invalid_or_unknown_vid(client, vid, status):
    rid = create(client, patient())["id"]
    assert_outcome(client.get(f"/fhir/Patient/{rid}/_history/{vid}"), status)


# --- invalid content -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expression"),
    [
        ({"birthDate": "1980-13-01"}, "Patient.birthDate"),
        ({"birthDate": "1980-02-30"}, "Patient.birthDate"),
        ({"active": "true"}, "Patient.active"),
        ({"gender": "yes"}, "Patient.gender"),
        ({"gender": 1}, "Patient.gender"),
        ({"unknownProperty": 1}, "Patient.unknownProperty"),
        ({"name": {"family": "x"}}, "Patient.name"),  # must be an array
        ({"name": [{"family": ["x"]}]}, "Patient.name[0].family"),
        ({"multipleBirthInteger": 1.5}, "Patient.multipleBirth.ofType(integer)"),
        ({"multipleBirthInteger": 1, "multipleBirthBoolean": True}, "Patient.multipleBirth"),
        ({"deceasedString": "x"}, "Patient.deceasedString"),
        ({"telecom": []}, "Patient.telecom"),
        ({"managingOrganization": {"reference": 5}}, "Patient.managingOrganization.reference"),
    ],
)
def test_invalid_content_is_400_with_expression(client, settings, change, expression):
    body = patient(**change)
    issues = assert_outcome(post_raw(client, json.dumps(body)), 400)
    found = expressions(issues)
    assert any(e == expression or e.startswith(expression) for e in found), issues
    assert all(i["severity"] in ("error", "fatal") for i in issues if i.get("expression"))
    assert_nothing_stored(client, settings)
    # the same on update-as-create and update
    r = client.put(
        "/fhir/Patient/x1",
        content=json.dumps({**body, "id": "x1"}),
        headers={"Content-Type": FHIR_JSON},
    )
    assert_outcome(r, 400)
    assert_nothing_stored(client, settings)


def test_invalid_update_leaves_the_resource_alone(client):
    created = create(client, patient())
    r = client.put(
        f"/fhir/Patient/{created['id']}",
        content=json.dumps({**created, "birthDate": "1980-13-01"}),
        headers={"Content-Type": FHIR_JSON},
    )
    issues = assert_outcome(r, 400)
    assert "Patient.birthDate" in expressions(issues)
    assert client.get(f"/fhir/Patient/{created['id']}").json() == created
    history = client.get(f"/fhir/Patient/{created['id']}/_history").json()
    assert history["total"] == 1


def test_invalid_nested_content_points_at_the_element(client, settings):
    body = observation(
        valueQuantity={"value": "1.5", "unit": "mg"},
        component=[{"code": {"text": "x"}, "valueQuantity": {"value": 1}}, {"valueString": "y"}],
    )
    issues = assert_outcome(post_raw(client, json.dumps(body), "Observation"), 400)
    found = expressions(issues)
    assert any(e.startswith("Observation.value.ofType(Quantity)") for e in found), issues
    assert any(e.startswith("Observation.component[1]") for e in found), issues  # no code
    assert_nothing_stored(client, settings)


# --- random mutations ------------------------------------------------------------------

SEED_RESOURCES = [
    patient(
        identifier=[{"system": "http://a", "value": "1"}],
        telecom=[{"system": "phone", "value": "1", "use": "home"}],
        address=[{"line": ["Calle 1"], "city": "Sevilla", "postalCode": "41001"}],
        contact=[{"name": {"family": "Núñez"}, "relationship": [{"text": "mother"}]}],
        managingOrganization={"reference": "Organization/o1"},
    ),
    observation(
        subject={"reference": "Patient/p1"},
        effectiveDateTime="2020-01-01T10:00:00Z",
        valueQuantity={"value": 1.5, "unit": "mg", "system": "http://unitsofmeasure.org"},
        component=[{"code": {"text": "c"}, "valueInteger": 3}],
        referenceRange=[{"low": {"value": 1}, "high": {"value": 2}}],
    ),
]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    choices = [
        None,
        True,
        False,
        0,
        -1,
        2**63,
        1.5,
        1e308,
        "",
        "x",
        "1980-13-01",
        "2020-01-01",
        " padded ",
        "\u0000",
        "Núñez",
        "a" * 1000,
        [],
        {},
    ]
    if depth < 3:
        choices += [[random_value(rng, depth + 1)], {"k": random_value(rng, depth + 1)}]
        choices += [{"resourceType": "Patient"}, {"reference": random_value(rng, depth + 1)}]
    return rng.choice(choices)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += paths(v, (*prefix, i))
    return found


def mutate(rng: random.Random, resource: dict[str, Any]) -> Any:
    doc: Any = copy.deepcopy(resource)
    for _ in range(rng.randint(1, 3)):
        target = rng.choice(paths(doc))
        if not target:
            if rng.random() < 0.1:
                doc = random_value(rng)
                continue
            target = (rng.choice([*list(doc), "newKey", "_birthDate", "resourceType"]),)
            if not isinstance(doc, dict):
                continue
        parent = doc
        for step in target[:-1]:
            parent = parent[step]
        key = target[-1]
        action = rng.random()
        if isinstance(parent, dict) and action < 0.3:
            parent.pop(key, None)
        elif isinstance(parent, dict) and action < 0.4:
            parent[f"{key}X"] = random_value(rng)
        elif isinstance(parent, list) and action < 0.3:
            del parent[key]
        else:
            parent[key] = random_value(rng)
    return doc


def test_random_mutations_never_crash(client):
    rng = random.Random(20240229)
    seen: dict[int, int] = {}
    for n in range(300):
        seed = SEED_RESOURCES[n % len(SEED_RESOURCES)]
        doc = mutate(rng, seed)
        body = json.dumps(doc, allow_nan=False) if rng.random() < 0.95 else json.dumps(doc)[:-3]
        rtype = seed["resourceType"]
        r = post_raw(client, body, rtype)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code in (201, 400), (r.status_code, body, r.text)
        parsed = r.json()  # always JSON
        if r.status_code == 201:
            assert parsed["resourceType"] == rtype
            assert client.get(f"/fhir/{rtype}/{parsed['id']}").json() == parsed
        else:
            assert parsed["resourceType"] == "OperationOutcome"
    assert seen.get(400, 0) > 50 and seen.get(201, 0) > 10, seen  # both paths exercised
