"""The legacy schemas as DDL files, and their translation for PostgreSQL.

The files are written in MySQL's dialect (the legacy systems ran on MySQL/MariaDB);
``statements(name, "postgresql")`` rewrites the few MySQL-only constructs used, so the
seed-004 clinic that ran on PostgreSQL gets the same tables.
"""

from __future__ import annotations

import re
from importlib import resources

SCHEMAS = ("historial_medico", "clinica")


def ddl_text(name: str) -> str:
    if name not in SCHEMAS:
        raise ValueError(f"unknown schema {name!r} (known: {', '.join(SCHEMAS)})")
    return resources.files(__package__).joinpath(f"{name}.sql").read_text("utf-8")


def _to_postgresql(statement: str) -> str:
    s = statement.replace("`", '"')
    s = re.sub(r"INT NOT NULL AUTO_INCREMENT PRIMARY KEY", "SERIAL PRIMARY KEY", s)
    s = re.sub(r"INT NOT NULL AUTO_INCREMENT", "SERIAL", s)
    s = s.replace("DATETIME", "TIMESTAMP").replace("TINYINT(1)", "SMALLINT")
    s = re.sub(r"\)\s*ENGINE=\w+[^;]*$", ")", s)
    s = re.sub(r",\s*(UNIQUE )?KEY \"\w+\" \([^)]*\)", "", s)
    return s


def statements(name: str, dialect: str = "mysql") -> list[str]:
    """The CREATE TABLE statements of schema ``name`` for ``dialect``."""
    lines = [ln for ln in ddl_text(name).splitlines() if not ln.lstrip().startswith("--")]
    parts = [p.strip() for p in "\n".join(lines).split(";\n")]
    out = [p.rstrip(";").strip() for p in parts if p.strip()]
    if dialect == "postgresql":
        return [_to_postgresql(s) for s in out]
    return out
