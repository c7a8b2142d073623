"""What the command line checks and says before it starts anything: that the MongoDB
it was given answers, and how to run the other commands on the same database.

A wrong ``--mongo-url`` used to surface as a 30-line PyMongo traceback 30 s later, and
the start-up hints named ``fhir-server``, which is not on PATH inside a venv that was
never activated (issue 18).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MONGO_CHECK_SECONDS = 5.0  # first contact with a MongoDB that should be up


def redacted(url: str) -> str:
    """``url`` with its password, if any, replaced by ``****`` (for printing)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:****@{host}"))


def mongo_problem(url: str, timeout: float = MONGO_CHECK_SECONDS) -> str | None:
    """One line saying why ``url`` is no usable MongoDB (None: it answered a ping)."""
    from pymongo import MongoClient, uri_parser
    from pymongo.errors import ConfigurationError, InvalidURI, PyMongoError

    shown = redacted(url)
    ms = int(timeout * 1000)
    try:
        uri_parser.parse_uri(url, connect_timeout=timeout)  # a bare host name is no URL
        client: MongoClient[dict[str, Any]] = MongoClient(
            url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, connect=False
        )
    except (InvalidURI, ConfigurationError, ValueError, TypeError) as exc:
        return f"--mongo-url / FHIR_MONGO_URL {shown!r} is not a MongoDB URL: {_first_line(exc)}"
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        return (
            f"--mongo-url / FHIR_MONGO_URL {shown!r}: no MongoDB answered within "
            f"{timeout:g} s ({_first_line(exc)})"
        )
    finally:
        client.close()
    return None


def _first_line(exc: BaseException) -> str:
    """The cause in an exception's message, without PyMongo's topology description."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for cut in (" (configured timeouts", ", Timeout:", ", Topology Description"):
        text = text.split(cut, 1)[0]
    return text.strip()


def command_prefix() -> str:
    """How to run ``fhir-server`` as the user can type it: ``fhir-server`` when that is
    the one on PATH, else the script beside this Python (``.venv/bin/fhir-server``), else
    ``python -m fhir_server``."""
    bin_dir = Path(sys.executable).parent
    script = bin_dir / "fhir-server"
    if script.is_file() and os.access(script, os.X_OK):
        on_path = shutil.which("fhir-server")
        if on_path is not None and _same_file(on_path, script):
            return "fhir-server"
        return shlex.quote(_shown_path(script))
    return f"{shlex.quote(_shown_path(Path(sys.executable)))} -m fhir_server"


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter, and
    still right where the user typed the command), else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def start_hint(url: str, database: str, *, embedded: bool, user_example: bool = True) -> str:
    """Printed on every start: the MongoDB in use and commands that work on it, as typed
    (a password in the URL is shown as ``****``). ``user_example`` False leaves out the
    create-user line when the first-start hint prints it anyway."""
    cli = command_prefix()
    where = "the embedded mongod" if embedded else "--mongo-url"
    db = f"--mongo-url {shlex.quote(redacted(url))} --database {shlex.quote(database)}"
    lines = [
        f"MongoDB ({where}): {redacted(url)} database {database}",
        f"Other commands on this database ({cli} --help lists them), e.g.:",
        f"  {cli} reindex {db}",
    ]
    if user_example:
        lines.append(
            f"  {cli} auth create-user {db} --username admin --password '<a strong password>'"
            " --role admin"
        )
    return "\n".join(lines)
