"""Hostile input through HTTP (issue 11, findings 5 and 9): each request here once made
the server answer 500 or accept what it must refuse. Every one must now be a 4xx
OperationOutcome whose ``expression`` names the offending parameter or element, or, for
a valid query, a normal answer; never a 5xx."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_helpers import (
    FHIR_JSON,
    assert_outcome,
    bundle_response,
    entry,
    expressions,
    patient,
    post_bundle,
)

# --- ids ---------------------------------------------------------------------------------
# datatypes.html#id: "Any combination of upper- or lower-case ASCII letters ('A'..'Z', and
# 'a'..'z'), numerals ('0'..'9'), '-' and '.', with a length limit of 64 characters". The
# regex admits "." and "..", but those are RFC 3986 dot segments: "Patient/.." is the
# base URL to every client and proxy, so such a resource could never be read back.

DOT_IDS = [".", ".."]


@pytest.mark.parametrize("rid", DOT_IDS)
def test_put_create_with_a_dot_segment_id_is_refused(client: TestClient, rid: str) -> None:
    encoded = rid.replace(".", "%2E")  # sent plainly, the client itself would rewrite it
    r = client.put(
        f"/fhir/Patient/{encoded}",
        content=json.dumps(patient(id=rid)),
        headers={"Content-Type": FHIR_JSON},
    )
    assert expressions(assert_outcome(r, 400)) == ["id"]
    assert_outcome(client.get(f"/fhir/Patient/{encoded}"), 400)
    assert client.get("/fhir/Patient").json().get("total") == 0


@pytest.mark.parametrize("rid", DOT_IDS)
def test_transaction_put_with_a_dot_segment_id_is_refused(client: TestClient, rid: str) -> None:
    r = post_bundle(client, [entry("PUT", f"Patient/{rid}", patient(id=rid))])
    issues = assert_outcome(r, 400)
    assert any("request.url" in x for x in expressions(issues)), issues
    assert client.get("/fhir/Patient").json().get("total") == 0


@pytest.mark.parametrize("rid", DOT_IDS)
def test_batch_put_with_a_dot_segment_id_fails_that_entry(client: TestClient, rid: str) -> None:
    r = post_bundle(client, [entry("PUT", f"Patient/{rid}", patient(id=rid))], "batch")
    (only,) = bundle_response(r, "batch-response")
    assert only["response"]["status"].startswith("400"), only
    assert client.get("/fhir/Patient").json().get("total") == 0


def _status(e: dict[str, Any]) -> int:
    return int(e["response"]["status"].split()[0])
