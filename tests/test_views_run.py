"""SQL on FHIR v2 ``$viewdefinition-run`` over HTTP (issue #17): the official test suite
through ``POST ViewDefinition/$run``, views over the server's data (``_limit``,
``_since``, ``patient``), every output format, the errors, and SMART scopes."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from fhir_helpers import FHIR_JSON, assert_outcome, expressions, put, shared_client
from httpx import Response
from smart_helpers import TokenMint, smart_client
from test_views_spec import _canonical, _cases

from fhir_server.jsonio import dumps
from fhir_server.views import run as views_run
from fhir_server.views.errors import ViewRunError

RUN = "/fhir/ViewDefinition/$run"
SYSTEM_RUN = "/fhir/$viewdefinition-run"


def parameters(view: dict[str, Any], *resources: dict[str, Any], **scalars: Any) -> bytes:
    """A Parameters body: ``viewResource``, then each ``resource``, then scalars given as
    ``name=("valueX", value)``."""
    items: list[dict[str, Any]] = [{"name": "viewResource", "resource": view}]
    items += [{"name": "resource", "resource": r} for r in resources]
    items += [{"name": name, key: value} for name, (key, value) in scalars.items()]
    return dumps({"resourceType": "Parameters", "parameter": items})


def run(
    client: TestClient,
    body: bytes | dict[str, Any],
    url: str = RUN,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    content = body if isinstance(body, bytes) else dumps(body)
    return client.post(
        url, content=content, params=params, headers={"Content-Type": FHIR_JSON, **(headers or {})}
    )


def reference(target: str) -> tuple[str, dict[str, str]]:
    return ("valueReference", {"reference": target})


def rows_of(r: Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    found = json.loads(r.content, parse_float=Decimal)
    assert isinstance(found, list)
    return found


# --- the official suite, over HTTP --------------------------------------------------------


@pytest.fixture(scope="module")
def plain(mongo_url: str) -> Iterator[TestClient]:
    """No authorization; read-only tests share its data (the ``world`` below)."""
    with shared_client(mongo_url) as client:
        _seed(client)
        yield client


@pytest.mark.parametrize(("resources", "test"), _cases())
def test_official(plain: TestClient, resources: list[dict[str, Any]], test: dict[str, Any]) -> None:
    r = run(plain, parameters(test["view"], *resources, _format=("valueCode", "json")))
    if test.get("expectError"):
        issues = assert_outcome(r, 422)
        assert all(e.startswith("Parameters.parameter[0].resource") for e in expressions(issues))
        return
    rows = rows_of(r)
    if "expectColumns" in test:
        assert all(list(row) == test["expectColumns"] for row in rows)
    assert sorted(map(_canonical, rows)) == sorted(map(_canonical, test["expect"]))


# --- the server's data --------------------------------------------------------------------

PATIENTS: dict[str, dict[str, Any]] = {
    "p1": {"active": True, "name": [{"family": "Uno", "given": ["Ana", "María"]}]},
    "p2": {"active": False, "name": [{"family": "Dos", "given": ["Beto"]}]},
    "p3": {"name": [{"family": "Tres"}]},
    "gone": {"name": [{"family": "Borrado"}]},
}
OBSERVATIONS = {  # id -> (patient, value)
    "o1": ("p1", "1.50"),
    "o2": ("p1", "2"),
    "o3": ("p2", "3.25"),
    "o4": ("p3", "4"),
}
SINCE: dict[str, str] = {}  # lastUpdated of o4, the last resource written


def _seed(client: TestClient) -> None:
    for pid, extra in PATIENTS.items():
        assert put(client, {"resourceType": "Patient", "id": pid, **extra}).status_code == 201
    assert client.delete("/fhir/Patient/gone").status_code in (200, 204)
    for oid, (pid, value) in OBSERVATIONS.items():
        observation = {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "valueQuantity": {"value": Decimal(value), "unit": "mg/dL"},
        }
        r = client.put(
            f"/fhir/Observation/{oid}",
            content=dumps(observation),
            headers={"Content-Type": FHIR_JSON},
        )
        assert r.status_code == 201, r.text
        SINCE["o4"] = r.json()["meta"]["lastUpdated"]


PATIENT_VIEW = {
    "resourceType": "ViewDefinition",
    "resource": "Patient",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()", "type": "id"},
                {"name": "active", "path": "active", "type": "boolean"},
                {"name": "family", "path": "name.family.first()", "type": "string"},
                {"name": "given", "path": "name.given", "type": "string", "collection": True},
            ]
        }
    ],
}
OBSERVATION_VIEW = {
    "resourceType": "ViewDefinition",
    "resource": "Observation",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()", "type": "id"},
                {"name": "patient", "path": "subject.getReferenceKey(Patient)", "type": "id"},
                {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
                {"name": "updated", "path": "meta.lastUpdated", "type": "instant"},
            ]
        }
    ],
}


def test_runs_over_the_servers_data(plain: TestClient) -> None:
    rows = rows_of(run(plain, parameters(PATIENT_VIEW)))
    assert rows == [  # in id order; the deleted patient is absent
        {"id": "p1", "active": True, "family": "Uno", "given": ["Ana", "María"]},
        {"id": "p2", "active": False, "family": "Dos", "given": ["Beto"]},
        {"id": "p3", "active": None, "family": "Tres", "given": []},
    ]
    rows = rows_of(run(plain, parameters(OBSERVATION_VIEW), url=SYSTEM_RUN))
    assert [(r["id"], r["patient"], r["value"]) for r in rows] == [
        ("o1", "p1", Decimal("1.50")),
        ("o2", "p1", Decimal("2")),
        ("o3", "p2", Decimal("3.25")),
        ("o4", "p3", Decimal("4")),
    ]


def test_inline_resources_replace_the_servers_data(plain: TestClient) -> None:
    inline = {"resourceType": "Patient", "id": "x", "name": [{"family": "Inline"}]}
    rows = rows_of(run(plain, parameters(PATIENT_VIEW, inline)))
    assert [(r["id"], r["family"]) for r in rows] == [("x", "Inline")]


def test_limit(plain: TestClient) -> None:
    rows = rows_of(run(plain, parameters(OBSERVATION_VIEW, _limit=("valueInteger", 2))))
    assert [r["id"] for r in rows] == ["o1", "o2"]
    rows = rows_of(run(plain, parameters(OBSERVATION_VIEW), params={"_limit": "3"}))
    assert [r["id"] for r in rows] == ["o1", "o2", "o3"]
    # rows, not resources: one patient gives a row per given name
    view = {
        "resource": "Patient",
        "select": [{"forEach": "name.given", "column": [{"name": "g", "path": "$this"}]}],
    }
    assert rows_of(run(plain, parameters(view, _limit=("valueInteger", 1)))) == [{"g": "Ana"}]


def test_server_data_is_read_in_batches(plain: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views_run, "BATCH", 3)  # o1..o3, then o4
    for fmt in ("json", "csv", "parquet"):
        r = run(plain, parameters(OBSERVATION_VIEW), params={"_format": fmt})
        assert r.status_code == 200, r.text
        if fmt == "json":
            assert [row["id"] for row in rows_of(r)] == ["o1", "o2", "o3", "o4"]
        elif fmt == "csv":
            lines = list(csv.reader(io.StringIO(r.text)))
            assert [line[0] for line in lines] == ["id", "o1", "o2", "o3", "o4"]
        else:
            table = pq.read_table(io.BytesIO(r.content))
            assert table.column("id").to_pylist() == ["o1", "o2", "o3", "o4"]
    for limit in (2, 3, 4, 5):  # within, at the end of, and across batches
        body = parameters(OBSERVATION_VIEW, _limit=("valueInteger", limit))
        assert [row["id"] for row in rows_of(run(plain, body))] == ["o1", "o2", "o3", "o4"][:limit]


def test_since(plain: TestClient) -> None:
    body = parameters(OBSERVATION_VIEW, _since=("valueInstant", SINCE["o4"]))
    assert [r["id"] for r in rows_of(run(plain, body))] == ["o4"]
    body = parameters(OBSERVATION_VIEW, _since=("valueInstant", "2000-01-01T00:00:00Z"))
    assert len(rows_of(run(plain, body))) == 4
    # inline resources: by meta.lastUpdated
    old = {"resourceType": "Patient", "id": "old", "meta": {"lastUpdated": "2001-01-01T00:00:00Z"}}
    new = {"resourceType": "Patient", "id": "new", "meta": {"lastUpdated": "2021-01-01T00:00:00Z"}}
    body = parameters(PATIENT_VIEW, old, new, _since=("valueInstant", "2020-01-01T00:00:00Z"))
    assert [r["id"] for r in rows_of(run(plain, body))] == ["new"]


def test_patient(plain: TestClient) -> None:
    body = parameters(OBSERVATION_VIEW, patient=reference("Patient/p1"))
    assert [r["id"] for r in rows_of(run(plain, body))] == ["o1", "o2"]
    body = parameters(PATIENT_VIEW, patient=reference("Patient/p2"))
    assert [r["id"] for r in rows_of(run(plain, body))] == ["p2"]
    r = run(plain, parameters(OBSERVATION_VIEW), params={"patient": "Patient/p2"})
    assert [r["id"] for r in rows_of(r)] == ["o3"]
    # inline resources: by the compartment their references put them in
    mine = {
        "resourceType": "Observation",
        "id": "m",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/p1"},
    }
    theirs = {**mine, "id": "t", "subject": {"reference": "Patient/p2"}}
    body = parameters(OBSERVATION_VIEW, mine, theirs, patient=reference("Patient/p1"))
    assert [r["id"] for r in rows_of(run(plain, body))] == ["m"]


def test_patient_on_a_malformed_inline_resource(plain: TestClient) -> None:
    bad = {"resourceType": "Observation", "id": "bad", "code": [{"coding": 5}]}
    body = parameters(OBSERVATION_VIEW, bad, patient=reference("Patient/p1"))
    issues = assert_outcome(run(plain, body), 400)
    assert expressions(issues) == ["Parameters.parameter[1].resource"]


@pytest.mark.parametrize(
    ("target", "view"),
    [
        ("Patient/nobody", OBSERVATION_VIEW),  # not on the server
        ("Patient/gone", OBSERVATION_VIEW),  # deleted
        ("Patient/p1", {"resource": "Practitioner", "select": [{"column": [
            {"name": "id", "path": "id"}]}]}),  # outside the compartment
        ("Practitioner/p1", OBSERVATION_VIEW),  # not a patient
    ],
)  # fmt: skip
def test_patient_errors(plain: TestClient, target: str, view: dict[str, Any]) -> None:
    body = parameters(view, patient=reference(target))
    issues = assert_outcome(run(plain, body), 400)
    assert expressions(issues) == ["Parameters.parameter[1]"]


# --- formats ------------------------------------------------------------------------------


def test_ndjson(plain: TestClient) -> None:
    for fmt in ("ndjson", "application/x-ndjson", "application/fhir+ndjson"):
        r = run(plain, parameters(PATIENT_VIEW), params={"_format": fmt})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = r.text.split("\n")
        assert lines[-1] == ""
        assert [json.loads(line)["id"] for line in lines[:-1]] == ["p1", "p2", "p3"]


CSV_ROWS = [
    ["p1", "true", "Uno", '["Ana","María"]'],
    ["p2", "false", "Dos", '["Beto"]'],
    ["p3", "", "Tres", "[]"],
]


def test_csv(plain: TestClient) -> None:
    r = run(plain, parameters(PATIENT_VIEW, _format=("valueCode", "csv")))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.startswith("id,active,family,given\r\n")  # RFC 4180: CRLF
    assert list(csv.reader(io.StringIO(r.text))) == [["id", "active", "family", "given"], *CSV_ROWS]


def test_csv_without_header(plain: TestClient) -> None:
    body = parameters(
        PATIENT_VIEW, _format=("valueCode", "text/csv"), header=("valueBoolean", False)
    )
    r = run(plain, body)
    assert r.status_code == 200, r.text
    assert list(csv.reader(io.StringIO(r.text))) == CSV_ROWS
    r = run(plain, parameters(PATIENT_VIEW), params={"_format": "csv", "header": "false"})
    assert list(csv.reader(io.StringIO(r.text))) == CSV_ROWS


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("application/json", "application/json"),
        ("application/fhir+json, */*", "application/json"),
        ("*/*", "application/json"),
        ("text/html, application/x-ndjson;q=0.9", "application/x-ndjson"),
        ("application/vnd.apache.parquet", "application/vnd.apache.parquet"),
        ("text/csv", "text/csv"),
    ],
)
def test_accept_chooses_the_format_without_format(
    plain: TestClient, accept: str, media_type: str
) -> None:
    r = run(plain, parameters(PATIENT_VIEW), headers={"Accept": accept})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(media_type)
    r = run(plain, parameters(PATIENT_VIEW), params={"_format": "json"}, headers={"Accept": accept})
    assert r.headers["content-type"].startswith("application/json")  # _format wins


def test_csv_quotes_what_needs_it(plain: TestClient) -> None:
    inline = {"resourceType": "Patient", "id": "q", "name": [{"family": 'A, "B"\nC'}]}
    r = run(plain, parameters(PATIENT_VIEW, inline), headers={"Accept": "text/csv"})
    assert r.status_code == 200, r.text
    assert '"A, ""B""\nC"' in r.text
    assert list(csv.reader(io.StringIO(r.text)))[1][2] == 'A, "B"\nC'


def test_parquet(plain: TestClient) -> None:
    body = parameters(OBSERVATION_VIEW, _format=("valueCode", "parquet"))
    r = run(plain, body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(r.content))
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("value").type == pa.float64()
    assert table.schema.field("updated").type == pa.timestamp("ms", tz="UTC")
    assert table.column("id").to_pylist() == ["o1", "o2", "o3", "o4"]
    assert table.column("value").to_pylist() == [1.5, 2.0, 3.25, 4.0]
    assert all(t is not None for t in table.column("updated").to_pylist())

    r = run(plain, parameters(PATIENT_VIEW), params={"_format": "parquet"})
    table = pq.read_table(io.BytesIO(r.content))
    assert table.schema.field("active").type == pa.bool_()
    assert table.schema.field("given").type == pa.list_(pa.string())
    assert table.to_pylist() == [
        {"id": "p1", "active": True, "family": "Uno", "given": ["Ana", "María"]},
        {"id": "p2", "active": False, "family": "Dos", "given": ["Beto"]},
        {"id": "p3", "active": None, "family": "Tres", "given": []},
    ]


def test_parquet_integers_and_empty_results(plain: TestClient) -> None:
    view = {
        "resource": "Patient",
        "select": [
            {
                "column": [
                    {"name": "n", "path": "name.count()", "type": "integer"},
                    {"name": "untyped", "path": "active"},
                ]
            }
        ],
    }
    table = pq.read_table(
        io.BytesIO(run(plain, parameters(view), params={"_format": "parquet"}).content)
    )
    assert table.schema.field("n").type == pa.int32()
    assert table.schema.field("untyped").type == pa.string()
    assert table.to_pylist() == [
        {"n": 1, "untyped": "true"},
        {"n": 1, "untyped": "false"},
        {"n": 1, "untyped": None},
    ]
    body = parameters(
        view, _limit=("valueInteger", 1), _since=("valueInstant", "2999-01-01T00:00:00Z")
    )
    empty = pq.read_table(io.BytesIO(run(plain, body, params={"_format": "parquet"}).content))
    assert empty.num_rows == 0 and empty.schema.names == ["n", "untyped"]


def test_empty_results(plain: TestClient) -> None:
    body = parameters(PATIENT_VIEW, _since=("valueInstant", "2999-01-01T00:00:00Z"))
    assert rows_of(run(plain, body)) == []
    assert run(plain, body, params={"_format": "ndjson"}).content == b""
    assert run(plain, body, params={"_format": "csv"}).text == "id,active,family,given\r\n"


def test_parquet_type_mismatch_is_an_error(plain: TestClient) -> None:
    column = {"name": "x", "path": "name.family", "type": "boolean"}
    view = {"resource": "Patient", "select": [{"column": [column]}]}
    inline = {"resourceType": "Patient", "id": "q", "name": [{"family": "F"}]}
    issues = assert_outcome(
        run(plain, parameters(view, inline), params={"_format": "parquet"}), 422
    )
    assert "declared boolean" in issues[0]["diagnostics"]


# --- errors -------------------------------------------------------------------------------


def test_invalid_view_names_the_element(plain: TestClient) -> None:
    view = {"resource": "Patient", "select": [{"column": [{"name": "a", "path": "name.("}]}]}
    issues = assert_outcome(run(plain, parameters(view)), 422)
    assert expressions(issues) == ["Parameters.parameter[0].resource.select[0].column[0].path"]
    # a failure on the data: several values in a column that is not a collection
    view = {"resource": "Patient", "select": [{"column": [{"name": "g", "path": "name.given"}]}]}
    issues = assert_outcome(run(plain, parameters(view)), 422)
    assert expressions(issues) == ["Parameters.parameter[0].resource.select[0].column[0].path"]
    assert "Patient/p1" in issues[0]["diagnostics"]


def test_a_failure_after_the_first_rows_cuts_the_stream(
    plain: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its status is sent with the first rows: a later failure can only end the response
    early (a real server closes the connection before the chunked body's end)."""
    monkeypatch.setattr(views_run, "BATCH", 1)
    view = {"resource": "Patient", "select": [{"column": [{"name": "g", "path": "name.given"}]}]}
    one = {"resourceType": "Patient", "id": "one", "name": [{"given": ["x"]}]}
    two = {"resourceType": "Patient", "id": "two", "name": [{"given": ["x", "y"]}]}
    issues = assert_outcome(run(plain, parameters(view, two, one)), 422)
    assert "Patient/two" in issues[0]["diagnostics"]
    with pytest.raises(ViewRunError):
        run(plain, parameters(view, one, two))


