"""A view's ``where`` pushed into the database query (fhir_server/views/pushdown.py).

SQL on FHIR v2, ViewDefinition.where: "FHIRPath expression(s) in the where clause are
evaluated against each resource; only resources for which the expressions evaluate to
true are included". The pushed criteria may only narrow what is read, never what is
kept: the rows must be those of the view run without them."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import FHIR_JSON, put, shared_client

from fhir_server.jsonio import dumps
from fhir_server.search.registry import Registry
from fhir_server.views import run as views_run
from fhir_server.views.engine import compile_view
from fhir_server.views.pushdown import where_criteria

REGISTRY = Registry.from_definitions()


def _view(resource_type: str, *where: str) -> Any:
    return compile_view(
        {
            "resourceType": "ViewDefinition",
            "status": "active",
            "resource": resource_type,
            "where": [{"path": w} for w in where],
            "select": [{"column": [{"name": "id", "path": "id"}]}],
        }
    )


@pytest.mark.parametrize(
    ("resource_type", "where", "expected"),
    [
        ("Observation", ["status = 'final'"], [("status", "final")]),
        ("Patient", ["active = true"], [("active", "true")]),
        (
            "Patient",
            ["gender = 'female' and active = false"],
            [("gender", "female"), ("active", "false")],
        ),
        ("Patient", ["name.family = 'Muñoz'"], [("family", "Muñoz")]),
        ("Appointment", ["status = 'noshow'", "start.exists()"], [("status", "noshow")]),
        # Not pushed: an `or` (either side may keep a resource), a function, a constant,
        # search syntax in the value, an element no parameter indexes alone, `!=`.
        ("Patient", ["gender = 'female' or active = true"], []),
        ("Patient", ["name.where(use = 'official').exists()"], []),
        ("Patient", ["gender = 'a,b'", "gender = 'x|y'", "gender = 'a\\\\b'"], []),
        ("Patient", ["birthDate = @2000-01-01"], []),
        ("Observation", ["value.ofType(Quantity).unit = 'mg'"], []),
        ("Observation", ["status != 'final'"], []),
        ("Observation", ["status = ''"], []),
    ],
)
def test_criteria(resource_type: str, where: list[str], expected: list[tuple[str, str]]) -> None:
    assert where_criteria(_view(resource_type, *where), REGISTRY) == expected


# --- over HTTP: the same rows, fewer resources read ---------------------------------------

NAMES = ["Muñoz", "MUÑOZ", "Munoz", "Muñozz", "Pérez"]


@pytest.fixture(scope="module")
def client(mongo_url: str) -> Iterator[TestClient]:
    with shared_client(mongo_url) as c:
        for i, family in enumerate(NAMES):
            patient = {"resourceType": "Patient", "id": f"p{i}", "name": [{"family": family}]}
            patient["active"] = i % 2 == 0
            assert put(c, patient).status_code == 201
        for i, status in enumerate(["final", "final", "amended", "preliminary", "final"]):
            observation = {
                "resourceType": "Observation",
                "id": f"o{i}",
                "status": status,
                "code": {"text": "x"},
            }
            assert put(c, observation).status_code == 201
        yield c


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many stored resources each run read (a spy on the run's cursor batches)."""
    counts: list[int] = []
    documents = views_run.ViewRunService._documents

    async def counted(self: Any, t: str, query: dict[str, Any]) -> AsyncGenerator[list[Any], None]:
        counts.append(0)
        async for batch in documents(self, t, query):
            counts[-1] += len(batch)
            yield batch

    monkeypatch.setattr(views_run.ViewRunService, "_documents", counted)
    return counts


def _ids(client: TestClient, resource_type: str, where: str) -> list[str]:
    view = _view(resource_type, where).definition
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "viewResource",
                "resource": {
                    "resourceType": "ViewDefinition",
                    "status": "active",
                    "resource": view.resource,
                    "where": [{"path": where}],
                    "select": [{"column": [{"name": "id", "path": "id"}]}],
                },
            }
        ],
    }
    r = client.post(
        "/fhir/ViewDefinition/$run", content=dumps(body), headers={"Content-Type": FHIR_JSON}
    )
    assert r.status_code == 200, r.text
    return sorted(row["id"] for row in r.json())


def test_token_where_reads_only_matches(client: TestClient, reads: list[int]) -> None:
    assert _ids(client, "Observation", "status = 'final'") == ["o0", "o1", "o4"]
    # Parenthesised, the same test is not pushed: every Observation is read.
    assert _ids(client, "Observation", "(status = 'final')") == ["o0", "o1", "o4"]
    assert reads == [3, 5]


def test_boolean_where(client: TestClient, reads: list[int]) -> None:
    assert _ids(client, "Patient", "active = false") == ["p1", "p3"]
    assert reads == [2]


def test_string_where_keeps_only_exact_matches(client: TestClient, reads: list[int]) -> None:
    """A string search matches by prefix, without case or accents (search.html#string),
    so it reads a superset; the view's ``=`` is exact and keeps one."""
    assert _ids(client, "Patient", "name.family = 'Muñoz'") == ["p0"]
    assert reads[0] < len(NAMES)
    assert _ids(client, "Patient", "name.family = 'Muñoz' and active = true") == ["p0"]
