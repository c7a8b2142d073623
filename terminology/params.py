"""An operation's inputs, from the URL (GET: every value a string) and from a POSTed
Parameters resource (typed values: valueCoding, valueBoolean, a ValueSet resource ...),
read through typed accessors that answer 400 with the parameter's expression when a
value is missing, repeated or of the wrong type; and the output Parameters resource."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fhir_server.outcome import FhirError, bad_request
from fhir_server.validation import validate_resource


@dataclass(frozen=True, slots=True)
class Value:
    """One input value: ``kind`` is the value[x] suffix (``Code``, ``Coding``,
    ``Boolean`` ...), ``url`` for a URL parameter, ``resource`` for a resource."""

    kind: str
    value: Any
    where: str  # expression for errors: the URL parameter name or Parameters path


class Inputs:
    """The named inputs of one operation call."""

    def __init__(self, operation: str, allowed: Iterable[str]) -> None:
        self.operation = operation
        self.allowed = frozenset(allowed)
        self.values: dict[str, list[Value]] = {}

    def add(self, name: str, value: Value) -> None:
        if name not in self.allowed:
            raise FhirError.of(
                400,
                "not-supported",
                f"Unknown parameter {name!r} for {self.operation}",
                value.where,
            )
        self.values.setdefault(name, []).append(value)

    def add_url(self, pairs: Iterable[tuple[str, str]]) -> None:
        for name, text in pairs:
            if name in ("_format", "_pretty"):
                continue
            self.add(name, Value("url", text, name))

    def add_parameters(self, body: Any) -> None:
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise bad_request(f"POST {self.operation} takes a Parameters resource", "resourceType")
        items = body.get("parameter", [])
        if not isinstance(items, list):
            raise bad_request("Parameters.parameter must be an array", "Parameters.parameter")
        for i, item in enumerate(items):
            path = f"Parameters.parameter[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise bad_request(f"{path} must be an object with a name", path)
            keys = [k for k in item if k.startswith("value") and len(k) > 5 and k[5].isupper()]
            if len(keys) > 1:
                raise bad_request(f"{path} has more than one value[x]", path)
            if keys:
                self.add(item["name"], Value(keys[0][5:], item[keys[0]], f"{path}.{keys[0]}"))
            elif isinstance(item.get("resource"), dict):
                self.add(item["name"], Value("resource", item["resource"], f"{path}.resource"))
            else:
                raise bad_request(f"{path} ({item['name']}) has no value", path)

    def has(self, name: str) -> bool:
        return name in self.values

    def one(self, name: str) -> Value | None:
        found = self.values.get(name)
        if not found:
            return None
        if len(found) > 1:
            raise bad_request(f"{self.operation}: {name} may be given only once", found[1].where)
        return found[0]

    def all(self, name: str) -> list[Value]:
        return self.values.get(name, [])

    def text(self, name: str) -> str | None:
        v = self.one(name)
        if v is None:
            return None
        if not isinstance(v.value, str) or not v.value:
            raise bad_request(f"{name} must be a non-empty string", v.where)
        return v.value

    def texts(self, name: str) -> list[str]:
        out = []
        for v in self.all(name):
            if not isinstance(v.value, str) or not v.value:
                raise bad_request(f"{name} must be a non-empty string", v.where)
            out.append(v.value)
        return out

    def boolean(self, name: str, default: bool = False) -> bool:
        v = self.one(name)
        if v is None:
            return default
        if isinstance(v.value, bool):
            return v.value
        if v.value in ("true", "false"):
            return bool(v.value == "true")
        raise bad_request(f"{name} must be true or false", v.where)

    def integer(self, name: str, minimum: int = 0) -> int | None:
        v = self.one(name)
        if v is None:
            return None
        value = v.value
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, Decimal) and value == value.to_integral_value():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise bad_request(f"{name} must be an integer of at least {minimum}", v.where)
        return value

    def coding(self, name: str) -> tuple[dict[str, Any], str] | None:
        """A Coding input and its expression."""
        return self._datatype(name, "Coding", "a Coding (valueCoding)")

    def codeable(self, name: str) -> tuple[dict[str, Any], str] | None:
        """A CodeableConcept input and its expression."""
        return self._datatype(name, "CodeableConcept", "a CodeableConcept")

    def _datatype(self, name: str, kind: str, what: str) -> tuple[dict[str, Any], str] | None:
        """A complex-typed input of ``kind`` and its expression; any other type is refused."""
        v = self.one(name)
        if v is None:
            return None
        if v.kind != kind or not isinstance(v.value, dict):
            raise bad_request(f"{name} must be {what}", v.where)
        return v.value, v.where

    def resource(self, name: str, rtype: str) -> dict[str, Any] | None:
        v = self.one(name)
        if v is None:
            return None
        if v.kind != "resource" or v.value.get("resourceType") != rtype:
            raise bad_request(f"{name} must be a {rtype} resource", v.where)
        # an inline resource is checked as a write would check it, so the operation
        # reads only well-formed content (issue expressions are relative to it)
        errors = [i for i in validate_resource(v.value, rtype) if i.severity in ("error", "fatal")]
        if errors:
            raise FhirError(400, errors)
        resource: dict[str, Any] = v.value
        return resource

    def where(self, name: str) -> str:
        v = self.one(name)
        return v.where if v else name


class Output:
    """A Parameters resource under construction."""

    def __init__(self) -> None:
        self.parameter: list[dict[str, Any]] = []

    def add(self, name: str, kind: str, value: Any) -> Output:
        if value is not None:
            self.parameter.append({"name": name, f"value{kind}": value})
        return self

    def part(self, name: str, parts: list[dict[str, Any]]) -> Output:
        self.parameter.append({"name": name, "part": parts})
        return self

    def json(self) -> dict[str, Any]:
        return {"resourceType": "Parameters", "parameter": self.parameter}


def part(name: str, kind: str, value: Any) -> dict[str, Any]:
    return {"name": name, f"value{kind}": value}
