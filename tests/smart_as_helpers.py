"""Helpers of the SMART authorization server tests: a real app with auth on, seeded
through a second app with auth off on the same database, and a "browser" that follows
the server's HTML forms (CSRF token included) the way a user would."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi.testclient import TestClient
from httpx import Response
from pymongo import MongoClient
from pymongo.database import Database

from fhir_server.app import create_app
from fhir_server.config import Settings

ROOT = "http://localhost"
FHIR = f"{ROOT}/fhir"
REDIRECT = "http://localhost:9999/app/callback"


@dataclass
class Smart:
    client: TestClient
    db: Database[Any]
    settings: Settings


@contextmanager
def smart_server(mongo_url: str, **overrides: Any) -> Iterator[Smart]:
    settings = Settings(
        mongo_url=mongo_url,
        database=f"test_{uuid.uuid4().hex[:12]}",
        auth_enabled=True,
        **overrides,
    )
    with (
        MongoClient(mongo_url, tz_aware=True) as mc,
        TestClient(create_app(settings), base_url=ROOT, follow_redirects=False) as c,
    ):
        try:
            yield Smart(c, mc[settings.database], settings)
        finally:
            mc.drop_database(settings.database)


def seed(settings: Settings, resources: list[dict[str, Any]]) -> None:
    """PUT resources through the FHIR API of an auth-off app on the same database."""
    open_settings = settings.model_copy(update={"auth_enabled": False})
    with TestClient(create_app(open_settings), base_url=ROOT) as c:
        for r in resources:
            response = c.put(f"/fhir/{r['resourceType']}/{r['id']}", json=r)
            assert response.status_code in (200, 201), response.text


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def csrf(page: Response) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert m, page.text
    return html.unescape(m.group(1))


def form_action(page: Response, marker: str = 'method="post"') -> str:
    m = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert m, page.text
    return html.unescape(m.group(1))


def location(response: Response) -> str:
    assert response.status_code in (302, 303), (response.status_code, response.text)
    return response.headers["location"]


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def authorize_params(
    client_id: str,
    scope: str,
    challenge: str | None,
    *,
    redirect_uri: str = REDIRECT,
    aud: str = FHIR,
    state: str = "st-123",
    **extra: str,
) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "aud": aud,
        **extra,
    }
    if challenge is not None:
        params["code_challenge"] = challenge
        params["code_challenge_method"] = "S256"
    return params


def login(c: TestClient, page: Response, username: str, password: str, **extra: str) -> Response:
    """Submit the login form shown in ``page``."""
    assert 'id="username"' in page.text and 'id="login"' in page.text
    data = {"csrf": csrf(page), "username": username, "password": password, **extra}
    return c.post(form_action(page), data=data)


def authorize_to_code(
    c: TestClient,
    params: dict[str, str],
    username: str,
    password: str,
    *,
    patient: str | None = None,
    untick: tuple[str, ...] = (),
    decision: str = "allow",
) -> dict[str, str]:
    """Run the whole browser part: authorize, login, (picker), consent; returns the query
    of the redirect back to the app."""
    r = c.get("/auth/authorize?" + urlencode(params))
    step = location(r)
    page = c.get(step)
    if page.status_code == 303:  # not logged in yet
        page = c.get(location(page))
        r = login(c, page, username, password)
        page = c.get(location(r))
    assert page.status_code == 200, page.text
    if 'id="patient-search"' in page.text:
        assert patient is not None, "picker shown but no patient given"
        action = re.search(r'action="([^"]+/patient)"', page.text)
        assert action
        r = c.post(html.unescape(action.group(1)), data={"csrf": csrf(page), "patient": patient})
        page = c.get(location(r))
    assert 'id="allow"' in page.text, page.text
    scopes = [html.unescape(s) for s in re.findall(r'name="scope" value="([^"]+)"', page.text)]
    data: list[tuple[str, str]] = [("csrf", csrf(page)), ("decision", decision)]
    data += [("scope", s) for s in scopes if s not in untick]
    r = c.post(form_action(page), content=urlencode(data), headers=_FORM)
    return query_of(location(r))


_FORM = {"content-type": "application/x-www-form-urlencoded"}


def token_request(c: TestClient, data: dict[str, str], **kwargs: Any) -> Response:
    return c.post("/auth/token", data=data, **kwargs)


def app_tokens(c: TestClient, scope: str, username: str, password: str) -> dict[str, Any]:
    """The token response of the public test app ("app") after a full code flow with
    PKCE, logged in as ``username``."""
    verifier, challenge = pkce()
    back = authorize_to_code(c, authorize_params("app", scope, challenge), username, password)
    data = {
        "grant_type": "authorization_code",
        "code": back["code"],
        "redirect_uri": REDIRECT,
        "client_id": "app",
        "code_verifier": verifier,
    }
    tokens: dict[str, Any] = token_request(c, data).json()
    return tokens
