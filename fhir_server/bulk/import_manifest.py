"""The kick-off body of ``$import`` (Bulk Data Import proposal, manifest form): read and
checked before any work is queued.

The body is a ``Parameters`` resource (``inputFormat``, ``inputSource``,
``storageDetail`` with part ``type``, and one ``input`` per file with parts ``type`` and
``url``), or the same fields as the proposal's plain JSON object. Every refusal is a 400
OperationOutcome whose ``expression`` names the offending element, so a client can fix
its manifest without guessing.

Where an input may come from is the server's decision, never the client's: ``file://``
only below one of FHIR_IMPORT_DIRS (symbolic links resolved first, so a link cannot
point out), ``http(s)://`` only under one of the FHIR_IMPORT_URL_ALLOW prefixes (scheme,
host and port equal, path on a segment boundary). Anything else would let a token with
write scopes read the server's disk or probe its network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fhir_server.outcome import FhirError, Issue
from fhir_server.resource_types import is_resource_type

NDJSON = "application/fhir+ndjson"
MAX_INPUTS = 1000
_STORAGE_TYPES = ("https", "file")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class ImportInput:
    """One input file: its resource type, its URL as given, where that is in the body
    (for error expressions), and where the worker reads it (a path or a URL)."""

    type: str
    url: str
    where: str
    path: str | None = None  # file:// inputs: the resolved path


@dataclass(frozen=True, slots=True)
class Manifest:
    input_format: str
    input_source: str
    inputs: tuple[ImportInput, ...]


def _bad(message: str, expression: str, code: str = "invalid") -> FhirError:
    return FhirError(400, [Issue(code, message, "error", (expression,))])


_VALUE_KEYS = ("valueString", "valueCode", "valueUri", "valueUrl", "valueCanonical")


def _value(param: dict[str, Any]) -> Any:
    for key in _VALUE_KEYS:
        if key in param:
            return param[key]
    return None


def _string(value: Any, expression: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"{expression} must be a non-empty string", expression)
    return value.strip()


def parse_manifest(body: Any) -> Manifest:
    """The manifest of a kick-off body (Parameters or the plain JSON form), or 400."""
    if not isinstance(body, dict):
        raise _bad("The $import body must be a Parameters resource (the manifest)", "$this")
    if body.get("resourceType") == "Parameters":
        return _from_parameters(body)
    if "resourceType" in body:
        raise _bad(
            f"The $import body must be a Parameters resource, not {body['resourceType']}",
            "resourceType",
        )
    return _from_json(body)


def _from_parameters(body: dict[str, Any]) -> Manifest:
    params = body.get("parameter")
    if not isinstance(params, list):
        raise _bad("Parameters.parameter must be an array", "Parameters.parameter")
    fmt: str | None = None
    source: str | None = None
    inputs: list[tuple[Any, Any, str]] = []
    for i, p in enumerate(params):
        where = f"Parameters.parameter[{i}]"
        if not isinstance(p, dict):
            raise _bad("A parameter must be an object", where)
        name = p.get("name")
        if name == "inputFormat":
            fmt = _string(_value(p), f"{where}.value")
        elif name == "inputSource":
            source = _string(_value(p), f"{where}.value")
        elif name == "storageDetail":
            parts = _parts(p, where)
            kind = parts.get("type", (None, ""))[0]
            if kind is None:
                kind = _value(p)
            _check_storage(kind, f"{where}.part")
        elif name == "input":
            parts = _parts(p, where)
            t, t_where = parts.get("type", (None, f"{where}.part"))
            u, u_where = parts.get("url", (None, f"{where}.part"))
            inputs.append((t, u, f"{where}|{t_where}|{u_where}"))
        else:
            raise _bad(f"Unknown $import parameter {name!r}", f"{where}.name", "not-supported")
    return _manifest(fmt, source, inputs, "Parameters.parameter")


def _parts(param: dict[str, Any], where: str) -> dict[str, tuple[Any, str]]:
    """A parameter's parts by name: (value, expression of the value)."""
    parts = param.get("part") or []
    if not isinstance(parts, list):
        raise _bad("part must be an array", f"{where}.part")
    out: dict[str, tuple[Any, str]] = {}
    for j, part in enumerate(parts):
        if isinstance(part, dict) and isinstance(part.get("name"), str):
            out[part["name"]] = (_value(part), f"{where}.part[{j}].value")
    return out


