"""``fhir-server profiles install PATH.tgz`` (issue #14, profiles/packages.py), through the
real CLI against the test's MongoDB, then over HTTP.

The packages are built here, in the FHIR npm layout (package/package.json with name,
version and dependencies; resources as package/*.json): never real IG content.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from fhir_helpers import assert_outcome, patient, post
from pymongo import MongoClient

from fhir_server.cli import main
from fhir_server.config import Settings
from profiles.packages import PACKAGES

BASE = "http://ig.example/fhir"


def structure_definition(name: str, **extra: Any) -> dict[str, Any]:
    """A differential Patient profile: an identifier is required."""
    return {
        "resourceType": "StructureDefinition",
        "id": name,
        "url": f"{BASE}/StructureDefinition/{name}",
        "version": "1.0.0",
        "name": name.replace("-", ""),
        "status": "active",
        "kind": "resource",
        "abstract": False,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {
            "element": [{"id": "Patient.identifier", "path": "Patient.identifier", "min": 1}]
        },
        **extra,
    }


CODE_SYSTEM = {
    "resourceType": "CodeSystem",
    "id": "ig-colors",
    "url": f"{BASE}/CodeSystem/colors",
    "version": "1.0.0",
    "status": "active",
    "content": "complete",
    "concept": [{"code": "red"}, {"code": "blue"}],
}
VALUE_SET = {
    "resourceType": "ValueSet",
    "id": "ig-colors",
    "url": f"{BASE}/ValueSet/colors",
    "version": "1.0.0",
    "status": "active",
    "compose": {"include": [{"system": f"{BASE}/CodeSystem/colors"}]},
}


def make_package(
    folder: Path,
    name: str,
    version: str = "1.0.0",
    resources: list[dict[str, Any]] = (),  # type: ignore[assignment]
    dependencies: dict[str, str] | None = None,
    extra: dict[str, bytes] | None = None,
    manifest: bool = True,
) -> Path:
    """A .tgz in the FHIR npm package layout."""
    files: dict[str, bytes] = {}
    if manifest:
        meta = {"name": name, "version": version, "dependencies": dependencies or {}}
        files["package/package.json"] = json.dumps(meta).encode()
    index = []
    for r in resources:
        filename = f"{r['resourceType']}-{r['id']}.json"
        files[f"package/{filename}"] = json.dumps(r).encode()
        index.append({"filename": filename, "resourceType": r["resourceType"], "id": r["id"]})
    files["package/.index.json"] = json.dumps({"index-version": 1, "files": index}).encode()
    files.update(extra or {})
    path = folder / f"{name}-{version}.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def install(settings: Settings, *paths: Path, env: bool = False) -> Result:
    """`fhir-server profiles install` against the test's database (flags, or the
    FHIR_MONGO_URL / FHIR_DATABASE environment as a deployment sets them)."""
    args = ["profiles", "install", *map(str, paths)]
    if env:
        environ = {"FHIR_MONGO_URL": settings.mongo_url or "", "FHIR_DATABASE": settings.database}
        return CliRunner().invoke(main, args, env=environ)
    flags = ["--mongo-url", settings.mongo_url or "", "--database", settings.database]
    return CliRunner().invoke(main, [*args, *flags])


def count(client: TestClient, rtype: str, **params: str) -> int:
    r = client.get(f"/fhir/{rtype}", params={**params, "_summary": "count"})
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def packages(settings: Settings) -> list[str]:
    with MongoClient(settings.mongo_url) as mc:
        return sorted(d["_id"] for d in mc[settings.database][PACKAGES].find())


def test_install_stores_conformance_resources_once(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    sd = structure_definition("ig-patient")
    example = patient(id="example")  # an example at the top level: not conformance content
    path = make_package(
        tmp_path,
        "example.ig",
        resources=[sd, CODE_SYSTEM, VALUE_SET, example],
        extra={"package/example/Patient-x.json": json.dumps(example).encode()},
    )
    result = install(settings, path, env=True)
    assert result.exit_code == 0, result.output
    assert "installing example.ig#1.0.0 (3 conformance resources)" in result.stderr
    assert result.stdout.strip() == (
        "installed example.ig#1.0.0: 1 CodeSystem, 1 StructureDefinition, 1 ValueSet "
        "(0 already present)"
    )
    assert packages(settings) == ["example.ig#1.0.0"]
    # stored resources, under their package ids, searchable by url
    r = client.get("/fhir/StructureDefinition/ig-patient")
    assert r.status_code == 200 and r.json()["url"] == sd["url"]
    assert count(client, "ValueSet", url=VALUE_SET["url"]) == 1
    assert count(client, "CodeSystem", url=CODE_SYSTEM["url"]) == 1
    assert count(client, "Patient") == 0
    # the installed profile is used at once
    bad = patient(meta={"profile": [sd["url"]]})
    assert_outcome(post(client, bad), 422)
    good = {**bad, "identifier": [{"system": "urn:x", "value": "1"}]}
    assert post(client, good).status_code == 201
    # installing again changes nothing: no new version of anything
    again = install(settings, path)
    assert again.exit_code == 0, again.output
    assert "nothing new (3 already present)" in again.stdout
    history = client.get("/fhir/StructureDefinition/ig-patient/_history").json()
    assert history["total"] == 1
    assert packages(settings) == ["example.ig#1.0.0"]


def test_dependencies_must_be_installed_first(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    base = make_package(tmp_path, "base.ig", "2.0.0", [structure_definition("base-patient")])
    deps = {"hl7.fhir.r4.core": "4.0.1", "base.ig": "2.0.0"}
    sd = structure_definition("child-patient")
    child = make_package(tmp_path, "child.ig", "1.0.0", [sd], deps)
    refused = install(settings, child)
    assert refused.exit_code == 1
    lines = refused.stderr.strip().splitlines()
    assert lines[-1] == (
        "error: child.ig#1.0.0 needs base.ig#2.0.0, which is not installed: install it first"
    )
    assert "Traceback" not in refused.output
    assert count(client, "StructureDefinition", url=sd["url"]) == 0
    assert packages(settings) == []
    # a wildcard dependency is met by any matching version
    loose = make_package(tmp_path, "loose.ig", "1.0.0", [], {"base.ig": "2.0.x"})
    # in order, in one command: the dependency first
    ok = install(settings, base, child, loose)
    assert ok.exit_code == 0, ok.output
    assert packages(settings) == ["base.ig#2.0.0", "child.ig#1.0.0", "loose.ig#1.0.0"]
    assert count(client, "StructureDefinition", url=sd["url"]) == 1


def test_a_taken_id_gets_a_new_one(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    mine = {**structure_definition("ig-patient"), "url": "http://mine.example/sd/p"}
    assert client.put("/fhir/StructureDefinition/ig-patient", json=mine).status_code == 201
    path = make_package(tmp_path, "example.ig", resources=[structure_definition("ig-patient")])
    result = install(settings, path)
    assert result.exit_code == 0, result.output
    assert client.get("/fhir/StructureDefinition/ig-patient").json()["url"] == mine["url"]
    url = f"{BASE}/StructureDefinition/ig-patient"
    assert count(client, "StructureDefinition", url=url) == 1


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda d: _write(d / "x.tgz", b"not a tar at all"), "not a readable gzip-compressed tar"),
        (
            lambda d: make_package(d, "p", resources=[CODE_SYSTEM], manifest=False),
            "no package/package.json",
        ),
        (
            lambda d: make_package(d, "p", extra={"package/CodeSystem-b.json": b"{nope"}),
            "package/CodeSystem-b.json is not valid JSON",
        ),
        (
            lambda d: make_package(d, "p", extra={"package/package.json": b"{}"}),
            "package.json needs a name and a version",
        ),
        (
            lambda d: make_package(
                d,
                "p",
                extra={
                    "package/package.json": json.dumps(
                        {"name": "r5.ig", "version": "1.0.0", "fhirVersions": ["5.0.0"]}
                    ).encode()
                },
            ),
            "r5.ig#1.0.0 is for FHIR 5.0.0; this server is FHIR R4 (4.0.1)",
        ),
    ],
)
def test_unreadable_packages_are_refused_in_one_line(
    settings: Settings, tmp_path: Path, build: Any, message: str
) -> None:
    result = install(settings, build(tmp_path))
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_an_invalid_resource_refuses_the_whole_package(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    bad = {**VALUE_SET, "status": "bogus"}
    path = make_package(tmp_path, "bad.ig", resources=[CODE_SYSTEM, bad])
    result = install(settings, path)
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: bad.ig#1.0.0: package/ValueSet-ig-colors.json is not a valid")
    assert "ValueSet.status" in line
    assert count(client, "CodeSystem", url=CODE_SYSTEM["url"]) == 0
    assert packages(settings) == []


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_the_installed_command(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    """``python -m fhir_server profiles install`` as a process, configured the way a
    deployment is (FHIR_MONGO_URL, FHIR_DATABASE)."""
    path = make_package(tmp_path, "proc.ig", resources=[CODE_SYSTEM])
    environ = {
        **os.environ,
        "FHIR_MONGO_URL": settings.mongo_url or "",
        "FHIR_DATABASE": settings.database,
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    command = [sys.executable, "-m", "fhir_server", "profiles", "install", str(path)]
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "installed proc.ig#1.0.0: 1 CodeSystem (0 already present)"
    assert count(client, "CodeSystem", url=CODE_SYSTEM["url"]) == 1
    missing = subprocess.run(
        [*command[:-1], str(tmp_path / "absent.tgz")],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
