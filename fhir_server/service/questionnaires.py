"""Finding the Questionnaire a QuestionnaireResponse answers, for the check in
fhir_server/validation/questionnaire.py (pure, run in the validation pool).

``QuestionnaireResponse.questionnaire`` is a canonical: ``#id`` names a contained
Questionnaire; otherwise it is a ``url`` (``url|version``) among the stored
Questionnaires, the newest version when none is given (terminology/resolve.py, which
caches each stored version's JSON). A transaction's own Questionnaires (POST/PUT
entries) are looked at first, so a bundle may carry the form with its answers.
Only QuestionnaireResponse writes pay this read: other types never reach here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pymongo.errors import PyMongoError

from fhir_server.outcome import FhirError
from fhir_server.storage import Storage
from fhir_server.validation.questionnaire import contained_questionnaire, questionnaire_reference
from terminology.resolve import Resolver, split_canonical

_ALL: dict[str, Any] = {}  # a Questionnaire is a definition: no per-token filter


class Questionnaires:
    def __init__(self, storage: Storage) -> None:
        self.resolver = Resolver(storage)

    async def find(self, qr: dict[str, Any], pending: Iterable[Any] = ()) -> dict[str, Any] | None:
        """The Questionnaire ``qr`` answers, or None (not named, or not found)."""
        ref = questionnaire_reference(qr)
        if ref is None:
            return None
        if ref.startswith("#"):
            return contained_questionnaire(qr, ref)
        url, version = split_canonical(ref, None)
        for r in pending:
            if (
                type(r) is dict
                and r.get("resourceType") == "Questionnaire"
                and r.get("url") == url
                and (version is None or r.get("version") == version)
            ):
                return r
        try:
            found = await self.resolver.by_url("Questionnaire", url, version, _ALL)
        except (FhirError, PyMongoError):
            return None  # changed while read: as not found (a warning, not a failure)
        return None if found is None else found.resource
