"""Small resource bodies are validated and rendered on the event loop, large ones in the
CPU pool (fhir_server/offload.py, ``INLINE_BODY_BYTES``), and both answer alike.

What a body costs the loop when it runs there is bounded by its size: the costliest
shape just under the bound is timed against a concurrent ``GET /metadata`` in
tests/test_adversarial_input.py."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from fhir_server.offload import INLINE_BODY_BYTES

FHIR_JSON = {"Content-Type": "application/fhir+json"}
# the work that grows with a resource body: validating it and rendering its version
BODY_WORK = {"new_version", "checked"}


def _name(work: Any) -> str:
    """The function a pool item runs: work is partial(context.run, fn, *args)."""
    fn = work.args[0] if isinstance(work, functools.partial) and work.args else work
    while isinstance(fn, functools.partial):
        fn = fn.func
    return str(getattr(fn, "__name__", fn))


@pytest.fixture
def pooled(client: TestClient) -> Iterator[list[str]]:
    """The names of the functions the app hands to its CPU pool, as they are handed."""
    threads = client.app.state.services.resources.offload.threads  # type: ignore[attr-defined]
    seen: list[str] = []
    original = threads.submit

    def submit(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        seen.append(_name(fn))
        return original(fn, *args, **kwargs)

    threads.submit = submit
    yield seen
    threads.submit = original


def patient(size: int, **extra: Any) -> bytes:
    """A valid Patient whose JSON is about ``size`` bytes (identifiers as padding)."""
    body: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": "Núñez"}], **extra}
    n = 0
    while len(orjson.dumps(body)) < size - 40:
        n += 1
        body["identifier"] = [{"system": "urn:x", "value": str(i)} for i in range(n)]
    return orjson.dumps(body)


def test_a_small_create_and_update_run_on_the_loop(client: TestClient, pooled: list[str]) -> None:
    small = patient(600)
    assert len(small) < INLINE_BODY_BYTES
    created = client.post("/fhir/Patient", content=small, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    body = orjson.loads(small) | {"id": rid, "gender": "female"}
    updated = client.put(f"/fhir/Patient/{rid}", content=orjson.dumps(body), headers=FHIR_JSON)
    assert updated.status_code == 200, updated.text
    assert updated.json()["gender"] == "female"
    assert not BODY_WORK & set(pooled), pooled


def test_a_large_body_goes_to_the_pool_even_after_a_small_one(
    client: TestClient, pooled: list[str]
) -> None:
    """The mark is the request's (its task's context), never the connection's."""
    assert client.post("/fhir/Patient", content=patient(600), headers=FHIR_JSON).is_success
    assert not BODY_WORK & set(pooled)
    large = patient(INLINE_BODY_BYTES + 200)
    created = client.post("/fhir/Patient", content=large, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    assert "new_version" in pooled and "checked" in pooled, pooled
    pooled.clear()
    rid = created.json()["id"]
    body = orjson.loads(large) | {"id": rid, "active": True}
    updated = client.put(f"/fhir/Patient/{rid}", content=orjson.dumps(body), headers=FHIR_JSON)
    assert updated.status_code == 200, updated.text
    assert "new_version" in pooled, pooled


@pytest.mark.parametrize("size", [600, INLINE_BODY_BYTES + 200])
def test_an_invalid_body_is_refused_alike_on_either_side(client: TestClient, size: int) -> None:
    """The same 422, OperationOutcome and expression whether the validation ran on the
    loop or in the pool."""
    body = patient(size, gender="unknown-gender", birthDate="1970-02-30")
    response = client.post("/fhir/Patient", content=body, headers=FHIR_JSON)
    assert response.status_code in (400, 422), response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    places = sorted(e for i in outcome["issue"] for e in i.get("expression", []))
    assert places == ["Patient.birthDate", "Patient.gender"], outcome
    assert client.get("/fhir/Patient").json().get("total") == 0
