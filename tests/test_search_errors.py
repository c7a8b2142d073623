"""Search errors (search.html#errors, #modifiers): what is rejected with a 400
OperationOutcome naming the parameter, what lenient handling ignores, and that no
query string at all makes the server fail (a seeded fuzz over the real registry)."""

from __future__ import annotations

import json
import random
from urllib.parse import urlencode

import pytest
from fhir_helpers import (
    BASE,
    FHIR_JSON,
    assert_outcome,
    create_with_id,
    expressions,
    found,
    link,
    observation,
    relative,
    search,
    shared_client,
)

from fhir_server.search.registry import Registry

LENIENT = {"Prefer": "handling=lenient"}


@pytest.fixture(scope="module")
def api(mongo_url):
    """A client for the tests that only read (errors need no data)."""
    with shared_client(mongo_url) as client:
        yield client


def bad(client, path: str, params, name: str | None = None, **headers: str) -> list[dict]:
    """The search is a 400 OperationOutcome; its expression names ``name``."""
    r = client.get(f"/fhir/{path}", params=params, headers=headers)
    issues = assert_outcome(r, 400)
    if name is not None:
        assert name in expressions(issues), (params, issues)
    return issues


# --- unknown parameters ----------------------------------------------------------------


def test_unknown_parameter_is_an_error_naming_it(api):
    # search.html#errors: "Prefer: handling=strict: Client requests that the server
    # return an error for any unknown or unsupported parameter" (this server's default)
    bad(api, "Patient", {"foo": "bar"}, "foo")
    bad(api, "Patient", {"gender": "male", "nonsense-param": "x"}, "nonsense-param")
    bad(api, "Patient", {"foo": "bar"}, "foo", Prefer="handling=strict")
    bad(api, "Observation", {"name": "x"}, "name")  # a Patient parameter, not Observation's


def test_lenient_ignores_unknown_parameters_and_leaves_them_out_of_the_self_link(client):
    create_with_id(client, {"resourceType": "Patient", "gender": "male"}, "m")
    create_with_id(client, {"resourceType": "Patient", "gender": "female"}, "f")
    # search.html#errors: "Prefer: handling=lenient: Client requests that the server
    # ignore any unknown or unsupported parameter"; search.html#conformance: "the server
    # SHALL return the parameters that were actually used to process the search"
    params = [("foo", "bar"), ("gender", "male"), ("subject.nothing", "x")]
    bundle = search(client, "Patient", params, **LENIENT)
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["m"]
    assert link(bundle, "self") == f"{BASE}/Patient?gender=male"
    assert found(client, "Patient", {"foo": "bar"}, **LENIENT) == {"m", "f"}
    bundle = search(client, "Patient", {"foo": "bar"}, **LENIENT)
    assert link(bundle, "self") == f"{BASE}/Patient"


def test_unknown_modifier_is_an_error(api):
    # search.html#modifiers: "Server SHALL reject any search request that contains is
    # suffixed by a modifier that the server does not support for that parameter ...
    # using an HTTP 400 error with an OperationOutcome"
    bad(api, "Patient", {"gender:exact": "male"}, "gender:exact")  # string-only modifier
    bad(api, "Patient", {"family:foo": "x"}, "family:foo")
    bad(api, "Patient", {"birthdate:contains": "2020"}, "birthdate:contains")
    bad(api, "Observation", {"subject:Foo": "1"}, "subject:Foo")
    bad(api, "Observation", {"subject:Organization": "1"}, "subject:Organization")
    bad(api, "Patient", {"_id:exact": "x"}, "_id:exact")
    bad(api, "Observation", {"code:of-type": "a|b|c"}, "code:of-type")  # identifiers only


def test_unknown_parameter_in_a_chain_names_the_whole_parameter(api):
    bad(api, "Observation", {"subject:Patient.foo": "x"}, "subject:Patient.foo")
    bad(api, "Observation", {"subject.foo": "x"}, "subject.foo")
    bad(api, "Patient", {"_has:Observation:patient:foo": "x"}, "_has:Observation:patient:foo")
    bad(api, "Patient", {"_has:Foo:patient:code": "x"}, "_has:Foo:patient:code")
    bad(api, "Patient", {"gender.name": "x"}, "gender.name")  # not a reference


