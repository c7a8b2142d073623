"""A draft Invoice from billable ChargeItems (invoice.html), computed exactly.

For each ChargeItem, one ``lineItem`` with its ``chargeItemReference`` and these
``priceComponent``s (amounts in USD; rounding to the cent half up, money.py):

- ``base``: ``priceOverride`` when an operator set one (chargeitem.html: "Total price
  of the Charge overriding the list price associated with the code"), else the unit
  price of its ChargeItemDefinition (``definitionCanonical``, else the active one of
  its code) x ``quantity`` (1 when absent) x ``factorOverride`` (1 when absent),
  rounded;
- ``discount`` (when the definition has one and no price override replaces the list
  price): its ``factor`` x base, or its ``amount`` x quantity, rounded; the amount is
  positive and subtracted;
- ``tax`` with the SRI's IVA code: ``factor`` the definition's IVA rate, else
  FHIR_BILLING_IVA_RATE; ``amount`` = (base - discount) x factor, rounded: the IVA of
  each line is computed on its taxable base after discount, and rounded per line.

``totalNet`` = Σ (base - discount); ``totalGross`` = totalNet + Σ IVA: sums of rounded
cents, so exact, and equal to the sums of the lines a reader can check.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError
from fhir_server.storage.documents import StoredVersion
from fhir_server.storage.store import Storage
from fhir_server.workflows.billing.money import (
    TAX_CODE,
    ZERO,
    amount_of,
    cents,
    decimal_of,
    money,
)
from fhir_server.workflows.billing.prices import Price, code_keys, price_of, prices_for
from profiles.clinics import INVOICE

ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class Line:
    item: str  # ChargeItem/<id>
    base: Decimal
    discount: Decimal
    rate: Decimal

    @property
    def net(self) -> Decimal:
        return self.base - self.discount

    @property
    def tax(self) -> Decimal:
        return cents(self.net * self.rate)

    def line_item(self, sequence: int) -> dict[str, Any]:
        components: list[dict[str, Any]] = [{"type": "base", "amount": money(self.base)}]
        if self.discount:
            components.append({"type": "discount", "amount": money(self.discount)})
        components.append(
            {"type": "tax", "code": TAX_CODE, "factor": self.rate, "amount": money(self.tax)}
        )
        return {
            "sequence": sequence,
            "chargeItemReference": {"reference": self.item},
            "priceComponent": components,
        }


async def _prices(storage: Storage, items: list[tuple[str, dict[str, Any]]]) -> dict[str, Price]:
    """The price of each item: by its definitionCanonical, else by its code."""
    urls = sorted(
        {
            u
            for _, item in items
            for u in item.get("definitionCanonical") or []
            if isinstance(u, str)
        }
    )
    by_url: dict[str, Price] = {}
    if urls:
        for d in await storage.find_current(
            "ChargeItemDefinition", {"sp.url": {"$in": urls}}, 1000
        ):
            if d.raw is not None:
                definition = load_stored(d.raw)
                by_url.setdefault(definition.get("url"), price_of(d.id, definition))
    found: dict[str, Price] = {}
    for key, item in items:
        for u in item.get("definitionCanonical") or []:
            if u in by_url:
                found[key] = by_url[u]
                break
    rest = [(key, item) for key, item in items if key not in found]
    by_code = await prices_for(storage, [c for _, i in rest for c in code_keys(i.get("code"))])
    for key, item in rest:
        for code in code_keys(item.get("code")):
            if code in by_code:
                found[key] = by_code[code]
                break
    return found


async def lines_for(
    storage: Storage, items: list[tuple[str, dict[str, Any]]], default_rate: Decimal
) -> list[Line]:
    """One Line per ``(ChargeItem/<id>, ChargeItem)``; 422 for an item without a price."""
    prices = await _prices(storage, items)
    lines: list[Line] = []
    for key, item in items:
        price = prices.get(key)
        quantity = decimal_of((item.get("quantity") or {}).get("value"))
        quantity = ONE if quantity is None else quantity
        override = amount_of(item.get("priceOverride"))
        rate = price.rate if price is not None and price.rate is not None else default_rate
        discount = ZERO
        if override is not None:
            base = cents(override)
        elif price is not None and price.base is not None:
            factor = decimal_of(item.get("factorOverride"))
            base = cents(price.base * quantity * (ONE if factor is None else factor))
            if price.discount_factor is not None:
                discount = cents(base * price.discount_factor)
            elif price.discount_amount is not None:
                discount = cents(price.discount_amount * quantity)
        else:
            raise FhirError.of(
                422,
                "business-rule",
                f"{key} has no price: no priceOverride, and no active ChargeItemDefinition "
                "with a base price for its code",
                "ChargeItem.priceOverride",
            )
        lines.append(Line(key, base, min(discount, base), rate))
    return lines


def invoice_of(
    lines: list[Line],
    *,
    patient: str,
    recipient_identifier: dict[str, Any] | None,
    issuer: str,
    issuer_identifier: dict[str, Any] | None,
    date: str,
    account: str | None = None,
) -> dict[str, Any]:
    net = sum((line.net for line in lines), ZERO)
    gross = net + sum((line.tax for line in lines), ZERO)
    recipient: dict[str, Any] = {"reference": patient}
    if recipient_identifier is not None:
        recipient["identifier"] = recipient_identifier
    issued_by: dict[str, Any] = {"reference": issuer}
    if issuer_identifier is not None:
        issued_by["identifier"] = issuer_identifier
    invoice: dict[str, Any] = {
        "resourceType": "Invoice",
        "meta": {"profile": [INVOICE]},
        "status": "draft",
        "subject": {"reference": patient},
        "recipient": recipient,
        "date": date,
        "issuer": issued_by,
        "lineItem": [line.line_item(i + 1) for i, line in enumerate(lines)],
        "totalNet": money(net),
        "totalGross": money(gross),
    }
    if account is not None:
        invoice["account"] = {"reference": account}
    return invoice


def billable(stored: list[StoredVersion]) -> list[tuple[str, dict[str, Any]]]:
    """The billable ChargeItems among ``stored``, oldest entry first."""
    found = [(f"ChargeItem/{s.id}", load_stored(s.raw)) for s in stored if s.raw is not None]
    items = [(k, i) for k, i in found if i.get("status") == "billable"]
    items.sort(key=lambda p: (str(p[1].get("enteredDate", "")), p[0]))
    return items
