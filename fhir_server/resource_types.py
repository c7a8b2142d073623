"""The R4 resource types and their element facts, from the generated definitions."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

ID_PATTERN = re.compile(r"[A-Za-z0-9\-\.]{1,64}")


@dataclass(frozen=True, slots=True)
class ResourceTypeInfo:
    name: str
    summary: frozenset[str]  # top-level element names marked isSummary ("deceased[x]" form)
    mandatory: frozenset[str]  # top-level elements with min > 0


@cache
def _definitions() -> dict[str, Any]:
    text = resources.files("fhir_server.definitions").joinpath("resources.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


@cache
def resource_types() -> dict[str, ResourceTypeInfo]:
    return {
        name: ResourceTypeInfo(name, frozenset(d["summary"]), frozenset(d["mandatory"]))
        for name, d in _definitions()["types"].items()
    }


def is_resource_type(name: str) -> bool:
    return name in resource_types()


# RFC 3986 dot segments: the R4 id regex admits them, but a URL holding one is
# rewritten by clients and proxies ("Patient/.." is the base), so such a resource could
# never be addressed again.
DOT_SEGMENTS = frozenset({".", ".."})


def is_valid_id(value: str) -> bool:
    """The R4 id regex (datatypes.html#id), without the dot segments "." and ".."."""
    return ID_PATTERN.fullmatch(value) is not None and value not in DOT_SEGMENTS
