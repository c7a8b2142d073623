"""Index values extracted from a resource at write time (stored under ``sp``).

Only what conditional interactions need today: ``identifier`` tokens as
``{"s": system | None, "v": value}``. The search issue replaces this with values for
every SearchParameter of the type.
"""

from __future__ import annotations

from typing import Any


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def identifier_tokens(resource: dict[str, Any]) -> list[dict[str, Any]]:
    tokens = []
    for ident in _as_list(resource.get("identifier")):
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            tokens.append({"s": ident.get("system"), "v": ident["value"]})
    return tokens


def index_values(resource: dict[str, Any]) -> dict[str, Any]:
    tokens = identifier_tokens(resource)
    return {"identifier": tokens} if tokens else {}
