"""ChargeItems (chargeitem.html) made by the server for what was done, once each:

- a ``MedicationDispense`` that is ``completed`` and took its quantity from a stock
  this clinic keeps (the pharmacy's rules recorded its batches: docs/pharmacy.md)
  charges its medication: ``code`` the medication's code (``medicationCodeableConcept``,
  or the Medication it references, stored or contained), ``quantity`` the dispensed
  quantity. Another pharmacy's dispense, or history an importer brings (which the old
  system billed, and whose invoices are imported too), moves no stock and is not
  charged;
- an ``Encounter`` of the clinic (``serviceProvider`` the billing Organization,
  FHIR_BILLING_ISSUER) that is ``finished`` charges each of its Procedures
  (``Procedure.encounter``) performed in whole or in part (``completed``, ``stopped``);
  a Procedure written so, later, for such an Encounter already finished is charged too
  (a result recorded after the visit closed is still work done). Other providers'
  encounters exchanged through the server, and any encounter when FHIR_BILLING_ISSUER
  is not set, are not charged;
- the ChargeItem is ``billable``, ``subject`` the patient, ``context`` the Encounter
  (the dispense's ``context``), ``account`` the Encounter's accounts, ``service`` the
  dispense or Procedure, ``definitionCanonical`` the active ChargeItemDefinition of its
  code (prices.py) when there is one.

"Once each" is kept by the ``billing_charges`` collection: a document per charged
dispense or Procedure (``_id`` its ``Type/id``, unique by definition), written in the
transaction that creates the ChargeItem. A repeated or replayed write finds it and
charges nothing; two concurrent writes of the same dispense conflict on it, and the
retried one finds it. A source charged once is never charged again, even if it goes
back and forth through ``completed``.

A dispense or Procedure that becomes ``entered-in-error`` (or is deleted) makes its
ChargeItem ``entered-in-error`` too, unless it is already on an invoice (``billed``):
then the invoice must be cancelled first, which returns it to ``billable``, and the
charge can be voided by hand (docs/billing.md). Sources without a patient are not
charged (there is nobody to bill).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from pymongo import ASCENDING, IndexModel

from fhir_server.jsonio import load_stored
from fhir_server.workflows.billing.prices import code_keys, first_price, prices_for
from fhir_server.workflows.pipeline import Rule, Transaction, Write
from fhir_server.workflows.scheduling.booking import local_reference
from profiles import DISPENSED_BATCH

CHARGES = "billing_charges"
PERFORMED = frozenset({"completed", "stopped"})
VOID = "entered-in-error"
_CONTEXT = {"MedicationDispense": "context", "Procedure": "encounter"}


def _source_ref(resource: dict[str, Any], field: str, types: tuple[str, ...]) -> str | None:
    return local_reference(resource.get(field), types)


def _dispensed_here(dispense: dict[str, Any]) -> bool:
    """Completed, and taken from a stock this clinic keeps: the pharmacy's rules (which
    run first, in the same transaction) recorded the batches on it."""
    return dispense.get("status") == "completed" and any(
        isinstance(e, dict) and e.get("url") == DISPENSED_BATCH
        for e in dispense.get("extension") or []
    )


def _medication(dispense: dict[str, Any], stored: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The dispensed medication's code as a CodeableConcept."""
    concept = dispense.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return concept
    ref = dispense.get("medicationReference") or {}
    target = ref.get("reference") if isinstance(ref, dict) else None
    if isinstance(target, str) and target.startswith("#"):
        for contained in dispense.get("contained") or []:
            if isinstance(contained, dict) and contained.get("id") == target[1:]:
                code = contained.get("code")
                if isinstance(code, dict):
                    return code
    local = local_reference(ref, ("Medication",))
    if local is not None and isinstance(stored.get(local, {}).get("code"), dict):
        return stored[local]["code"]  # type: ignore[no-any-return]
    display = ref.get("display") if isinstance(ref, dict) else None
    return {"text": display if isinstance(display, str) else "Medication"}


