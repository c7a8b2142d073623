"""The container image ships every package the server is built from: the Dockerfile
copies each top-level package that pyproject.toml installs (the server imports
terminology/ and profiles/ at start-up, so a missing COPY is an image that cannot start)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_copies_every_installed_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns}
    copied = set(re.findall(r"^COPY (\w+) \./\1\s*$", (ROOT / "Dockerfile").read_text(), re.M))
    assert packages - copied == set()
    for package in packages:
        assert (ROOT / package / "__init__.py").is_file()


def _configuration_table() -> set[str]:
    """Environment variables named in the first column of the README's settings table."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `FHIR_"):
            names |= set(re.findall(r"`(FHIR_[A-Z0-9_]+)`", line.split("|")[1]))
    return names


def test_readme_documents_every_setting_and_no_other() -> None:
    """Every Settings field is a row of the README's configuration table (a new user
    configures the server from there), and every row names a real setting."""
    from fhir_server.config import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    settings = {(prefix + name).upper() for name in Settings.model_fields}
    documented = _configuration_table()
    assert settings - documented == set(), "settings missing from README's table"
    assert documented - settings == set(), "README's table names unknown settings"
