"""What an import remembers between runs, in a small JSON file per (source, mapping):

- ``watermarks``: per resource mapping, the newest ``updated`` value imported, for
  ``--incremental`` runs;
- ``absent``: per resource mapping, legacy keys that produced no resource (rejected,
  failed or skipped by ``when``), so that later runs drop references to them instead of
  sending conditional references that cannot resolve;
- ``failed``: per resource mapping, the keys of rows that failed and when each was last
  updated, retried by every later run until they go in (importers/retry.py);
- ``run``: the run in progress: mappings finished and, for the current one, the last
  key of the last batch committed with every batch before it; a run that crashed is
  resumed from there.

Written atomically (temporary file + rename) after every committed batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url


def state_path(state_dir: Path, source_url: str, mapping_path: str) -> Path:
    """One file per source database and mapping (the password is not part of the name)."""
    url = make_url(source_url).render_as_string(hide_password=True)
    digest = hashlib.sha256(f"{url}\n{Path(mapping_path).resolve()}".encode()).hexdigest()[:16]
    return state_dir / f"import-state-{digest}.json"


@dataclass
class State:
    path: Path
    watermarks: dict[str, str] = field(default_factory=dict)
    absent: dict[str, set[str]] = field(default_factory=dict)
    run: dict[str, Any] | None = None
    failed: dict[str, dict[str, str | None]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> State:
        if not path.exists():
            return cls(path)
        doc = json.loads(path.read_text("utf-8"))
        return cls(
            path,
            dict(doc.get("watermarks", {})),
            {k: set(v) for k, v in doc.get("absent", {}).items()},
            doc.get("run"),
            {k: dict(v) for k, v in doc.get("failed", {}).items()},
        )

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "watermarks": self.watermarks,
            "absent": {k: sorted(v) for k, v in self.absent.items() if v},
            "run": self.run,
            # (copies: the reader thread may be adding to them)
            "failed": {k: dict(v) for k, v in self.failed.items() if v},
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, default=str), "utf-8")
        os.replace(tmp, self.path)

    def absent_keys(self, mapping: str) -> set[str]:
        return self.absent.setdefault(mapping, set())
