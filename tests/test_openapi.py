"""GET [base]/openapi.json: an OpenAPI 3.1 document of the FHIR API, derived from the
CapabilityStatement, public like /metadata (issue 11: "there is no OpenAPI document, so
nothing schema-driven can fuzz the API")."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from fhir_server.config import Settings
from fhir_server.search.registry import Registry
from fhir_server.service.openapi import SEARCH_VALUE_SCHEMAS, openapi_document

# http.html: where each RESTful interaction the CapabilityStatement declares is served.
TYPE_ENDPOINTS = {
    "read": ("/{type}/{id}", "get"),
    "vread": ("/{type}/{id}/_history/{vid}", "get"),
    "update": ("/{type}/{id}", "put"),
    "patch": ("/{type}/{id}", "patch"),
    "delete": ("/{type}/{id}", "delete"),
    "history-instance": ("/{type}/{id}/_history", "get"),
    "history-type": ("/{type}/_history", "get"),
    "create": ("/{type}", "post"),
    "search-type": ("/{type}", "get"),
}
SYSTEM_ENDPOINTS = {
    "transaction": ("/", "post"),
    "batch": ("/", "post"),
    "search-system": ("/", "get"),
    "history-system": ("/_history", "get"),
}


def _parameters(doc: dict[str, Any], operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An operation's parameters by name, $refs resolved."""
    out = {}
    for p in operation.get("parameters", []):
        if "$ref" in p:
            p = doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
        out[p["name"]] = p
    return out


def test_openapi_is_public_valid_3_1_and_lists_what_the_capability_statement_lists(
    auth_client: TestClient,
) -> None:
    # No Authorization header: the document is as public as /metadata.
    r = auth_client.get("/fhir/openapi.json")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"].startswith("3.1.")
    # The whole document against the OpenAPI 3.1 schema; the semantic checks (each $ref
    # resolves, path parameters declared, ...) on a subset below: the validator re-walks
    # every referenced schema per operation and takes minutes over ~2,200 operations,
    # which all come from the same code as the subset's.
    assert list(OpenAPIV31SpecValidator.schema_validator.iter_errors(doc)) == []
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))  # operationIds are unique (OpenAPI 3.1 4.8.10.1)
    assert doc["servers"] == [{"url": "http://testserver/fhir"}]
    subset = auth_client.get("/fhir/openapi.json", params={"_type": "Patient,Group,Bundle"})
    validate(subset.json(), cls=OpenAPIV31SpecValidator)  # raises on any violation

    cs = auth_client.get("/fhir/metadata").json()
    rest = cs["rest"][0]
    paths = doc["paths"]
    common = {p["name"]: p["type"] for p in rest["searchParam"]}
    for resource in rest["resource"]:
        t = resource["type"]
        for interaction in resource["interaction"]:
            template, method = TYPE_ENDPOINTS[interaction["code"]]
            path = template.replace("{type}", t)
            assert method in paths.get(path, {}), f"{interaction['code']} of {t}: {method} {path}"
        search = _parameters(doc, paths[f"/{t}"]["get"])
        declared = {**common, **{p["name"]: p["type"] for p in resource["searchParam"]}}
        for name, ptype in declared.items():
            assert name in search, f"{t} search parameter {name}"
            assert search[name]["schema"] == SEARCH_VALUE_SCHEMAS[ptype], (t, name)
        form = doc["components"]["schemas"][f"{t}-search"]["properties"]
        assert set(declared) <= set(form), t  # POST _search takes the same parameters
        for op in resource.get("operation", []):
            assert any(f"${op['name']}" in p and p.startswith(f"/{t}/") for p in paths), (t, op)
    for interaction in rest["interaction"]:
        path, method = SYSTEM_ENDPOINTS[interaction["code"]]
        assert method in paths[path], interaction["code"]
    names = {op["name"] for op in rest["operation"]}
    assert names == {"validate", "export", "import", "stock", "report"}
    assert all("post" in paths[f"/{r['type']}/$validate"] for r in rest["resource"])
    assert {"get", "post"} <= set(paths["/$export"])
    # the workflows' operations, described from their OperationDefinitions
    assert {"get", "post"} <= set(paths["/$stock"]) and set(paths["/Location/{id}/$stock"])
    stock = {q["name"] for q in paths["/Medication/{id}/$stock"]["get"]["parameters"]}
    assert {"id", "location", "expiring-before"} <= stock
    assert set(paths["/Invoice/$generate"]) == {"post"}  # it writes: no GET
    assert set(paths["/Invoice/{id}/$issue"]) == set(paths["/Account/{id}/$invoice"]) == {"post"}
    # request and response media types (http.html#mime-type)
    create = paths["/Observation"]["post"]
    assert "application/fhir+json" in create["requestBody"]["content"]
    assert (
        "application/json-patch+json"
        in paths["/Observation/{id}"]["patch"]["requestBody"]["content"]
    )
    assert (
        "application/x-www-form-urlencoded"
        in paths["/Observation/_search"]["post"]["requestBody"]["content"]
    )
    assert (
        "application/fhir+json" in paths["/Observation/{id}"]["get"]["responses"]["200"]["content"]
    )