# --- malformed values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name", "value"),
    [
        # search.html#errors: "A data time parameter may have incorrect format e.g.
        # GET [base]/Condition?onset=23%20May%202009"; "Where the content of the
        # parameter is syntactically incorrect, servers SHOULD return an error."
        ("Patient", "birthdate", "23 May 2009"),
        ("Patient", "birthdate", "2020-13-01"),
        ("Patient", "birthdate", "2020-02-30"),
        ("Patient", "birthdate", "gt"),
        ("Patient", "birthdate", "xx2020"),
        ("Patient", "birthdate", "2020-03-04T10"),  # "minutes SHALL be present if an hour is"
        ("Patient", "_lastUpdated", "yesterday"),
        ("RiskAssessment", "probability", "abc"),
        ("RiskAssessment", "probability", "gt"),
        ("RiskAssessment", "probability", "1..2"),
        ("RiskAssessment", "probability", "NaN"),
        ("RiskAssessment", "probability", "Infinity"),
        ("Observation", "value-quantity", "five"),
        ("Observation", "value-quantity", "5.4|mg"),
        ("Observation", "value-quantity", "5.4|a|b|c"),
        ("Observation", "value-quantity", "lt|http://unitsofmeasure.org|mg"),
        ("Patient", "identifier", "a|b|c"),
        ("Patient", "gender", "|"),
        ("Patient", "identifier:of-type", "http://x|MR"),
        ("Observation", "subject", "Foo/123"),
        ("Observation", "subject", "a/b/c"),
        ("Observation", "subject", "Patient/"),
        ("Observation", "subject", "Patient/has space"),
        ("Observation", "subject:Patient", "Group/1"),
        ("Observation", "code-value-quantity", "http://loinc.org|8480-6"),  # no $ value
        ("Observation", "code-value-quantity", "a$b$c"),
        ("Observation", "code-value-quantity", "8480-6$high"),
        ("Patient", "gender:missing", "maybe"),
        ("Patient", "_id", "not an id!"),
        ("Patient", "subject.name", "x"),  # Patient has no subject parameter
    ],
)
def test_malformed_value_is_an_error_naming_the_parameter(api, path, name, value):
    bad(api, path, {name: value}, name)


def test_malformed_value_inside_a_chain_names_the_whole_parameter(api):
    bad(api, "Observation", {"subject:Patient.birthdate": "soon"}, "subject:Patient.birthdate")
    name = "_has:Observation:patient:date"
    bad(api, "Patient", {name: "2020-99"}, name)


# --- result parameters -----------------------------------------------------------------


@pytest.mark.parametrize(
    "sort",
    ["foo", "-foo", "-", "family,,given", "code-value-quantity", "name:exact"],
)
def test_sort_on_an_unknown_parameter(api, sort):
    path = "Observation" if sort == "code-value-quantity" else "Patient"
    bad(api, path, {"_sort": sort}, "_sort")


@pytest.mark.parametrize("count", ["abc", "-1", "1.5", "1e2", " 3", "0x10"])
def test_bad_count(api, count):
    bad(api, "Patient", {"_count": count}, "_count")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("_total", "all"),
        ("_summary", "maybe"),
        ("_include", "Patient:gender"),  # not a reference parameter
        ("_include", "Patient:foo"),
        ("_include", "Foo:bar"),
        ("_include", "Patient"),
        ("_include", "Patient:organization:Foo"),
        ("_revinclude", "Observation:code"),
        ("_revinclude", "Observation"),
        ("_include:foo", "Patient:organization"),
        ("_contained", "true"),
    ],
)
def test_bad_result_parameters(api, name, value):
    bad(api, "Patient", {name: value}, name)


def test_summary_text_cannot_be_mixed_with_includes(api):
    # search.html#summary: "Note that the _include and _revinclude parameters cannot be
    # mixed with _summary=text."
    params = {"_summary": "text", "_include": "Patient:organization"}
    assert_outcome(api.get("/fhir/Patient", params=params), 400)
    params = {"_summary": "text", "_revinclude": "Observation:subject"}
    assert_outcome(api.get("/fhir/Patient", params=params), 400)


