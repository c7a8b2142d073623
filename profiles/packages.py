"""Implementation-guide packages (``fhir-server profiles install PATH.tgz``, issue #14).

A package is the FHIR npm layout (https://confluence.hl7.org/display/FHIR/NPM+Package+Specification):
a gzip tar holding ``package/package.json`` (``name``, ``version``, ``dependencies``) and
its resources as ``package/*.json`` (``package/.index.json`` optional; sub-folders such
as ``package/example/`` are not conformance content and are not read).

Installing stores its conformance resources (``CONFORMANCE``) as ordinary resources,
through the resource service: validated like any write, versioned, searchable by url.
Idempotent by url + version: a resource whose canonical is already stored is left
alone, so installing a package twice writes nothing. It keeps the package's id when
free; when a different resource holds that id it gets a new one. Installed packages
are recorded (``name#version``) in the ``PACKAGES`` collection; a package whose
dependencies (but ``hl7.fhir.r4.core``, built in) are not installed is refused before
anything is written, as is one holding an invalid resource.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fhir_server.outcome import FhirError
from fhir_server.service.resources import ResourceService
from fhir_server.service.shipped import canonical_key, stored_canonicals

PACKAGES = "profile_packages"
BUILT_IN = frozenset({"hl7.fhir.r4.core"})
CONFORMANCE = frozenset(
    {
        "StructureDefinition",
        "ValueSet",
        "CodeSystem",
        "ConceptMap",
        "NamingSystem",
        "SearchParameter",
        "OperationDefinition",
        "CompartmentDefinition",
        "CapabilityStatement",
        "StructureMap",
        "ImplementationGuide",
    }
)
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # one file of the package (a guard against bombs)


class PackageError(Exception):
    """The package cannot be installed; the message is one line for the user."""


@dataclass
class Package:
    name: str
    version: str
    dependencies: dict[str, str]
    resources: list[tuple[str, dict[str, Any]]]  # (file name, resource)
    skipped: int = 0  # files that are not conformance resources

    @property
    def key(self) -> str:
        return f"{self.name}#{self.version}"


@dataclass
class InstallReport:
    package: str
    written: dict[str, int] = field(default_factory=dict)
    present: int = 0

    def line(self) -> str:
        parts = ", ".join(f"{n} {t}" for t, n in sorted(self.written.items()) if n)
        return (
            f"installed {self.package}: {parts or 'nothing new'} ({self.present} already present)"
        )


def read_package(path: Path) -> Package:
    """The package at ``path`` (PackageError with a one-line reason if unreadable)."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                entry = member.name.removeprefix("./")
                folder, _, base = entry.rpartition("/")
                if folder != "package" or not member.isfile() or not base.endswith(".json"):
                    continue
                if member.size > MAX_MEMBER_BYTES:
                    raise PackageError(f"{path}: {entry} is larger than {MAX_MEMBER_BYTES} bytes")
                handle = archive.extractfile(member)
                if handle is not None:
                    files[base] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PackageError(
            f"{path}: not a readable gzip-compressed tar archive (a FHIR npm package .tgz): {exc}"
        ) from None
    if "package.json" not in files:
        raise PackageError(f"{path}: no package/package.json (not a FHIR npm package)")
    manifest = _json(path, "package.json", files.pop("package.json"))
    files.pop(".index.json", None)
    name, version = manifest.get("name"), manifest.get("version")
    if not isinstance(name, str) or not name or not isinstance(version, str) or not version:
        raise PackageError(f"{path}: package/package.json needs a name and a version")
    versions = manifest.get("fhirVersions") or manifest.get("fhir-version-list") or []
    if (
        isinstance(versions, list)
        and versions
        and not any(isinstance(v, str) and v.startswith("4.0") for v in versions)
    ):
        shown = ", ".join(str(v) for v in versions)
        raise PackageError(
            f"{path}: {name}#{version} is for FHIR {shown}; this server is FHIR R4 (4.0.1)"
        )
    deps = manifest.get("dependencies") or {}
    if not isinstance(deps, dict) or not all(isinstance(v, str) for v in deps.values()):
        raise PackageError(f"{path}: package/package.json: dependencies must map names to versions")
    package = Package(name, version, dict(deps), [])
    for base, data in sorted(files.items()):
        resource = _json(path, base, data)
        if resource.get("resourceType") in CONFORMANCE:
            package.resources.append((base, resource))
        else:
            package.skipped += 1
    return package