def test_openapi_security_is_the_smart_oauth_endpoints_of_the_capability_statement(
    auth_client: TestClient,
) -> None:
    doc = auth_client.get("/fhir/openapi.json").json()
    rest = auth_client.get("/fhir/metadata").json()["rest"][0]
    uris = {e["url"]: e["valueUri"] for e in rest["security"]["extension"][0]["extension"]}
    smart = doc["components"]["securitySchemes"]["smart"]
    assert smart["type"] == "oauth2"
    assert smart["flows"]["authorizationCode"]["authorizationUrl"] == uris["authorize"]
    assert smart["flows"]["authorizationCode"]["tokenUrl"] == uris["token"]
    assert smart["flows"]["clientCredentials"]["tokenUrl"] == uris["token"]
    assert "system/*.cruds" in smart["flows"]["clientCredentials"]["scopes"]
    assert doc["security"] == [{"smart": []}, {"bearer": []}]
    # The public documents say they need no token; the data endpoints inherit the scheme.
    assert doc["paths"]["/metadata"]["get"]["security"] == []
    assert doc["paths"]["/openapi.json"]["get"]["security"] == []
    assert "security" not in doc["paths"]["/Patient/{id}"]["get"]
    # ... and they are: the same request for a data endpoint is refused without a token.
    assert auth_client.get("/fhir/Patient").status_code == 401


def test_openapi_is_read_only(client: TestClient) -> None:
    """Not a resource type: POST is 405 like on /metadata, not a create of type
    'openapi.json'."""
    r = client.post("/fhir/openapi.json", json={})
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"
    assert r.json()["resourceType"] == "OperationOutcome"


def test_openapi_of_some_types(client: TestClient) -> None:
    """_type narrows the paths to those types; the system endpoints stay."""
    doc = client.get("/fhir/openapi.json", params={"_type": "Observation"}).json()
    assert "/Observation/{id}" in doc["paths"]
    assert "/Patient/{id}" not in doc["paths"]
    assert {"/", "/_history", "/metadata", "/$export"} <= set(doc["paths"])
    for bad in ({"_type": "Nope"}, {"_type": ","}, {"other": "x"}):
        r = client.get("/fhir/openapi.json", params=bad)
        assert r.status_code == 400, bad
        assert r.json()["issue"][0]["expression"] == [next(iter(bad))]


def test_openapi_without_authorization_has_no_security_scheme(client: TestClient) -> None:
    """As the CapabilityStatement leaves out rest.security when authorization is off."""
    doc = client.get("/fhir/openapi.json").json()
    assert "security" not in doc
    assert "securitySchemes" not in doc["components"]


def test_openapi_follows_the_registry_not_a_fixed_list() -> None:
    """A custom SearchParameter the registry gains appears in the CapabilityStatement and
    so in the document: nothing is hard-coded."""
    custom = Registry.from_definitions().with_custom(
        [
            {
                "resourceType": "SearchParameter",
                "url": "http://example.org/SearchParameter/patient-nickname",
                "code": "nickname",
                "base": ["Patient"],
                "type": "string",
                "expression": "Patient.name.given",
            }
        ]
    )
    doc = openapi_document(Settings(mongo_url="mongodb://unused"), "http://x/fhir", custom)
    search = _parameters(doc, doc["paths"]["/Patient"]["get"])
    assert search["nickname"]["schema"] == SEARCH_VALUE_SCHEMAS["string"]
    assert "nickname" not in _parameters(doc, doc["paths"]["/Observation"]["get"])