def test_tampered_cursor(client):
    for i in range(5):
        create_with_id(client, {"resourceType": "Patient"}, f"p{i}")
    first = search(client, "Patient", {"_count": "2"})
    nxt = relative(link(first, "next"))
    assert client.get(nxt).status_code == 200
    head, cursor = nxt.rsplit("_cursor=", 1)
    for forged in (
        cursor[:-3],  # cut short
        cursor[:5] + ("A" if cursor[5] != "A" else "B") + cursor[6:],  # one byte changed
        "not-a-cursor",
        "%%%",
        "AAAA",
        "",
    ):
        r = client.get(f"{head}_cursor={forged}") if forged else None
        if r is None:  # an empty cursor is an empty parameter: ignored
            continue
        issues = assert_outcome(r, 400)
        assert "_cursor" in expressions(issues), (forged, issues)
    # a cursor of one sort order used with another
    r = client.get(f"/fhir/Patient?_count=2&_sort=family,birthdate&_cursor={cursor}")
    assert "_cursor" in expressions(assert_outcome(r, 400))


def test_post_search_needs_a_form_body(api):
    # http.html#search: "POST [base]/[type]/_search ... Content-Type:
    # application/x-www-form-urlencoded"
    r = api.post(
        "/fhir/Patient/_search",
        content=json.dumps({"gender": "male"}),
        headers={"Content-Type": FHIR_JSON},
    )
    assert_outcome(r, 415)
    r = api.post(
        "/fhir/Patient/_search",
        content=json.dumps({"gender": "male"}),
        headers={"Content-Type": "application/json"},
    )
    assert_outcome(r, 415)
    r = api.post("/fhir/Patient/_search", content=b"gender=male")  # no content type
    assert_outcome(r, 415)


def test_system_search_parameters_must_be_common(api):
    # search.html#_type: "If the _type parameter is included, all other search
    # parameters SHALL be common to all provided types"
    bad(api, "", {"_type": "Patient,Observation", "name": "x"}, "name")
    bad(api, "", {"gender": "male"}, "gender")  # no _type: only the common parameters
    bad(api, "", {"_type": "Patient,Foo"}, "_type")


def test_compartment_errors(api):
    r = api.get("/fhir/Patient/x/Organization")  # not in the Patient compartment
    assert_outcome(r, 400)
    r = api.get("/fhir/Patient/x/Observation", params={"foo": "bar"})
    assert "foo" in expressions(assert_outcome(r, 400))


# --- never a 500 -----------------------------------------------------------------------

FUZZ_TYPES = ("Patient", "Observation", "Encounter", "MedicationRequest", "RiskAssessment")
MODIFIERS = (
    "", "", "", "missing", "exact", "contains", "not", "text", "of-type", "identifier",
    "below", "above", "Patient", "Organization", "iterate", "in", "foo", "", "Group",
)  # fmt: skip
PIECES = (
    "", "x", "male", "true", "false", "2020", "2020-03-04", "2020-03-04T10:00:00Z",
    "2020-03-04T10:00+05:00", "gt2020", "ap2019-01", "sa2020-13", "5.4", "ge100", "eb-1",
    "1e400", "-0", "ap0", "5.4|http://unitsofmeasure.org|mg", "5.4||mg", "|", "||", "|||",
    "$", "$$", "a$b", "http://loinc.org|8480-6$gt100", ",", ",,", "\\", "\\\\", "\\,", "\\|",
    "\\$", "x\\", "Patient/p1", "p1", "Patient/", "http://testserver/fhir/Patient/p1",
    "urn:uuid:1", "Núñez", "日本語", "🙂", "\u0000", "\x1f", "%", "%00", "'", '"', "{}", "[",
    "null", "NaN", "Infinity", " ", "a b", "*", "Patient:*", "Observation:subject",
    "Observation:subject:Patient", "Patient:organization", "-family", "family,-birthdate",
    "_id", "name,gender", "count", "accurate", "AAAA", "9" * 40, "x" * 300,
)  # fmt: skip
SPECIAL = (
    "_sort", "_count", "_include", "_revinclude", "_include:iterate", "_summary", "_total",
    "_elements", "_cursor", "_id", "_lastUpdated", "_has", "_type", "_contained",
    "_text", "_filter", "_query", "_list",
)  # fmt: skip


