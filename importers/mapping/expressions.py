"""Column expressions of a mapping: a small, safe subset of Python expressions.

An expression reads the row's columns by name (``ID_Médico`` is a valid name: Python
identifiers may hold accents; ``col("Nombre Completo")`` reads any other column), and
calls the functions below. Allowed syntax: names, constants, calls of these functions,
``and``/``or``/``not``, comparisons, ``x if c else y``, ``+ - * /`` and list/tuple
literals; nothing else (no attributes, subscripts, lambdas or comprehensions), checked
when the mapping is loaded. Functions that meet dirty data record an issue naming the
column (``warning``: the value is dropped or kept as is and the row goes in; ``error``:
the row is rejected) instead of raising.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from importers import cedula as ced
from importers.mapping.codemaps import code_maps, fold
from importers.text import clean, repair_mojibake


class MappingError(ValueError):
    """A mapping that cannot work (bad YAML, unknown function, unknown column ...)."""


@dataclass(frozen=True, slots=True)
class RowIssue:
    """Something wrong with one source row, for the report."""

    severity: str  # "error" (row rejected) or "warning" (row imported)
    column: str
    reason: str


class Reject(Exception):
    """Raised by a function when the row must not be imported."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column, self.reason = column, reason


_ALLOWED = (
    ast.Expression, ast.Name, ast.Load, ast.Constant, ast.Call, ast.keyword, ast.BoolOp,
    ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.Compare, ast.Eq, ast.NotEq, ast.Lt,
    ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.In, ast.NotIn, ast.IfExp, ast.BinOp,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.List, ast.Tuple,
)  # fmt: skip
# Functions told which column their value came from, for the report.
_COLUMN_AWARE = frozenset(
    {"date", "datetime", "cedula", "ruc", "code", "ref", "number", "integer", "email", "required"}
    | {"text", "words", "lower", "upper"}
)


FUNCTION_PREFIX = "__fn_"


@dataclass(frozen=True, slots=True)
class Read:
    """A column an expression passes straight to a checking function: what
    ``import profile`` examines before anything is imported."""

    check: str  # "code", "ref", "date", "datetime", "time", "cedula"
    column: str
    arg: str | None = None  # the code map (code) or resource mapping (ref) named


@dataclass(frozen=True, slots=True)
class Expression:
    """One compiled expression and what it reads."""

    source: str
    code: Any
    names: frozenset[str]
    refs: frozenset[str]  # resource mappings named by ref("...", ...)
    reads: tuple[Read, ...] = ()


def _reads_of(call: ast.Call) -> list[Read]:
    """The plain columns of one call that a checking function reads."""
    name = call.func.id  # type: ignore[attr-defined]
    args = call.args

    def column(i: int) -> str | None:
        arg = args[i] if len(args) > i else None
        return arg.id if isinstance(arg, ast.Name) else None

    def constant(i: int) -> str | None:
        arg = args[i] if len(args) > i else None
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
        return None

    found: list[tuple[str, str | None, str | None]] = []
    if name in ("code", "ref"):
        found.append((name, column(1), constant(0)))
    elif name in ("date", "cedula", "ruc"):
        found.append(("cedula" if name == "ruc" else name, column(0), None))
    elif name == "datetime":  # datetime(timestamp) or datetime(date, time, ...)
        found += [("datetime", column(0), None), ("time", column(1), None)]
    return [Read(check, col, arg) for check, col, arg in found if col is not None]


def _column_of(call: ast.Call) -> str:
    args = list(call.args[1:]) if call.func.id in ("code", "ref") else list(call.args)  # type: ignore[attr-defined]
    for arg in args:
        if not isinstance(arg, ast.Constant):
            if isinstance(arg, ast.Call) and arg.args:
                return _column_of(arg) if isinstance(arg.func, ast.Name) else ast.unparse(arg)
            return ast.unparse(arg)
    return ""


def compile_expression(source: str, functions: frozenset[str], where: str) -> Expression:
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise MappingError(f"{where}: not an expression: {source!r} ({exc.msg})") from None
    refs: set[str] = set()
    called: set[int] = set()
    reads: list[Read] = []
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise MappingError(f"{where}: {type(node).__name__} is not allowed in {source!r}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in functions:
                raise MappingError(f"{where}: unknown function in {source!r}")
            name = node.func.id
            if name == "ref":
                first = node.args[0] if node.args else None
                if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                    raise MappingError(f"{where}: ref() needs a resource mapping name first")
                refs.add(first.value)
            if name in _COLUMN_AWARE and not any(k.arg == "_col" for k in node.keywords):
                node.keywords.append(ast.keyword("_col", ast.Constant(_column_of(node))))
            called.add(id(node.func))
            reads += _reads_of(node)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called}
    # Functions live under a prefix so that a column named like one (``cedula``) is
    # still the column: ``cedula(cedula)`` reads column cedula and checks it.
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            node.func.id = FUNCTION_PREFIX + node.func.id
    ast.fix_missing_locations(tree)
    code = compile(tree, f"<{where}>", "eval")
    return Expression(source, code, frozenset(names), frozenset(refs), tuple(reads))