class ChargeCapture(Rule):
    types: ClassVar[frozenset[str]] = frozenset({"MedicationDispense", "Encounter", "Procedure"})
    creates: ClassVar[frozenset[str]] = frozenset({"ChargeItem"})
    collections: ClassVar[dict[str, list[IndexModel]]] = {
        CHARGES: [IndexModel([("c", ASCENDING)], name="charge")]
    }

    def __init__(self, clinic: str | None = None) -> None:
        self.clinic = clinic  # FHIR_BILLING_ISSUER: whose Encounters are charged

    def _ours(self, encounter: dict[str, Any]) -> bool:
        """The clinic's own visit: its serviceProvider is the billing Organization
        (encounter.html: "the organization that is primarily responsible for this
        Encounter's services"). Another provider's encounter, exchanged through this
        server, is not the clinic's to charge."""
        provider = _source_ref(encounter, "serviceProvider", ("Organization",))
        return self.clinic is not None and provider == self.clinic

    async def in_transaction(self, tx: Transaction, writes: Sequence[Write]) -> None:
        await self._void(tx, [w for w in writes if w.type != "Encounter"])
        sources: dict[str, dict[str, Any]] = {}
        finished: dict[str, dict[str, Any]] = {}
        for w in writes:
            new = w.new
            if new is None:
                continue
            if w.type == "MedicationDispense" and _dispensed_here(new):
                sources[w.key] = new
            elif w.type == "Encounter" and new.get("status") == "finished" and self._ours(new):
                finished[w.key] = new
        late = {
            w.key: w.new
            for w in writes
            if w.type == "Procedure" and w.new is not None and w.new.get("status") in PERFORMED
        }
        encounters = await self._read(
            tx,
            "Encounter",
            [e for p in late.values() if (e := _source_ref(p, "encounter", ("Encounter",)))],
        )
        encounters.update(finished)
        for key, procedure in late.items():
            encounter = _source_ref(procedure, "encounter", ("Encounter",))
            visit = encounters.get(encounter or "", {})
            if visit.get("status") == "finished" and self._ours(visit):
                sources[key] = procedure
        if finished:
            theirs = {"sp.encounter": {"$in": sorted(finished)}}
            for current in await tx.storage.find_current("Procedure", theirs, 10_000, tx.session):
                procedure = load_stored(current.raw) if current.raw else {}
                if procedure.get("status") in PERFORMED:
                    sources.setdefault(f"Procedure/{current.id}", procedure)
        if not sources:
            return
        charged = tx.db[CHARGES]
        done = await charged.distinct("_id", {"_id": {"$in": sorted(sources)}}, session=tx.session)
        for key in done:
            del sources[key]
        sources = {k: s for k, s in sources.items() if self._patient(s) is not None}
        if not sources:
            return
        await self._charge(tx, sources, encounters)

    @staticmethod
    def _patient(source: dict[str, Any]) -> str | None:
        return _source_ref(source, "subject", ("Patient",))

    @staticmethod
    async def _read(tx: Transaction, rtype: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        ids = sorted({k.split("/", 1)[1] for k in keys})
        if not ids:
            return {}
        return {
            f"{rtype}/{c.id}": load_stored(c.raw)
            for c in await tx.storage.read_many(rtype, ids, tx.session)
            if c.raw is not None
        }

    async def _charge(
        self,
        tx: Transaction,
        sources: dict[str, dict[str, Any]],
        encounters: dict[str, dict[str, Any]],
    ) -> None:
        contexts = {
            k: e
            for k, s in sources.items()
            if (e := _source_ref(s, _CONTEXT[k.split("/")[0]], ("Encounter",)))
        }
        missing = [e for e in contexts.values() if e not in encounters]
        encounters = {**encounters, **await self._read(tx, "Encounter", missing)}
        medications = await self._read(
            tx,
            "Medication",
            [
                m
                for k, s in sources.items()
                if k.startswith("Med")
                and (m := _source_ref(s, "medicationReference", ("Medication",)))
            ],
        )
        codes = {
            k: _medication(s, medications) if k.startswith("Med") else s.get("code")
            for k, s in sources.items()
        }
        prices = await prices_for(
            tx.storage, [c for code in codes.values() for c in code_keys(code)], tx.session
        )
        now = datetime.now(UTC)
        docs: list[dict[str, Any]] = []
        for key, source in sorted(sources.items()):
            code = codes[key] if isinstance(codes[key], dict) else {"text": key.split("/")[0]}
            item: dict[str, Any] = {
                "resourceType": "ChargeItem",
                "status": "billable",
                "code": code,
                "subject": {"reference": self._patient(source)},
                "service": [{"reference": key}],
                "enteredDate": now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            }
            encounter = contexts.get(key)
            if encounter is not None:
                item["context"] = {"reference": encounter}
                accounts = encounters.get(encounter, {}).get("account") or []
                if accounts:
                    item["account"] = accounts
            if key.startswith("Med"):
                quantity = source.get("quantity")
                item["quantity"] = quantity if isinstance(quantity, dict) else {"value": 1}
                when = source.get("whenHandedOver") or source.get("whenPrepared")
                if isinstance(when, str):
                    item["occurrenceDateTime"] = when
            else:
                item["quantity"] = {"value": 1}
                when = source.get("performedDateTime")
                if isinstance(when, str):
                    item["occurrenceDateTime"] = when
            price = first_price(prices, code)
            if price is not None and price.url is not None:
                item["definitionCanonical"] = [price.url]
            created = tx.create(item, now)
            docs.append({"_id": key, "c": f"ChargeItem/{created.id}"})
        await tx.db[CHARGES].insert_many(docs, session=tx.session)

    @staticmethod
    async def _void(tx: Transaction, writes: Sequence[Write]) -> None:
        """The not-yet-invoiced ChargeItem of a dispense or Procedure voided or deleted
        becomes ``entered-in-error``."""
        voided = [
            w.key
            for w in writes
            if (w.new is None or w.new.get("status") == VOID)
            and (w.previous is None or w.previous.get("status") != VOID)
        ]
        if not voided:
            return
        found = tx.db[CHARGES].find({"_id": {"$in": voided}}, session=tx.session)
        ids = [doc["c"].split("/", 1)[1] async for doc in found]
        for current in await tx.storage.read_many("ChargeItem", ids, tx.session):
            if current.raw is None:
                continue
            item = load_stored(current.raw)
            if item.get("status") == "billable":
                tx.update(current, {**item, "status": VOID}, item)
