"""atheris target: the validator (``fhir_server.validation.validate_resource``).

It must never raise, and it must not get there by swallowing an exception: it catches
everything, logs it and reports an "exception" issue, which would hide a crash from the
fuzzer, so a logged traceback fails the input here. Two kinds of input:

- JSON text (data starting with ``{``), as the API reads it; the seeds are valid
  resources that mutations bend;
- anything else drives a structure-aware builder: a resource of a type the data picks,
  its properties drawn from the R4 element model (elements.json), each value mostly of
  its element's shape, sometimes of any JSON shape, nested resources included. Byte
  mutations rarely keep JSON valid deep down; this reaches the checks of every element
  kind.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import atheris

with atheris.instrument_imports(include=["fhir_server"]):
    from fhir_server.jsonio import JsonDecimal, parse_json
    from fhir_server.outcome import FhirError, Issue
    from fhir_server.validation import validate_resource
    from fhir_server.validation.model import raw_definitions

from harness import SwallowedErrors, run

swallowed = SwallowedErrors()
logging.getLogger("fhir_server").addHandler(swallowed)
logging.getLogger("fhir_server").propagate = False

RAW = raw_definitions()
TYPES: dict[str, dict[str, list[Any]]] = {n: t["e"] for n, t in RAW["types"].items()}
RESOURCES = sorted(RAW["resources"])
PRIMITIVES = frozenset(RAW["primitives"])
MAX_DEPTH = 5


def _any(fdp: atheris.FuzzedDataProvider, depth: int) -> Any:
    """Any JSON value (the wrong shape, usually)."""
    kind = fdp.ConsumeIntInRange(0, 8)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeInt(8)
    if kind == 3:
        text = f"{fdp.ConsumeInt(4)}.{fdp.ConsumeIntInRange(0, 999)}e{fdp.ConsumeInt(2)}"
        return JsonDecimal(text)
    if kind in (4, 5) or depth >= MAX_DEPTH:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))
    if kind == 6:
        return [_any(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 7:
        return _resource(fdp, depth + 1)
    return {fdp.ConsumeUnicodeNoSurrogates(8): _any(fdp, depth + 1)}


def _primitive(fdp: atheris.FuzzedDataProvider, type_name: str) -> Any:
    if type_name == "boolean":
        return fdp.ConsumeBool()
    if type_name in ("integer", "positiveInt", "unsignedInt"):
        return fdp.ConsumeInt(5)
    if type_name == "decimal":
        return JsonDecimal(str(Decimal(fdp.ConsumeInt(4)).scaleb(fdp.ConsumeIntInRange(-8, 8))))
    return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))


def _value(fdp: atheris.FuzzedDataProvider, type_name: str, depth: int) -> Any:
    if fdp.ConsumeIntInRange(0, 9) == 0:
        return _any(fdp, depth)
    if type_name in PRIMITIVES:
        return _primitive(fdp, type_name)
    if type_name == "Resource" or type_name in RAW["resources"]:
        return _resource(fdp, depth + 1, None if type_name == "Resource" else type_name)
    if depth >= MAX_DEPTH or type_name not in TYPES:
        return {}
    return _object(fdp, type_name, depth + 1)


def _object(fdp: atheris.FuzzedDataProvider, type_name: str, depth: int) -> dict[str, Any]:
    elements = TYPES[type_name]
    keys = sorted(elements)
    out: dict[str, Any] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        key = keys[fdp.ConsumeIntInRange(0, len(keys) - 1)]
        element_type, many = elements[key][0], bool(elements[key][1])
        if fdp.ConsumeIntInRange(0, 7) == 0:  # the primitive's extension twin
            out["_" + key] = _object(fdp, "Element", depth) if "Element" in TYPES else {}
        elif many and fdp.ConsumeBool():
            count = fdp.ConsumeIntInRange(0, 3)
            out[key] = [_value(fdp, element_type, depth) for _ in range(count)]
        else:
            out[key] = _value(fdp, element_type, depth)
    return out


def _resource(fdp: atheris.FuzzedDataProvider, depth: int, name: str | None = None) -> Any:
    name = name or RESOURCES[fdp.ConsumeIntInRange(0, len(RESOURCES) - 1)]
    if depth >= MAX_DEPTH:
        return {"resourceType": name}
    return {"resourceType": name, **_object(fdp, name, depth)}


def _input(data: bytes) -> tuple[Any, str | None] | None:
    if data[:1] == b"{":
        try:
            value = parse_json(data)
        except FhirError:
            return None  # the reader's own target covers this
        expected = None
        if isinstance(value, dict) and isinstance(value.get("resourceType"), str):
            expected = value["resourceType"] if len(data) % 2 else "Patient"
        return value, expected
    fdp = atheris.FuzzedDataProvider(data)
    resource = _resource(fdp, 0)
    return resource, resource["resourceType"] if fdp.ConsumeBool() else None


def test_one_input(data: bytes) -> None:
    given = _input(data)
    if given is None:
        return
    issues = validate_resource(*given)
    swallowed.raise_first()
    assert isinstance(issues, list)
    for issue in issues:
        assert isinstance(issue, Issue), issue
        assert all(isinstance(e, str) for e in issue.expression), issue


if __name__ == "__main__":
    run(test_one_input)
