"""HEAD for every GET endpoint (RFC 9110 9.3.2; http.html allows HEAD wherever GET
is): the request is performed as a GET and the body dropped, so status and headers
(ETag, Last-Modified, Content-Length) are exactly those of the GET."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        inner = {**scope, "method": "GET"}
        try:
            await self.app(inner, receive, send_headers_only)
        finally:  # the matched route, for what runs around the app (the audit record)
            for key in ("route", "path_params"):
                if key in inner:
                    scope[key] = inner[key]
