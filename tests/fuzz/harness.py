"""What the atheris targets share: the allowed error types and a guard that turns an
exception the validator swallows (it logs it and reports an "exception" issue) into a
crash the fuzzer sees."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from types import TracebackType

import atheris

from fhir_server.outcome import FhirError

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def client_error(exc: FhirError) -> None:
    """The documented error of the reader and the parser: a FhirError with a 4xx status
    and at least one issue. Anything else is a server error in the making."""
    if not 400 <= exc.status < 500 or not exc.issues:
        raise AssertionError(f"FhirError {exc.status} {exc.issues!r} is not a client error")


class SwallowedErrors(logging.Handler):
    """Collects exceptions logged with a traceback (``log.exception``)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.caught: list[ExcInfo] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.caught.append(record.exc_info)  # type: ignore[arg-type]

    def raise_first(self) -> None:
        if self.caught:
            info = self.caught[0]
            self.caught.clear()
            raise info[1].with_traceback(info[2])


def run(test_one_input: Callable[[bytes], None]) -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
