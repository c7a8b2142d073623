"""uvicorn's HTTP protocols with a header-read deadline and a connection limit that
answers like the rest of the API.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but arms no timer
on a new connection and none while a request's headers arrive, so a client that
connects and sends nothing, or sends headers one byte at a time (slow loris), holds its
connection, a file descriptor and a place in ``limit_concurrency`` for ever: 1,100 such
connections were held in the attack of issue 11. Here every request's headers must be
complete within ``header_timeout`` seconds of the connection opening or of the request's
first byte; otherwise the connection gets 408 and is closed. The deadline is absolute, so
dribbling bytes does not extend it.

A request's body has its own absolute deadline, ``body_timeout`` seconds from the end of
its headers (``max_body_bytes`` bounds its size, this its duration): a client that
declares ``Content-Length: 1000000`` and then sends a byte a second would otherwise hold
a request task, a place in ``limit_concurrency``, for ever, because the route awaits the
body and uvicorn arms no timer while it does. On expiry, a request not yet answered gets
408 with an OperationOutcome, and the connection is closed either way (the route then
sees a disconnect).

Over ``limit_concurrency`` (connections or requests in flight) a request is answered
503 with ``Retry-After`` as an OperationOutcome, instead of uvicorn's plain text.

Selected by import path (``http="fhir_server.http_timeouts:HeaderTimeoutProtocol"``), so
each worker process reads the deadline from its ``FHIR_*`` environment (Settings).
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from fhir_server.config import Settings
from fhir_server.jsonio import dumps
from fhir_server.outcome import Issue, operation_outcome

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools comes with uvicorn[standard]
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_BODY_TIMEOUT_BODY = dumps(
    operation_outcome(
        [Issue("timeout", "The request body did not arrive in time; the connection is closed")]
    )
)
_BODY_TIMEOUT = b"\r\n".join(
    [
        b"HTTP/1.1 408 Request Timeout",
        b"content-type: application/fhir+json; charset=utf-8",
        b"content-length: " + str(len(_BODY_TIMEOUT_BODY)).encode(),
        b"cache-control: no-store",
        b"x-content-type-options: nosniff",
        b"connection: close",
        b"",
        _BODY_TIMEOUT_BODY,
    ]
)
_OVERLOADED_BODY = dumps(
    operation_outcome(
        [Issue("transient", "The server has too many connections open; retry shortly")]
    )
)


async def _overloaded(scope: Any, receive: Any, send: Any) -> None:
    """The answer over the concurrency limit (read nothing: the connection then closes)."""
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/fhir+json; charset=utf-8"),
                (b"content-length", str(len(_OVERLOADED_BODY)).encode()),
                (b"retry-after", b"1"),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _OVERLOADED_BODY, "more_body": False})


_timeouts: tuple[float, float] | None = None


def _read_timeouts() -> tuple[float, float]:
    global _timeouts
    if _timeouts is None:
        settings = Settings()
        _timeouts = (settings.header_timeout_seconds, settings.body_timeout_seconds)
    return _timeouts


def header_timeout() -> float:
    """The header deadline of this process (FHIR_HEADER_TIMEOUT_SECONDS), read once."""
    return _read_timeouts()[0]


def body_timeout() -> float:
    """The body deadline of this process (FHIR_BODY_TIMEOUT_SECONDS), read once."""
    return _read_timeouts()[1]


def _cancel(deadline: asyncio.TimerHandle | None) -> None:
    if deadline is not None:
        deadline.cancel()


class _Deadlines:
    """Mixin over uvicorn's protocols; the subclasses say when headers are pending."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    tasks: set[Any]
    app: Any
    cycle: Any
    limit_concurrency: int | None

    def _setup(self) -> None:
        self._header_deadline: asyncio.TimerHandle | None = None
        self._body_deadline: asyncio.TimerHandle | None = None
        self._request_bytes = False  # any byte of the pending request seen
        # Checked here, answered as an OperationOutcome; uvicorn's own check is disabled.
        self._limit, self.limit_concurrency = self.limit_concurrency, None

    @abstractmethod
    def _headers_pending(self) -> bool:
        """A request has begun and its headers are not complete (per protocol)."""

    @abstractmethod
    def _body_pending(self) -> bool:
        """Headers complete, body not yet complete (per protocol)."""

    def _armed(
        self,
        deadline: asyncio.TimerHandle | None,
        seconds: Callable[[], float],
        expired: Callable[[], None],
    ) -> asyncio.TimerHandle:
        """``deadline`` if it is running, else a new one calling ``expired`` in ``seconds()``."""
        return deadline if deadline is not None else self.loop.call_later(seconds(), expired)

    def _arm(self) -> None:
        self._header_deadline = self._armed(self._header_deadline, header_timeout, self._expired)

    def _disarm(self) -> None:
        _cancel(self._header_deadline)
        self._header_deadline = None

    def _expired(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            if self._request_bytes:
                self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

    def _arm_body(self) -> None:
        self._body_deadline = self._armed(self._body_deadline, body_timeout, self._body_expired)

    def _disarm_body(self) -> None:
        _cancel(self._body_deadline)
        self._body_deadline = None

    def _body_expired(self) -> None:
        self._body_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self.transport.write(_BODY_TIMEOUT)
        self.transport.close()

    def _over_limit(self) -> bool:
        limit = self._limit
        return limit is not None and (len(self.connections) > limit or len(self.tasks) >= limit)

    def _received(self, data: bytes, receive: Any) -> None:
        app = self.app
        if self._over_limit():
            self.app = _overloaded  # read by the parser callbacks of this call only
        try:
            receive(data)
        finally:
            self.app = app
        if self._headers_pending():
            self._request_bytes = True
            self._arm()
        else:
            self._request_bytes = False
            self._disarm()
        if self._body_pending():
            self._arm_body()
        else:
            self._disarm_body()


if HttpToolsProtocol is not None:

    class HttpToolsDeadlineProtocol(_Deadlines, HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._setup()
            self._pending = False
            self._in_body = False

        def _headers_pending(self) -> bool:
            return self._pending

        def _body_pending(self) -> bool:
            return self._in_body

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()  # a connection that never sends a byte is closed too

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._disarm_body()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._received(data, super().data_received)

        def on_message_begin(self) -> None:
            self._pending = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._pending = False
            self._in_body = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_body = False
            super().on_message_complete()


class H11DeadlineProtocol(_Deadlines, H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup()

    def _headers_pending(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _body_pending(self) -> bool:
        return self.conn.their_state is h11.SEND_BODY

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._received(data, super().data_received)


HeaderTimeoutProtocol: type[asyncio.Protocol] = (
    HttpToolsDeadlineProtocol if HttpToolsProtocol is not None else H11DeadlineProtocol
)
