"""Request facts the services need but the HTTP layer owns.

The base URL tells an absolute reference to this server (indexed as ``Type/id``) from a
reference to another server (indexed only as its URL). Routes bind it per request; code
running outside a request (reindex, loaders) sees the configured base or none.

The access token is bound by ``authenticate`` so that the write pipeline (see
fhir_server/workflows/pipeline.py), which runs inside storage transactions far below
the routes, knows who is writing. None: authorization off, or no request (importers,
CLI), i.e. the server itself.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smart_auth.tokens import AccessToken

request_base_url: ContextVar[str | None] = ContextVar("request_base_url", default=None)
request_access: ContextVar[AccessToken | None] = ContextVar("request_access", default=None)
