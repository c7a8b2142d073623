"""OperationOutcome construction and the one exception type every layer raises.

Every error leaving the server is an OperationOutcome (http.html#Status-Codes); raising
``FhirError`` anywhere below the routes is how a layer says "answer with this status".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue. ``code`` is from http://hl7.org/fhir/issue-type."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: list[Issue] | tuple[Issue, ...]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def info_outcome(message: str, code: str = "informational") -> dict[str, Any]:
    return operation_outcome([Issue(code=code, diagnostics=message, severity="information")])


@dataclass
class FhirError(Exception):
    """An error with its HTTP status and the issues that explain it."""

    status: int
    issues: list[Issue]
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.issues[0].diagnostics if self.issues else str(self.status))

    @classmethod
    def of(
        cls,
        status: int,
        code: str,
        diagnostics: str,
        *expression: str,
        headers: dict[str, str] | None = None,
    ) -> FhirError:
        return cls(status, [Issue(code, diagnostics, expression=expression)], headers or {})

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)

    def __reduce__(self) -> tuple[type[FhirError], tuple[int, list[Issue], dict[str, str]]]:
        return FhirError, (self.status, self.issues, self.headers)  # raised in a child


def bad_request(diagnostics: str, *expression: str, code: str = "invalid") -> FhirError:
    return FhirError.of(400, code, diagnostics, *expression)


def not_found(diagnostics: str) -> FhirError:
    return FhirError.of(404, "not-found", diagnostics)


def precondition_failed(diagnostics: str, *expression: str) -> FhirError:
    return FhirError.of(412, "conflict", diagnostics, *expression)
