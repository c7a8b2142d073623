"""atheris target: the search parser (fhir_server/search/parse.py).

The first byte picks the types and the compartment the route would pass (and lenient
handling); the rest is the query string, decoded and split as the routes do. Every
query either parses into a plan or raises a 4xx FhirError."""

from __future__ import annotations

from urllib.parse import parse_qsl

import atheris

with atheris.instrument_imports(include=["fhir_server"]):
    from fhir_server.outcome import FhirError
    from fhir_server.search.parse import Parser
    from fhir_server.search.registry import Registry

from harness import client_error, run

TARGETS: list[tuple[list[str], tuple[str, str] | None]] = [
    (["Patient"], None),
    (["Observation"], None),
    (["Encounter"], None),
    (["Observation", "Condition"], None),
    (["Observation"], ("Patient", "p1")),
    (["RiskAssessment"], None),
    (["Group"], None),
    (["Bundle"], None),
]
parser = Parser(Registry.from_definitions(), "http://fuzz/fhir")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    types, compartment = TARGETS[data[0] % len(TARGETS)]
    lenient = bool(data[0] & 0x80)
    query = data[1:].decode("utf-8", "replace")
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if v != ""]
    try:
        parser.parse(types, params, lenient=lenient, compartment=compartment)
    except FhirError as exc:
        client_error(exc)


if __name__ == "__main__":
    run(test_one_input)
