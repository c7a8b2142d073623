"""Request facts the services need but the HTTP layer owns.

The base URL tells an absolute reference to this server (indexed as ``Type/id``) from a
reference to another server (indexed only as its URL). Routes bind it per request; code
running outside a request (reindex, loaders) sees the configured base or none.
"""

from __future__ import annotations

from contextvars import ContextVar

request_base_url: ContextVar[str | None] = ContextVar("request_base_url", default=None)
