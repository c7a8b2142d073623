"""The public URLs of the authorization server and of the FHIR API it protects.

Both derive from one root: ``Settings.base_url`` (minus its ``/fhir``) when configured,
else the URL the request came in on, so tokens carry the ``aud`` clients see."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from fhir_server.config import Settings

FHIR_PATH = "/fhir"
AUTH_PATH = "/auth"


@dataclass(frozen=True)
class Urls:
    root: str
    fhir: str

    @classmethod
    def of(cls, request: Request, settings: Settings) -> Urls:
        if settings.base_url:
            fhir = settings.base_url.rstrip("/")
            root = fhir[: -len(FHIR_PATH)] if fhir.endswith(FHIR_PATH) else fhir
            return cls(root, fhir)
        root = str(request.base_url).rstrip("/")
        return cls(root, root + FHIR_PATH)

    @property
    def issuer(self) -> str:
        return self.root + AUTH_PATH

    def auth(self, path: str) -> str:
        return f"{self.issuer}/{path.lstrip('/')}"

    @property
    def token(self) -> str:
        return self.auth("token")
