"""atheris target: the validator (``fhir_server.validation.validate_resource``).

It must never raise, and it must not get there by swallowing an exception: it catches
everything, logs it and reports an "exception" issue, which would hide a crash from the
fuzzer, so a logged traceback fails the input here. Inputs are JSON texts (as the API
reads them); the seeds are valid resources that mutations bend."""

from __future__ import annotations

import logging
from decimal import InvalidOperation

import atheris

with atheris.instrument_imports(include=["fhir_server"]):
    from fhir_server.jsonio import parse_json
    from fhir_server.outcome import FhirError, Issue
    from fhir_server.validation import validate_resource

from harness import SwallowedErrors, known_reader_error, run

swallowed = SwallowedErrors()
logging.getLogger("fhir_server").addHandler(swallowed)
logging.getLogger("fhir_server").propagate = False


def test_one_input(data: bytes) -> None:
    try:
        value = parse_json(data)
    except FhirError:
        return  # the reader's own target covers this
    except InvalidOperation as exc:
        if known_reader_error(exc):
            return
        raise
    expected = None
    if isinstance(value, dict) and isinstance(value.get("resourceType"), str):
        expected = value["resourceType"] if len(data) % 2 else "Patient"
    issues = validate_resource(value, expected)
    swallowed.raise_first()
    assert isinstance(issues, list)
    for issue in issues:
        assert isinstance(issue, Issue), issue
        assert all(isinstance(e, str) for e in issue.expression), issue


if __name__ == "__main__":
    run(test_one_input)