def _body(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(items)}


VIEW_PARAM = {"name": "viewResource", "resource": PATIENT_VIEW}


@pytest.mark.parametrize(
    ("body", "params", "expression"),
    [
        # exactly one of viewResource and viewReference (tests/test_views_store.py runs
        # stored views by reference)
        (_body(VIEW_PARAM, {"name": "viewReference",
                            "valueReference": {"reference": "ViewDefinition/v"}}),
         None, "Parameters.parameter[1]"),
        (_body(), None, "Parameters"),
        (_body(VIEW_PARAM, {"name": "_limit", "valueInteger": 0}), None, "Parameters.parameter[1]"),
        (_body(VIEW_PARAM, {"name": "_limit", "valueString": "x"}), None,
         "Parameters.parameter[1]"),
        (_body(VIEW_PARAM), {"_limit": "-1"}, "_limit"),
        (_body(VIEW_PARAM), {"_format": "xml"}, "_format"),
        (_body(VIEW_PARAM, {"name": "_format", "valueCode": "xlsx"}), None,
         "Parameters.parameter[1]"),
        (_body(VIEW_PARAM, {"name": "header", "valueString": "no"}), None,
         "Parameters.parameter[1]"),
        (_body(VIEW_PARAM, {"name": "_since", "valueInstant": "yesterday"}), None,
         "Parameters.parameter[1]"),
        (_body(VIEW_PARAM), {"_count": "1"}, "_count"),
        (_body(VIEW_PARAM, {"name": "nope", "valueString": "x"}), None, "Parameters.parameter[1]"),
        (_body(VIEW_PARAM, {"name": "group", "valueReference": {"reference": "Group/g"}}), None,
         "Parameters.parameter[1]"),
        (_body(VIEW_PARAM, VIEW_PARAM), None, "Parameters.parameter[1]"),
        (_body(VIEW_PARAM, {"name": "resource", "resource": {"id": "x"}}), None,
         "Parameters.parameter[1].resource"),
        (_body(VIEW_PARAM, {"name": "_limit", "valueInteger": 1}), {"_limit": "2"},
         "Parameters.parameter[1]"),
    ],
)  # fmt: skip
def test_bad_parameters(
    plain: TestClient, body: dict[str, Any], params: dict[str, str] | None, expression: str
) -> None:
    issues = assert_outcome(run(plain, body, params=params), 400)
    assert expressions(issues) == [expression]