def _fuzz_name(rng: random.Random, registry: Registry, rtype: str) -> str:
    params = sorted(registry.params(rtype))
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(SPECIAL)
    if roll < 0.25:  # a chain
        ref = rng.choice(
            sorted(c for c, p in registry.params(rtype).items() if p.type == "reference")
        )
        target = rng.choice(("", ":Patient", ":Organization", ":Foo"))
        return f"{ref}{target}.{rng.choice(sorted(registry.params('Patient')))}"
    if roll < 0.32:  # a reverse chain
        source = rng.choice(("Observation", "Encounter", "Provenance", "Foo", ""))
        code = rng.choice(("patient", "subject", "target", "x"))
        return f"_has:{source}:{code}:{rng.choice(params)}"
    name = rng.choice(params) if roll < 0.95 else rng.choice(("foo", "", ":", ".", "a.b.c.d.e"))
    modifier = rng.choice(MODIFIERS)
    return f"{name}:{modifier}" if modifier else name


def _fuzz_value(rng: random.Random) -> str:
    pieces = [rng.choice(PIECES) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
    joiner = rng.choice(("", ",", "|", "$", "\\", ""))
    value = joiner.join(pieces)
    if rng.random() < 0.1:
        value = "".join(rng.choice("ab|,$\\:./-_é0129eE+") for _ in range(rng.randint(0, 12)))
    return value


def test_no_query_string_makes_the_server_fail(client):
    create_with_id(client, {"resourceType": "Patient", "name": [{"family": "Núñez"}]}, "p1")
    create_with_id(client, observation(subject={"reference": "Patient/p1"}), "o1")
    registry = Registry.from_definitions()
    rng = random.Random(20240229)
    statuses: dict[int, int] = {}
    for i in range(400):
        rtype = rng.choice(FUZZ_TYPES)
        pairs = [
            (_fuzz_name(rng, registry, rtype), _fuzz_value(rng)) for _ in range(rng.randint(1, 4))
        ]
        where = rng.random()
        if where < 0.75:
            path = f"/fhir/{rtype}"
        elif where < 0.85:
            path = "/fhir"
            pairs.append(
                ("_type", rng.choice(("Patient", "Patient,Observation", rtype, "Foo", "")))
            )
        else:
            path = (
                f"/fhir/Patient/p1/{rtype}"
                if rtype != "RiskAssessment"
                else "/fhir/Patient/p1/Observation"
            )
        headers = LENIENT if rng.random() < 0.2 else {}
        url = f"{path}?{urlencode(pairs)}"
        r = client.get(url, headers=headers)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code in (200, 400), (i, url, headers, r.status_code, r.text[:500])
        assert r.headers["content-type"].startswith(FHIR_JSON), (url, r.headers)
        body = r.json()
        expected = "Bundle" if r.status_code == 200 else "OperationOutcome"
        assert body["resourceType"] == expected, (url, body)
        if r.status_code == 400:
            assert body["issue"] and body["issue"][0]["severity"] == "error", body
        elif i % 10 == 0 and (nxt := link(body, "next")):  # and their next pages
            assert client.get(relative(nxt), headers=headers).status_code == 200
    # the fuzz is not all errors: enough queries get through to the database
    assert statuses.get(200, 0) > 40 and statuses.get(400, 0) > 40, statuses


def test_no_form_body_makes_the_server_fail(client):
    rng = random.Random(7)
    registry = Registry.from_definitions()
    for i in range(60):
        pairs = [(_fuzz_name(rng, registry, "Patient"), _fuzz_value(rng)) for _ in range(2)]
        r = client.post(
            "/fhir/Patient/_search",
            content=urlencode(pairs),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code in (200, 400), (i, pairs, r.status_code, r.text[:500])
        assert r.json()["resourceType"] in ("Bundle", "OperationOutcome")
