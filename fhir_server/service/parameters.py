"""Reading an operation's input Parameters resource (operations.html#request: a POSTed
operation takes its parameters as a Parameters resource). Only the envelope is checked
here; each operation says which names and value types it accepts."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fhir_server.outcome import bad_request


@dataclass(frozen=True, slots=True)
class Parameter:
    """One Parameters.parameter: its name, where it is, and its value (a primitive as
    sent, a resource, or None when it has parts or nothing)."""

    name: str
    path: str  # FHIRPath of the parameter, for error expressions
    value: Any = None
    resource: Any = None
    has_value: bool = False


def is_parameters(body: Any) -> bool:
    return isinstance(body, dict) and body.get("resourceType") == "Parameters"


def read_parameters(body: dict[str, Any]) -> list[Parameter]:
    """The parameters of a Parameters resource; 400 when the envelope is malformed."""
    items = body.get("parameter", [])
    if not isinstance(items, list):
        raise bad_request("Parameters.parameter must be an array", "Parameters.parameter")
    return [_parameter(item, f"Parameters.parameter[{i}]") for i, item in enumerate(items)]


def _parameter(item: Any, path: str) -> Parameter:
    if not isinstance(item, dict):
        raise bad_request(f"{path} must be an object", path)
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request(f"{path} has no name", f"{path}.name")
    values = [k for k in item if k.startswith("value") and len(k) > 5 and k[5].isupper()]
    if len(values) > 1:
        raise bad_request(f"{path} ({name}) has more than one value[x]", path)
    if values:
        return Parameter(name, path, value=item[values[0]], has_value=True)
    return Parameter(name, path, resource=item.get("resource"))


def primitive_text(p: Parameter) -> str:
    """A primitive parameter value as it would be written in a URL (``_count=10``)."""
    value = p.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | Decimal):
        return str(value)
    raise bad_request(f"{p.path} ({p.name}) must have a primitive value[x]", p.path)