def test_body_must_be_parameters(plain: TestClient) -> None:
    assert_outcome(run(plain, PATIENT_VIEW), 400)
    r = plain.post(RUN)
    assert_outcome(r, 400)


def test_other_methods_are_405(plain: TestClient) -> None:
    for url in (RUN, SYSTEM_RUN):
        r = plain.get(url)
        assert_outcome(r, 405)
        assert r.headers["allow"] == "POST"


# --- SMART --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smart(mongo_url: str) -> Iterator[tuple[TestClient, TokenMint]]:
    """tests/smart_helpers.py's world: patients pa and pb, each with a laboratory and a
    vital-signs Observation."""
    with smart_client(mongo_url) as found:
        yield found


OBS_IDS = {"resource": "Observation", "select": [{"column": [{"name": "id", "path": "id"}]}]}


def _ids(r: Response) -> list[str]:
    return [row["id"] for row in rows_of(r)]


@pytest.mark.parametrize(
    ("scope", "options", "expected"),
    [
        ("system/*.rs", {}, ["oa-lab", "oa-vital", "ob-lab", "ob-vital"]),
        ("patient/Observation.rs", {"patient": "pa"}, ["oa-lab", "oa-vital"]),
        ("patient/*.read", {"patient": "pb"}, ["ob-lab", "ob-vital"]),
        ("patient/Observation.rs?category=laboratory", {"patient": "pa"}, ["oa-lab"]),
        ("user/*.rs", {"fhir_user": "Patient/pb"}, ["ob-lab", "ob-vital"]),
    ],
)
def test_rows_stay_within_the_token(
    smart: tuple[TestClient, TokenMint], scope: str, options: dict[str, Any], expected: list[str]
) -> None:
    client, mint = smart
    r = run(client, parameters(OBS_IDS), headers=mint.headers(scope, **options))
    assert _ids(r) == expected


