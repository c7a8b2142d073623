"""What a patient's reply asks for. The text is folded (case, accents, punctuation,
spaces): "Confirmar", "confirmo", "Sí", "1" confirm; "Cancelar", "2" cancel;
"Reprogramar", "3" ask staff to reschedule; "STOP" (the whole message, as Twilio's
opt-out keywords) opts the number out and "START" back in; anything else, or words of
two different answers, or a confirmation with a "no" in it, gets the help text."""

from __future__ import annotations

import re
import unicodedata

CONFIRM, CANCEL, RESCHEDULE, STOP, START, HELP = (
    "confirm",
    "cancel",
    "reschedule",
    "stop",
    "start",
    "help",
)
_DIGITS = {"1": CONFIRM, "2": CANCEL, "3": RESCHEDULE}
_WHOLE = {
    **{w: STOP for w in ("stop", "stopall", "baja", "unsubscribe", "end", "quit")},
    **{w: START for w in ("start", "unstop", "alta", "subscribe")},
}
_WORDS = {
    CONFIRM: frozenset(
        {
            *("confirmar", "confirmo", "confirmado", "confirmada", "confirmamos"),
            *("confirm", "confirmed", "si", "yes", "ok", "okay", "acepto"),
        }
    ),
    CANCEL: frozenset(
        {"cancelar", "cancelo", "cancelado", "cancelada", "anular", "anulo", "cancel"}
    ),
    RESCHEDULE: frozenset(
        {
            *("reprogramar", "reprogramo", "reagendar", "reagendo", "cambiar", "cambio"),
            *("reschedule", "change"),
        }
    ),
}
_NEGATIONS = frozenset({"no", "not", "nunca"})
_NOT_WORD = re.compile(r"[^0-9a-z]+")


def fold(text: str) -> str:
    """Lower case, no accents, punctuation as spaces, spaces collapsed."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(_NOT_WORD.sub(" ", plain).split())


def intent(text: str) -> str:
    folded = fold(text)
    if folded in _DIGITS:
        return _DIGITS[folded]
    if folded in _WHOLE:
        return _WHOLE[folded]
    words = set(folded.split())
    found = {action for action, keys in _WORDS.items() if words & keys}
    if found == {CONFIRM} and words & _NEGATIONS:
        return HELP  # "no confirmo": not a confirmation
    return found.pop() if len(found) == 1 else HELP
