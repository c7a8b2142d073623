"""The Attachment rules (datatypes.html#Attachment), for every Attachment in a resource.

Called by the structural walk (structure.py) on each value whose element is of type
Attachment, wherever it occurs (DocumentReference.content.attachment, Patient.photo,
Extension.valueAttachment, ...): the element model already knows those elements, so
resources without Attachments pay nothing. The checks:

- att-1: "If the Attachment has data, it SHALL have a contentType"
- size: "The number of bytes of data that make up this attachment (before base64
  encoding, if that is done)", so it must equal the decoded length of ``data``
- hash: "The calculated hash of the data using SHA-1. Represented using base64", so it
  must be the SHA-1 of the decoded ``data``

Malformed values (data or hash not base64, size not an unsignedInt) are reported by the
primitive checks; these rules then stay silent rather than repeat them.
"""

from __future__ import annotations

import binascii
import hashlib
from typing import Any

from fhir_server.outcome import Issue

ATT_1 = "att-1: If the Attachment has data, it SHALL have a contentType"


def _decode(value: str) -> bytes | None:
    """base64 as FHIR allows it (whitespace ignored), None when it is not."""
    try:
        return binascii.a2b_base64(value, strict_mode=False)
    except (binascii.Error, ValueError):
        return None


def attachment_issues(attachment: dict[str, Any], path: str) -> list[Issue]:
    """The Attachment rules ``attachment`` (at ``path``) breaks."""
    data = attachment.get("data")
    if not isinstance(data, str):
        return []
    issues: list[Issue] = []
    if "contentType" not in attachment:
        issues.append(Issue("invariant", ATT_1, expression=(path,)))
    size = attachment.get("size")
    hash_ = attachment.get("hash")
    checks_size = type(size) is int and size >= 0
    checks_hash = isinstance(hash_, str)
    if not (checks_size or checks_hash):
        return issues
    decoded = _decode(data)
    if decoded is None:
        return issues
    if checks_size and size != len(decoded):
        message = f"size is {size} but data holds {len(decoded)} bytes (base64-decoded)"
        issues.append(Issue("value", message, expression=(f"{path}.size",)))
    if checks_hash:
        expected = _decode(hash_)  # type: ignore[arg-type]
        actual = hashlib.sha1(decoded, usedforsecurity=False).digest()
        if expected is not None and expected != actual:
            message = (
                f"hash {hash_!r} is not the SHA-1 of data (base64 "
                f"{binascii.b2a_base64(actual, newline=False).decode()!r})"
            )
            issues.append(Issue("value", message, expression=(f"{path}.hash",)))
    return issues