RefTarget = Callable[[str, Any], str | None]


class Functions:
    """The functions available to expressions, bound to one mapping's settings; the
    issues of the row being mapped collect in ``issues``."""

    def __init__(
        self, tz: str, codes: dict[str, dict[str, Any]], resolve_ref: RefTarget | None = None
    ) -> None:
        self.zone = ZoneInfo(tz)
        self.codes = code_maps(codes)
        self.resolve_ref = resolve_ref
        self.issues: list[RowIssue] = []
        self.row: dict[str, Any] = {}

    def env(self) -> dict[str, Any]:
        """The globals expressions are evaluated with (no builtins)."""
        env: dict[str, Any] = {FUNCTION_PREFIX + k: v for k, v in self.table().items()}
        env["__builtins__"] = {}
        return env

    def table(self) -> dict[str, Any]:
        return {
            name: getattr(self, f"f_{name}")
            for name in (
                "text", "words", "lower", "upper", "concat", "join", "coalesce", "date",
                "datetime", "code", "ref", "cedula", "ruc", "number", "integer", "boolean",
                "email", "phone", "col", "required", "str", "digits", "known",
            )
        }  # fmt: skip

    def warn(self, column: str, reason: str) -> None:
        self.issues.append(RowIssue("warning", column, reason))

    # --- text --------------------------------------------------------------------------
    def f_str(self, value: Any) -> str | None:
        return None if value is None else str(value)

    def f_text(self, value: Any, _col: str = "") -> str | None:
        if value is None:
            return None
        raw = value if isinstance(value, str) else str(value)
        fixed = repair_mojibake(raw)
        if fixed != raw:
            self.warn(_col, f"mojibake repaired: {raw.strip()!r} -> {fixed.strip()!r}")
        return clean(fixed)

    def f_words(self, value: Any, _col: str = "") -> list[str] | None:
        text = self.f_text(value, _col)
        return text.split(" ") if text else None

    def f_lower(self, value: Any, _col: str = "") -> str | None:
        text = self.f_text(value, _col)
        return text.lower() if text else None

    def f_upper(self, value: Any, _col: str = "") -> str | None:
        text = self.f_text(value, _col)
        return text.upper() if text else None

    def f_concat(self, *values: Any) -> str | None:
        """The values as text, one after the other; None if any is None (as SQL's
        CONCAT), so ``concat('cada ', horas, ' horas')`` disappears with its column."""
        if any(v is None for v in values):
            return None
        return clean("".join(repair_mojibake(str(v)) for v in values))

    def f_join(self, sep: str, *values: Any) -> str | None:
        parts = [p for p in (self.f_text(v) for v in values) if p]
        return sep.join(parts) or None

    def f_coalesce(self, *values: Any) -> Any:
        return next((v for v in values if v is not None and v != ""), None)

    def f_col(self, name: str) -> Any:
        if name not in self.row:
            raise MappingError(f"unknown column {name!r}")
        return self.row[name]

    def f_required(self, value: Any, reason: str = "a value is required", _col: str = "") -> Any:
        if value is None or value == "" or value == []:
            raise Reject(_col, reason)
        return value

    # --- dates -------------------------------------------------------------------------
    def _as_date(self, value: Any, column: str) -> date | None:
        if value is None or value == "":
            return None
        if isinstance(value, datetime):
            return value.date()
        if isinstance(value, date):
            return value
        text = str(value).strip()
        if text.startswith("0000-00-00") or text in ("0000-00-00", "00/00/0000"):
            self.warn(column, f"zero date {text!r} imported as no value")
            return None
        for fmt in ("%Y-%m-%d", "%d/%m/%Y", "%Y-%m-%d %H:%M:%S"):
            try:
                return datetime.strptime(text, fmt).date()
            except ValueError:
                continue
        self.warn(column, f"unreadable date {text!r} imported as no value")
        return None

    def f_date(self, value: Any, _col: str = "") -> str | None:
        d = self._as_date(value, _col)
        return d.isoformat() if d else None

    def _as_time(self, value: Any, column: str) -> time | None:
        if value is None:
            return None
        if isinstance(value, time):
            return value
        if isinstance(value, timedelta):  # MySQL TIME columns arrive as timedelta
            seconds = int(value.total_seconds())
            if not 0 <= seconds < 86400:
                self.warn(column, f"time {value} out of range imported as no value")
                return None
            return time(seconds // 3600, seconds % 3600 // 60, seconds % 60)
        try:
            return time.fromisoformat(str(value).strip())
        except ValueError:
            self.warn(column, f"unreadable time {value!r} imported as no value")
            return None

    def f_datetime(
        self, value: Any, at: Any = None, plus_minutes: Any = 0, _col: str = ""
    ) -> str | None:
        """A local legacy timestamp (or a DATE plus a TIME) with the zone's offset."""
        if isinstance(value, datetime):
            moment = value
        else:
            day = self._as_date(value, _col)
            if day is None:
                return None
            clock = self._as_time(at, _col) if at is not None else time(0)
            if clock is None:
                return None
            moment = datetime.combine(day, clock)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self.zone)
        if plus_minutes:
            moment = moment + timedelta(minutes=int(plus_minutes))
        return moment.replace(microsecond=0).isoformat()

    # --- codes, references, identifiers ------------------------------------------------
    def f_code(self, table: str, value: Any, default: Any = None, _col: str = "") -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return default
        codes = self.codes.get(table)
        if codes is None:
            raise MappingError(f"unknown code map {table!r}")
        found = codes.get(value)
        if found is not None:
            return found
        reason = f"value {value!r} is not in code map {table!r}"
        if default is None and codes.default is not None:
            self.warn(_col, f"{reason}; imported as its $default {codes.default!r}")
            return codes.default
        self.warn(_col, reason + (f"; imported as {default!r}" if default else "; left out"))
        return default

    def f_known(self, table: str, value: Any) -> bool:
        """Whether code map ``table`` has the value (no warning either way): for telling
        values apart (``known('no_allergy', Alergias)``) without mapping them."""
        codes = self.codes.get(table)
        if codes is None:
            raise MappingError(f"unknown code map {table!r}")
        return value is not None and codes.get(value) is not None

    def f_ref(self, mapping: str, key: Any, required: bool = False, _col: str = "") -> str | None:
        """A conditional reference to the resource made from row ``key`` of resource
        mapping ``mapping``; a key with no such resource (an orphan foreign key) drops the
        reference (warning) or, when ``required``, the row (error)."""
        if key is None or key == "":
            if required:
                raise Reject(_col, f"no {mapping} key, and the reference is required")
            return None
        if self.resolve_ref is None:
            raise MappingError("ref() is not available here")
        found = self.resolve_ref(mapping, key)
        if found is None:
            reason = f"{mapping} {key!r} has no resource (orphan key, or the row was rejected)"
            if required:
                raise Reject(_col, f"{reason}; the reference is required")
            self.warn(_col, f"{reason}; reference left out")
        return found

    def f_cedula(self, value: Any, _col: str = "") -> str | None:
        text = self.f_text(value)
        if not text:
            return None
        digits = ced.normalize(text)
        problem = ced.id_problem(digits)
        if problem:
            self.warn(_col, f"cédula/RUC {text!r}: {problem}; kept as is")
            return text if not digits.isdigit() else digits
        return digits

    def f_digits(self, value: Any) -> str | None:
        """Only the digits (for comparing identifiers typed in different ways)."""
        text = re.sub(r"\D", "", str(value)) if value is not None else ""
        return text or None

    def f_ruc(self, value: Any, _col: str = "") -> str | None:
        return self.f_cedula(value, _col)

    # --- numbers and other primitives --------------------------------------------------
    def f_number(self, value: Any, _col: str = "") -> Decimal | int | None:
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int | Decimal):
            return value
        try:
            return Decimal(str(value).strip().replace(",", "."))
        except InvalidOperation:
            self.warn(_col, f"not a number: {value!r}; left out")
            return None

    def f_integer(self, value: Any, _col: str = "") -> int | None:
        number = self.f_number(value, _col)
        if number is None:
            return None
        if int(number) != number:
            self.warn(_col, f"not an integer: {value!r}; left out")
            return None
        return int(number)

    def f_boolean(self, value: Any) -> bool | None:
        if value is None:
            return None
        if isinstance(value, str):
            return fold(value) in ("1", "true", "t", "si", "s", "yes", "y")
        return bool(value)

    def f_email(self, value: Any, _col: str = "") -> str | None:
        text = self.f_lower(value)
        if not text:
            return None
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", text):
            self.warn(_col, f"not an e-mail address: {text!r}; left out")
            return None
        return text

    def f_phone(self, value: Any) -> str | None:
        text = self.f_text(value)
        return re.sub(r"[^\d+]", "", text) or None if text else None