def _json(path: Path, name: str, data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{path}: package/{name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise PackageError(f"{path}: package/{name} is not a JSON object")
    return value


def _satisfies(wanted: str, installed: list[str]) -> bool:
    """An installed version meets the dependency: the same, or any for a wildcard
    (``1.0.x``, ``*``, ``current``, ``latest``)."""
    if wanted in installed:
        return True
    if wanted in ("*", "current", "latest", "dev"):
        return bool(installed)
    if wanted.endswith((".x", ".*")):
        stem = wanted[:-1]
        return any(v.startswith(stem) for v in installed)
    return False


async def missing_dependencies(service: ResourceService, package: Package) -> list[str]:
    """``name#version`` of each dependency that is not installed (built-ins aside)."""
    out = []
    for name, version in package.dependencies.items():
        if name in BUILT_IN:
            continue
        docs = service.storage.db[PACKAGES].find({"name": name}, {"version": 1})
        installed = [d["version"] async for d in docs]
        if not _satisfies(version, installed):
            out.append(f"{name}#{version}")
    return out


async def install_package(service: ResourceService, package: Package) -> InstallReport:
    """Install ``package`` (PackageError, nothing written, when it cannot be)."""
    missing = await missing_dependencies(service, package)
    if missing:
        raise PackageError(
            f"{package.key} needs {', '.join(missing)}, which is not installed: install it first"
        )
    report = InstallReport(package.key)
    # every resource validated before any is written: all or nothing
    checked: list[tuple[str, dict[str, Any]]] = []
    for base, resource in package.resources:
        rtype = resource["resourceType"]
        try:
            checked.append((base, await service.check(rtype, resource)))
        except FhirError as exc:
            first = exc.issues[0] if exc.issues else None
            why = first.diagnostics if first is not None else f"HTTP {exc.status}"
            where = f" at {first.expression[0]}" if first is not None and first.expression else ""
            raise PackageError(
                f"{package.key}: package/{base} is not a valid {rtype}{where}: {why}"
            ) from None
    known: dict[str, tuple[set[str], set[str]]] = {}
    installed: list[str] = []
    for _, resource in checked:
        rtype = resource["resourceType"]
        if rtype not in known:
            await service.storage.ensure_type(rtype)
            known[rtype] = await stored_canonicals(service.storage, rtype)
        keys, ids = known[rtype]
        url = resource.get("url")
        key = canonical_key(url, resource.get("version"))
        if isinstance(url, str) and key in keys:
            report.present += 1
            continue
        rid = resource.get("id")
        if isinstance(rid, str) and (rid not in ids or not isinstance(url, str)):
            outcome = await service.update(rtype, rid, resource, None)
        else:
            outcome = await service.create(rtype, resource)
        keys.add(key)
        ids.add(outcome.stored.id)
        installed.append(f"{rtype}/{outcome.stored.id}")
        report.written[rtype] = report.written.get(rtype, 0) + 1
    await service.storage.db[PACKAGES].update_one(
        {"_id": package.key},
        {
            "$set": {"name": package.name, "version": package.version},
            "$setOnInsert": {
                "dependencies": package.dependencies,
                "installed": datetime.now(UTC),
            },
            "$addToSet": {"resources": {"$each": installed}},
        },
        upsert=True,
    )
    return report


def describe(package: Package) -> str:
    """The progress line before a package is installed."""
    return f"installing {package.key} ({len(package.resources)} conformance resources)"
