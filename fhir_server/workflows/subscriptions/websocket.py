"""The R4 websocket channel (subscription.html#2.46.7.2): "the client connects a secure
websocket to the server's websocket URL (published in the CapabilityStatement) ... the
client sends 'bind :id' ... whenever an event occurs the server sends 'ping :id'".

Each API process serves ``[base]/websocket``. A bound socket receives ``ping <id>`` for
every match of its Subscription: the matching rule puts a ping document in the write's
transaction, and a change stream on those documents (one per process, started with the
first bind) wakes the sockets bound here. A ping carries no data, only the id.

With SMART authorization on, the upgrade request carries a bearer token (the
``Authorization`` header) and a bind succeeds only for a Subscription that token may
read; otherwise the server answers ``error <id> <reason>`` and stays connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pymongo.asynchronous.database import AsyncDatabase

from fhir_server.authz.policy import Policy
from fhir_server.outcome import FhirError
from fhir_server.workflows.subscriptions.active import PINGS, STATE
from smart_auth.tokens import AccessToken, InvalidToken

PATH = "/websocket"
log = logging.getLogger(__name__)
router = APIRouter()


class Pings:
    """The sockets bound in this process, and the change stream that pings them."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.db = db
        self.bound: dict[str, set[WebSocket]] = defaultdict(set)
        self.task: asyncio.Task[None] | None = None

    def bind(self, sub_id: str, socket: WebSocket) -> None:
        self.bound[sub_id].add(socket)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._watch())

    def unbind(self, socket: WebSocket) -> None:
        for sub_id in [s for s, sockets in self.bound.items() if socket in sockets]:
            self.bound[sub_id].discard(socket)
            if not self.bound[sub_id]:
                del self.bound[sub_id]

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    async def _watch(self) -> None:
        pipeline = [{"$match": {"operationType": "insert"}}]
        while True:
            try:
                async with await self.db[PINGS].watch(pipeline) as stream:
                    async for change in stream:
                        await self._ping(change["fullDocument"]["sub"])
            except asyncio.CancelledError:
                raise
            except Exception:  # mongod away or failing over: watch again
                log.exception("the websocket ping stream failed; watching again")
                await asyncio.sleep(1.0)

    async def _ping(self, sub_id: str) -> None:
        for socket in list(self.bound.get(sub_id, ())):
            try:
                await socket.send_text(f"ping {sub_id}")
            except Exception:  # closed meanwhile
                self.unbind(socket)


def pings_of(socket: WebSocket) -> Pings:
    state = socket.app.state
    found: Pings | None = getattr(state, "subscription_pings", None)
    if found is None:
        found = Pings(state.services.resources.storage.db)
        state.subscription_pings = found
    return found


async def close_pings(app: Any) -> None:
    """Stop this process's ping stream (at shutdown)."""
    found: Pings | None = getattr(app.state, "subscription_pings", None)
    if found is not None:
        await found.close()


async def _access(socket: WebSocket) -> AccessToken | None:
    """The upgrade request's token (None when authorization is off); InvalidToken."""
    from fhir_server.authz.authenticate import verifier

    services = socket.app.state.services
    if not services.settings.auth_enabled:
        return None
    header = socket.headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("the websocket upgrade needs Authorization: Bearer <token>")
    base = services.settings.base_url
    if not base:  # as base_url() derives it for HTTP requests (ws -> http)
        root = str(socket.base_url).rstrip("/")
        base = "http" + root.removeprefix("ws") + "/fhir"
    return await verifier(socket.app.state).verify(token.strip(), base.rstrip("/"))


async def _may_bind(socket: WebSocket, access: AccessToken | None, sub_id: str) -> str | None:
    """Why ``sub_id`` cannot be bound (None: it can)."""
    services = socket.app.state.services
    db = services.resources.storage.db
    query: dict[str, Any] = {"_id": sub_id, "del": False}
    if access is not None:
        try:
            query = {
                "$and": [
                    query,
                    await Policy(access, services.search).restriction("Subscription", "r"),
                ]
            }
        except FhirError:
            return "this token may not read Subscriptions"
    if await db["Subscription"].find_one(query, {"_id": 1}) is None:
        return "no such Subscription"
    state = await db[STATE].find_one({"_id": sub_id})
    if state is None or (state.get("channel") or {}).get("type") != "websocket":
        return "not a websocket Subscription"
    return None


@router.websocket(PATH)
async def websocket(socket: WebSocket) -> None:
    try:
        access = await _access(socket)
    except InvalidToken as exc:
        await socket.close(code=1008, reason=str(exc)[:120])
        return
    await socket.accept()
    pings = pings_of(socket)
    try:
        while True:
            words = (await socket.receive_text()).split()
            if len(words) != 2 or words[0] != "bind":
                await socket.send_text("error expected 'bind <id>'")
                continue
            why = await _may_bind(socket, access, words[1])
            if why is not None:
                await socket.send_text(f"error {words[1]} {why}")
                continue
            pings.bind(words[1], socket)
            await socket.send_text(f"bound {words[1]}")
    except WebSocketDisconnect:
        pass
    finally:
        pings.unbind(socket)
