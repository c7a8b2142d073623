"""Search criteria of conditional create/update/delete/patch (http.html#ccreate).

Supports ``_id`` and ``identifier`` (token forms ``value``, ``system|value``,
``|value``, ``system|``) with OR by comma and AND by repetition. Any other parameter
is refused with 400 rather than ignored: ignoring a criterion would widen the match
and update or delete the wrong resource.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from fhir_server.outcome import bad_request
from fhir_server.resource_types import is_valid_id

SUPPORTED = ("_id", "identifier")
# Result parameters that do not restrict the match and may appear harmlessly.
_IGNORED = frozenset({"_format", "_pretty"})


def split_escaped(value: str, sep: str) -> list[str]:
    """Split on ``sep`` except where escaped with a backslash (search.html#escaping)."""
    parts, current, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            current.append(value[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def unescape(value: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", value)


def _token_condition(token: str, where: str) -> dict[str, Any]:
    pieces = split_escaped(token, "|")
    if len(pieces) == 1:
        code = unescape(pieces[0])
        if not code:
            raise bad_request(f"Empty value in {where}", where)
        return {"sp.identifier.v": code}
    if len(pieces) != 2:
        raise bad_request(f"Malformed token {token!r} in {where}", where)
    system, code = unescape(pieces[0]), unescape(pieces[1])
    if system and not code:
        return {"sp.identifier.s": system}
    if not code:
        raise bad_request(f"Empty value in {where}", where)
    return {"sp.identifier": {"$elemMatch": {"s": system or None, "v": code}}}


def criteria_filter(query: str, where: str) -> dict[str, Any]:
    """MongoDB filter for a conditional interaction's query string.

    ``where`` names the request part holding the criteria (the URL, or the
    If-None-Exist header) for the OperationOutcome expression.
    """
    pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True)
    clauses: list[dict[str, Any]] = []
    for name, value in pairs:
        if name in _IGNORED:
            continue
        if name not in SUPPORTED:
            raise bad_request(
                f"Search parameter {name!r} is not supported in conditional interactions "
                f"(supported: {', '.join(SUPPORTED)})",
                where,
                code="not-supported",
            )
        alternatives = split_escaped(value, ",")
        if name == "_id":
            ids = [unescape(a) for a in alternatives]
            for i in ids:
                if not is_valid_id(i):
                    raise bad_request(f"Invalid id {i!r} in {where}", where)
            clauses.append({"_id": {"$in": ids}})
        else:
            ors = [_token_condition(a, where) for a in alternatives]
            clauses.append(ors[0] if len(ors) == 1 else {"$or": ors})
    if not clauses:
        raise bad_request(f"A conditional interaction needs search criteria in {where}", where)
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}
