"""5xx the fuzzers found (tests/test_openapi_fuzz.py, tests/fuzz/), each as the attack
through the HTTP API."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def test_a_lone_surrogate_escape_in_a_string_is_a_400_not_a_500(client: TestClient) -> None:
    """``"\\ud800"`` is valid JSON (RFC 8259 section 8.2: "the behavior of software that
    receives JSON texts containing such values is unpredictable") but no Unicode text:
    FHIR strings are Unicode (datatypes.html#string) and the server writes UTF-8, so it
    was accepted by the validator and crashed the write (orjson: "str is not valid UTF-8:
    surrogates not allowed"). It is refused as malformed, naming where it is."""
    body = '{"resourceType":"Patient","name":[{"family":"a\\ud800b"}]}'
    for method, url in (
        ("POST", "/fhir/Patient"),
        ("PUT", "/fhir/Patient/s1"),
        ("POST", "/fhir/Patient/$validate"),
    ):
        r = client.request(method, url, content=body, headers=FHIR_JSON)
        assert r.status_code == 400, (method, url, r.text)
        issue = r.json()["issue"][0]
        assert issue["code"] == "structure"
        assert issue["expression"] == ["name[0].family"]
    entry = {
        "request": {"method": "POST", "url": "Patient"},
        "resource": {"resourceType": "Patient", "name": [{"family": "PLACEHOLDER"}]},
    }
    for kind in ("transaction", "batch"):
        bundle = json.dumps({"resourceType": "Bundle", "type": kind, "entry": [entry]})
        r = client.post(
            "/fhir", content=bundle.replace("PLACEHOLDER", "\\udfff"), headers=FHIR_JSON
        )
        assert r.status_code == 400, (kind, r.text)
    # A valid pair (U+1F600) is one character, and fine.
    ok = '{"resourceType":"Patient","name":[{"family":"a\\ud83d\\ude00b"}]}'
    r = client.post("/fhir/Patient", content=ok, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    assert r.json()["name"][0]["family"] == "a\U0001f600b"