def test_patient_token_cannot_widen_with_patient(smart: tuple[TestClient, TokenMint]) -> None:
    client, mint = smart
    headers = mint.headers("patient/Observation.rs", patient="pa")
    own = parameters(OBS_IDS, patient=reference("Patient/pa"))
    assert _ids(run(client, own, headers=headers)) == ["oa-lab", "oa-vital"]
    body = parameters(OBS_IDS, patient=reference("Patient/pb"))
    assert _ids(run(client, body, headers=headers)) == []
    headers = mint.headers("patient/*.rs", patient="pa")  # may read Patients: pb is unknown
    assert_outcome(run(client, body, headers=headers), 400)


@pytest.mark.parametrize(
    ("scope", "options"),
    [
        ("patient/Patient.rs", {"patient": "pa"}),  # no Observation scope
        ("system/Observation.s", {}),  # search but no read
        ("system/Observation.r", {}),  # read but no search
        ("patient/Observation.rs", {}),  # patient scope without a patient
    ],
)
def test_no_read_or_search_is_403(
    smart: tuple[TestClient, TokenMint], scope: str, options: dict[str, Any]
) -> None:
    client, mint = smart
    r = run(client, parameters(OBS_IDS), headers=mint.headers(scope, **options))
    assert_outcome(r, 403)


def test_no_token_is_401(smart: tuple[TestClient, TokenMint]) -> None:
    client, _ = smart
    assert run(client, parameters(OBS_IDS)).status_code == 401


def test_inline_resources_read_nothing_of_the_server(smart: tuple[TestClient, TokenMint]) -> None:
    """A view over resources the client sent touches no stored data: any valid token may
    run it."""
    client, mint = smart
    inline = {"resourceType": "Observation", "id": "mine", "status": "final", "code": {}}
    headers = mint.headers("patient/Patient.rs", patient="pa")
    assert _ids(run(client, parameters(OBS_IDS, inline), headers=headers)) == ["mine"]
