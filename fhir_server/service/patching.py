"""Applying a JSON Patch (RFC 6902) within the input limits.

A ``copy`` operation duplicates a whole subtree, and copying a value into itself
doubles it: 24 operations of ``{"op":"copy","from":"/a","path":"/a/-"}`` build 16
million values from one (the unbounded patch ran for minutes). The operations are
applied one by one, counting what each copy duplicates, and a patch that copies more
values in all than one array may hold is refused before the copy is made; the result
is then held to the same limits as a request body.
"""

from __future__ import annotations

from typing import Any

import jsonpatch
import jsonpointer

from fhir_server.input_limits import InputLimits, check_limits
from fhir_server.outcome import FhirError


def apply_patch(patch: jsonpatch.JsonPatch, document: Any, limits: InputLimits) -> Any:
    """``patch`` applied to ``document`` (changed in place: pass a fresh copy).

    Raises jsonpatch/jsonpointer errors as jsonpatch does, and a 400 (too-costly) when
    the copies or the result exceed ``limits``."""
    budget = limits.max_array_length
    for i, raw in enumerate(patch.patch):
        if raw.get("op") == "copy":
            source = jsonpointer.resolve_pointer(document, raw.get("from", ""))
            budget -= count_values(source, budget + 1)
            if budget < 0:
                raise FhirError.of(
                    400,
                    "too-costly",
                    f"The JSON Patch copies more than {limits.max_array_length} values",
                    f"[{i}]",
                )
        document = jsonpatch.JsonPatch([raw]).apply(document, in_place=True)
    check_limits(document, limits, "patched resource")
    return document


def count_values(value: Any, stop: int) -> int:
    """How many JSON values ``value`` holds (itself included), counting no further
    than ``stop``."""
    count = 0
    stack = [value]
    while stack and count < stop:
        v = stack.pop()
        count += 1
        if type(v) is dict:
            stack.extend(v.values())
        elif type(v) is list:
            stack.extend(v)
    return count
