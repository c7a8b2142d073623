"""HEAD answers like GET without a body (RFC 9110 9.3.2: "the server MUST NOT send
content in the response"; the header fields are those a GET would send)."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_head_on_read_search_history_and_metadata(client: TestClient) -> None:
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}).json()["id"]
    for path in (
        f"/fhir/Patient/{pid}",
        "/fhir/Patient?_id=" + pid,
        "/fhir/_history",
        "/fhir/metadata",
    ):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
    read = client.head(f"/fhir/Patient/{pid}")
    assert read.headers["etag"] == 'W/"1"'
    assert int(read.headers["content-length"]) == len(client.get(f"/fhir/Patient/{pid}").content)


def test_head_errors_keep_their_status(client: TestClient) -> None:
    assert client.head("/fhir/Patient/unknown").status_code == 404
    assert client.head("/fhir/Foo/1").status_code == 404
    assert client.head("/fhir/Patient?foo=bar").status_code == 400