def _from_json(body: dict[str, Any]) -> Manifest:
    storage = body.get("storageDetail")
    if storage is not None:
        kind = storage.get("type") if isinstance(storage, dict) else None
        _check_storage(kind, "storageDetail.type")
    raw = body.get("input")
    if not isinstance(raw, list):
        raise _bad("input must be an array of {type, url}", "input")
    inputs = []
    for i, item in enumerate(raw):
        item = item if isinstance(item, dict) else {}
        inputs.append(
            (item.get("type"), item.get("url"), f"input[{i}]|input[{i}].type|input[{i}].url")
        )
    return _manifest(body.get("inputFormat"), body.get("inputSource"), inputs, "input")


def _check_storage(kind: Any, where: str) -> None:
    if kind is not None and kind not in _STORAGE_TYPES:
        raise _bad(
            f"storageDetail type {kind!r} is not supported (only https and file)",
            where,
            "not-supported",
        )


def _manifest(fmt: Any, source: Any, raw: list[tuple[Any, Any, str]], where: str) -> Manifest:
    if fmt is None:
        raise _bad("inputFormat is required (application/fhir+ndjson)", "inputFormat", "required")
    if fmt != NDJSON:
        raise _bad(f"inputFormat {fmt!r} is not supported (only {NDJSON})", "inputFormat",
                   "not-supported")  # fmt: skip
    if source is None:
        raise _bad("inputSource is required (a URI naming where the data comes from)",
                   "inputSource", "required")  # fmt: skip
    source = _string(source, "inputSource")
    if not raw:
        raise _bad("At least one input is required", where, "required")
    if len(raw) > MAX_INPUTS:
        raise _bad(f"At most {MAX_INPUTS} inputs per $import", where, "too-costly")
    inputs = []
    for t, url, wheres in raw:
        _, t_where, u_where = wheres.split("|")
        if not isinstance(t, str) or not is_resource_type(t):
            raise _bad(f"input type {t!r} is not a FHIR resource type", t_where)
        inputs.append(ImportInput(t, _string(url, u_where), u_where))
    return Manifest(NDJSON, source, tuple(inputs))


# --- where inputs may come from ----------------------------------------------------------


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def check_sources(manifest: Manifest, import_dirs: str, url_allow: str) -> Manifest:
    """The manifest with every input checked against the settings (file inputs
    resolved to their path), or 400 naming the first refused input's url."""
    dirs = [Path(os.path.realpath(d)) for d in _split_list(import_dirs)]
    allowed = _split_list(url_allow)
    checked = []
    for item in manifest.inputs:
        scheme = urlsplit(item.url).scheme.lower()
        if scheme == "file":
            checked.append(_file_input(item, dirs))
        elif scheme in ("http", "https"):
            if not any(_under(item.url, prefix) for prefix in allowed):
                raise _bad(
                    f"{item.url} is not under a URL this server may fetch (FHIR_IMPORT_URL_ALLOW)",
                    item.where,
                    "security",
                )
            checked.append(item)
        else:
            raise _bad(
                f"{item.url}: only file:// and http(s):// inputs are supported",
                item.where,
                "not-supported",
            )
    return Manifest(manifest.input_format, manifest.input_source, tuple(checked))


def _file_input(item: ImportInput, dirs: list[Path]) -> ImportInput:
    parts = urlsplit(item.url)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise _bad(f"{item.url} is not a local file URL (file:///path)", item.where)
    if not dirs:
        raise _bad("file:// inputs are not allowed on this server (FHIR_IMPORT_DIRS is empty)",
                   item.where, "security")  # fmt: skip
    path = Path(os.path.realpath(unquote(parts.path)))
    if not any(path.is_relative_to(d) for d in dirs):
        raise _bad(f"{item.url} is outside the directories $import may read (FHIR_IMPORT_DIRS)",
                   item.where, "security")  # fmt: skip
    if not path.is_file():
        raise _bad(f"{item.url} is not a readable file", item.where, "not-found")
    return ImportInput(item.type, item.url, item.where, str(path))


def _under(url: str, prefix: str) -> bool:
    """Is ``url`` below the allow-listed ``prefix`` (same scheme, host and port; the
    path equal or below it on a ``/`` boundary)? Userinfo and dot segments are refused:
    they are how an allow-listed prefix is made to mean another place."""
    u, p = urlsplit(url), urlsplit(prefix)
    if u.username is not None or u.password is not None:
        return False
    if u.scheme.lower() != p.scheme.lower() or (u.hostname or "") != (p.hostname or ""):
        return False
    try:
        u_port = u.port or _DEFAULT_PORTS.get(u.scheme.lower())
        p_port = p.port or _DEFAULT_PORTS.get(p.scheme.lower())
    except ValueError:
        return False
    if u_port != p_port:
        return False
    segments = unquote(u.path).split("/")
    if ".." in segments or "." in segments:
        return False
    base = p.path or "/"
    path = u.path or "/"
    return path == base or path.startswith(base if base.endswith("/") else base + "/")
