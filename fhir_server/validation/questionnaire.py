"""A QuestionnaireResponse checked against the Questionnaire it answers
(questionnaireresponse.html, questionnaire.html), as the reference validator does:

- every item's ``linkId`` is an item of the Questionnaire at the same nesting, in the
  Questionnaire's order; children of a group are in ``item.item``, children of a
  question in ``item.answer.item`` (qrs-1);
- answers have the value type of ``item.type``; display and group items have none;
- ``required`` items are answered when the response claims to be complete
  (status completed or amended);
- ``repeats``: one answer (one item) at most otherwise; a repeating group repeats its
  item, a repeating question its answers;
- ``enableWhen``/``enableBehavior``: an item that is not enabled has no answers;
- ``answerOption``: answers are among the options; ``answerValueSet``: codings are
  members (through the server's terminology, ``BindingContext``; a warning when the
  value set cannot be expanded here);
- ``maxLength`` on string, text and url answers.

The check is pure (no database): the service layer finds the Questionnaire
(fhir_server/service/questionnaires.py) and runs this in the validation pool. A
Questionnaire that cannot be found is a warning, not an error, as in the reference
validator. Errors here are profile-like rules: a write answers 422 with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fhir_server.outcome import Issue
from fhir_server.validation import DEFAULT_MAX_ISSUES
from fhir_server.validation.bindings import BindingContext

QR = "QuestionnaireResponse"
COMPLETE = frozenset({"completed", "amended"})

# item.type -> the answer value[x] properties it allows
ANSWER_TYPES: dict[str, frozenset[str]] = {
    "boolean": frozenset({"valueBoolean"}),
    "decimal": frozenset({"valueDecimal"}),
    "integer": frozenset({"valueInteger"}),
    "date": frozenset({"valueDate"}),
    "dateTime": frozenset({"valueDateTime"}),
    "time": frozenset({"valueTime"}),
    "string": frozenset({"valueString"}),
    "text": frozenset({"valueString"}),
    "url": frozenset({"valueUri"}),
    "choice": frozenset({"valueCoding"}),
    "open-choice": frozenset({"valueCoding", "valueString"}),
    "attachment": frozenset({"valueAttachment"}),
    "reference": frozenset({"valueReference"}),
    "quantity": frozenset({"valueQuantity"}),
}
NO_ANSWERS = frozenset({"group", "display"})
CHOICES = frozenset({"choice", "open-choice"})
_PRIMITIVES = frozenset(
    {"boolean", "decimal", "integer", "date", "dateTime", "time", "string", "uri"}
)
_NUMBERS = frozenset({"Decimal", "Integer"})


def _list(value: Any) -> list[dict[str, Any]]:
    """The objects of a JSON array (anything else is the structural pass's concern)."""
    return [v for v in value if type(v) is dict] if type(value) is list else []


def _value(holder: dict[str, Any], prefix: str) -> tuple[str, Any] | None:
    """(the type suffix, the value) of ``prefix[x]`` in ``holder``: ("Coding", {...})."""
    for key, v in holder.items():
        if key.startswith(prefix) and len(key) > len(prefix) and key[len(prefix)].isupper():
            return key[len(prefix) :], v
    return None


def _of_type(suffix: str) -> str:
    """The FHIRPath type name of a value[x] suffix: "Boolean" -> boolean, "Coding"."""
    name = suffix[0].lower() + suffix[1:]
    return name if name in _PRIMITIVES else suffix


def questionnaire_reference(qr: Any) -> str | None:
    ref = qr.get("questionnaire") if type(qr) is dict else None
    return ref if type(ref) is str and ref else None


def contained_questionnaire(qr: dict[str, Any], ref: str) -> dict[str, Any] | None:
    """The contained Questionnaire ``#id`` names."""
    for r in _list(qr.get("contained")):
        if r.get("resourceType") == "Questionnaire" and f"#{r.get('id')}" == ref:
            return r
    return None


# --- answers compared (enableWhen, answerOption) ---------------------------------------


def _coding_equal(a: Any, b: Any) -> bool:
    if type(a) is not dict or type(b) is not dict or a.get("code") != b.get("code"):
        return False
    sa, sb = a.get("system"), b.get("system")
    return sa is None or sb is None or sa == sb


def _number(value: Any) -> Decimal | None:
    """A JSON number (the parser reads decimals as ``Decimal``); not a boolean."""
    if type(value) is bool:
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    return None


def _equal(ta: str, a: Any, tb: str, b: Any) -> bool:
    if ta in _NUMBERS and tb in _NUMBERS:
        na, nb = _number(a), _number(b)
        return na is not None and na == nb
    if ta != tb:
        return False
    if ta == "Coding":
        return _coding_equal(a, b)
    if ta == "Reference":
        return type(a) is dict and type(b) is dict and a.get("reference") == b.get("reference")
    if ta == "Quantity":
        return _compare(ta, a, tb, b) == 0
    return bool(a == b)


def _compare(ta: str, a: Any, tb: str, b: Any) -> int | None:
    """-1, 0, 1 or None (not comparable)."""
    if ta in _NUMBERS and tb in _NUMBERS:
        na, nb = _number(a), _number(b)
    elif ta == tb == "Quantity" and type(a) is dict and type(b) is dict:
        units = (a.get("system"), a.get("code") or a.get("unit"))
        if units != (b.get("system"), b.get("code") or b.get("unit")):
            return None
        na, nb = _number(a.get("value")), _number(b.get("value"))
    elif ta == tb and ta in ("Date", "DateTime", "Time", "String") and type(a) is type(b) is str:
        # same precision ISO forms order as text; differing precisions are not compared
        if ta != "String" and len(a) != len(b):
            return None
        return (a > b) - (a < b)
    else:
        return None
    if na is None or nb is None:
        return None
    return (na > nb) - (na < nb)


_ORDER = {">": (1,), "<": (-1,), ">=": (0, 1), "<=": (-1, 0)}


# --- the walk --------------------------------------------------------------------------


class _Stop(Exception):
    """The issue limit is reached: the check stops there."""


@dataclass
class _Check:
    questionnaire: dict[str, Any]
    ctx: BindingContext | None
    complete: bool
    max_issues: int
    issues: list[Issue] = field(default_factory=list)
    indexes: dict[int, tuple[list[dict[str, Any]], dict[str, list[tuple[str, Any]]]]] = field(
        default_factory=dict
    )
    link_ids: set[str] | None = None  # every linkId of the Questionnaire, when needed

    def error(self, code: str, message: str, path: str, severity: str = "error") -> None:
        self.issues.append(Issue(code, message, severity, (path,)))
        if len(self.issues) >= self.max_issues:
            raise _Stop

    # enableWhen ---------------------------------------------------------------------

    def _index(self, items: list[dict[str, Any]]) -> dict[str, list[tuple[str, Any]]]:
        """linkId -> the answers (type, value) of the items with it among ``items`` and
        their descendants; built once per item list (enableWhen lookups stay linear)."""
        cached = self.indexes.get(id(items))
        if cached is not None:
            return cached[1]
        out: dict[str, list[tuple[str, Any]]] = {}
        stack = list(items)
        while stack:
            it = stack.pop()
            answers = _list(it.get("answer"))
            link_id = it.get("linkId")
            if type(link_id) is str:
                found = out.setdefault(link_id, [])
                found.extend(v for a in answers if (v := _value(a, "value")) is not None)
            stack.extend(_list(it.get("item")))
            for a in answers:
                stack.extend(_list(a.get("item")))
        self.indexes[id(items)] = (items, out)  # the list held: its id stays its own
        return out

    def _answers(self, link_id: str, scopes: list[list[dict[str, Any]]]) -> list[tuple[str, Any]]:
        """The answers to question ``link_id``: of the nearest occurrence, looking from
        the innermost enclosing item list outwards (repeated groups answer apart)."""
        for items in reversed(scopes):
            found = self._index(items).get(link_id)
            if found is not None:
                return found
        return []

    def enabled(self, qitem: dict[str, Any], scopes: list[list[dict[str, Any]]]) -> bool:
        conditions = _list(qitem.get("enableWhen"))
        if not conditions:
            return True
        results = [self._condition(c, scopes) for c in conditions]
        return any(results) if qitem.get("enableBehavior") == "any" else all(results)

    def _condition(self, c: dict[str, Any], scopes: list[list[dict[str, Any]]]) -> bool:
        question, op, expected = c.get("question"), c.get("operator"), _value(c, "answer")
        if type(question) is not str or expected is None:
            return False
        answers = self._answers(question, scopes)
        if op == "exists":
            return expected[1] is bool(answers)
        if op == "=":
            return any(_equal(t, v, *expected) for t, v in answers)
        if op == "!=":
            # R4 questionnaire-enable-operator: "True if ... no answer has a value that is
            # equal to the enableWhen answer" (a question not answered is not enabling)
            return bool(answers) and not any(_equal(t, v, *expected) for t, v in answers)
        wanted = _ORDER.get(op) if type(op) is str else None
        if wanted is None:
            return False
        return any(_compare(t, v, *expected) in wanted for t, v in answers)

    # items --------------------------------------------------------------------------

    def items(
        self,
        items: list[dict[str, Any]],
        qitems: list[dict[str, Any]],
        path: str,
        scopes: list[list[dict[str, Any]]],
    ) -> None:
        """The response ``items`` (at ``path``.item) against the Questionnaire's
        ``qitems`` at the same level."""
        scopes = [*scopes, items]
        by_link = {q.get("linkId"): (n, q) for n, q in enumerate(qitems)}
        seen: dict[str, int] = {}
        last = -1
        for i, item in enumerate(items):
            where = f"{path}.item[{i}]"
            link_id = item.get("linkId")
            if type(link_id) is not str:
                continue  # linkId 1..1: the structural pass reports it
            found = by_link.get(link_id)
            if found is None:
                message = f"linkId {link_id!r} is not an item of the Questionnaire at this level"
                if link_id in self._all_link_ids():
                    message += " (it is one at another level: check the nesting)"
                self.error("structure", message, where)
                continue
            n, qitem = found
            if n < last:
                message = f"Item {link_id!r} is out of the Questionnaire's order"
                self.error("structure", message, where)
            last = max(last, n)
            if link_id in seen and not (qitem.get("type") == "group" and qitem.get("repeats")):
                message = (
                    f"Item {link_id!r} occurs more than once, and it is not a repeating group "
                    "(a repeating question has its answers in one item)"
                )
                self.error("structure", message, where)
            seen.setdefault(link_id, i)
            self.item(item, qitem, where, scopes)
        for qitem in qitems:
            link_id = qitem.get("linkId")
            if (
                qitem.get("required") is True
                and self.complete
                and qitem.get("type") != "display"
                and link_id not in seen
                and self.enabled(qitem, scopes)
            ):
                message = f"Required item {link_id!r} is missing from the completed response"
                self.error("required", message, path)

    def _all_link_ids(self) -> set[str]:
        if self.link_ids is None:
            self.link_ids = set()
            stack = _list(self.questionnaire.get("item"))
            while stack:
                q = stack.pop()
                if type(q.get("linkId")) is str:
                    self.link_ids.add(q["linkId"])
                stack.extend(_list(q.get("item")))
        return self.link_ids

    def item(
        self,
        item: dict[str, Any],
        qitem: dict[str, Any],
        where: str,
        scopes: list[list[dict[str, Any]]],
    ) -> None:
        kind = qitem.get("type")
        link_id = item["linkId"]
        answers = _list(item.get("answer"))
        children = _list(item.get("item"))
        qchildren = _list(qitem.get("item"))
        if not self.enabled(qitem, scopes):
            if answers or children:
                message = (
                    f"Item {link_id!r} has answers, but it is not enabled (its enableWhen "
                    "conditions are not met)"
                )
                self.error("business-rule", message, where)
            return
        if kind in NO_ANSWERS:
            if answers:
                message = f"Item {link_id!r} is a {kind} item, which has no answers"
                self.error("structure", message, f"{where}.answer[0]")
            self.items(children, qchildren, where, scopes)
            return
        if children:
            message = (
                f"Item {link_id!r} is a question: its nested items belong in answer.item, "
                "not item.item"
            )
            self.error("structure", message, f"{where}.item[0]")
        if not answers and qitem.get("required") is True and self.complete:
            message = f"Required item {link_id!r} has no answer in the completed response"
            self.error("required", message, where)
        if len(answers) > 1 and qitem.get("repeats") is not True:
            message = f"Item {link_id!r} does not repeat, but has {len(answers)} answers"
            self.error("structure", message, f"{where}.answer[1]")
        for j, answer in enumerate(answers):
            at = f"{where}.answer[{j}]"
            value = _value(answer, "value")
            if value is not None and type(kind) is str:
                self.answer(qitem, kind, value, at)
            nested = _list(answer.get("item"))
            if nested or qchildren:
                self.items(nested, qchildren, at, scopes)

    def answer(self, qitem: dict[str, Any], kind: str, value: tuple[str, Any], at: str) -> None:
        suffix, v = value
        key = f"value{suffix}"
        where = f"{at}.value.ofType({_of_type(suffix)})"
        allowed = ANSWER_TYPES.get(kind)
        if allowed is None:
            return  # an unknown item.type: the Questionnaire's own validation says so
        options = _list(qitem.get("answerOption"))
        if kind in CHOICES:
            # an option's own type (integer, date, time, string, Reference) is allowed too
            allowed = allowed | {f"value{ov[0]}" for o in options if (ov := _value(o, "value"))}
        if key not in allowed:
            expected = " or ".join(sorted(allowed))
            message = (
                f"Item {qitem.get('linkId')!r} is of type {kind}: its answers are {expected}, "
                f"not {key}"
            )
            self.error("structure", message, where)
            return
        max_length = qitem.get("maxLength")
        if type(max_length) is int and type(v) is str and len(v) > max_length:
            # valueString or valueUri: the types string, text, url and open-choice take
            message = (
                f"The answer is {len(v)} characters long; item {qitem.get('linkId')!r} "
                f"allows {max_length} (maxLength)"
            )
            self.error("value", message, where)
        if kind not in CHOICES:
            return
        if kind == "open-choice" and key == "valueString":
            return  # the free-text answer
        if options:
            if not any(
                (ov := _value(o, "value")) is not None and _equal(ov[0], ov[1], suffix, v)
                for o in options
            ):
                message = f"The answer is not one of item {qitem.get('linkId')!r}'s answerOptions"
                self.error("value", message, where, "error" if kind == "choice" else "warning")
            return
        value_set = qitem.get("answerValueSet")
        if type(value_set) is str and key == "valueCoding" and type(v) is dict:
            self.in_value_set(qitem, kind, value_set, v, where)

    def in_value_set(
        self, qitem: dict[str, Any], kind: str, url: str, coding: dict[str, Any], where: str
    ) -> None:
        code, system = coding.get("code"), coding.get("system")
        if type(code) is not str:
            return
        members = self._members(url)
        if members is None:
            message = (
                f"The value set {url} (answerValueSet of item {qitem.get('linkId')!r}) cannot "
                "be expanded here, so the answer is not checked against it"
            )
            self.error("not-found", message, where, "warning")
            return
        known = members.get(system) if type(system) is str else None
        if known is not None and code in known:
            return
        if type(system) is not str and any(code in codes for codes in members.values()):
            return
        label = f"{system or ''}#{code}"
        message = f"The Coding {label} is not in the value set {url} (answerValueSet)"
        self.error("code-invalid", message, where, "error" if kind == "choice" else "warning")

    def _members(self, url: str) -> dict[str | None, set[str]] | None:
        """system -> codes of the value set (a contained one, ``#id``, enumerated in
        the Questionnaire itself, or one the server's terminology expands)."""
        if url.startswith("#"):
            for r in _list(self.questionnaire.get("contained")):
                if r.get("resourceType") == "ValueSet" and f"#{r.get('id')}" == url:
                    return _enumerated(r)
            return None
        if self.ctx is None:
            return None
        content = self.ctx.content(url)
        if content is None:
            return None
        return {s: set(codes) for s, codes in content.systems.items()}


def _enumerated(vs: dict[str, Any]) -> dict[str | None, set[str]] | None:
    """The members of a value set listed in full (an expansion, or includes that list
    their concepts); None when it needs the terminology service (filters, imports)."""
    out: dict[str | None, set[str]] = {}
    expansion = vs.get("expansion")
    if type(expansion) is dict:
        stack = _list(expansion.get("contains"))
        while stack:
            c = stack.pop()
            if type(c.get("code")) is str:
                out.setdefault(c.get("system"), set()).add(c["code"])
            stack.extend(_list(c.get("contains")))
        return out
    compose = vs.get("compose")
    includes = _list(compose.get("include")) if type(compose) is dict else []
    if not includes or (type(compose) is dict and compose.get("exclude")):
        return None
    for inc in includes:
        concepts = _list(inc.get("concept"))
        if not concepts or inc.get("filter") or inc.get("valueSet"):
            return None
        codes = out.setdefault(inc.get("system"), set())
        codes.update(c["code"] for c in concepts if type(c.get("code")) is str)
    return out


def questionnaire_issues(
    qr: Any,
    questionnaire: dict[str, Any] | None,
    max_issues: int = DEFAULT_MAX_ISSUES,
    ctx: BindingContext | None = None,
) -> list[Issue]:
    """The issues of the response ``qr`` against ``questionnaire`` (None: the one it
    names was not found: a warning). Never raises on malformed input."""
    if type(qr) is not dict or qr.get("resourceType") != QR:
        return []
    ref = questionnaire_reference(qr)
    if ref is None:
        return []
    if questionnaire is None:
        message = (
            f"The Questionnaire {ref} is not known here, so the answers are not checked against it"
        )
        return [Issue("not-found", message, "warning", (f"{QR}.questionnaire",))]
    check = _Check(questionnaire, ctx, qr.get("status") in COMPLETE, max(1, max_issues))
    try:
        check.items(_list(qr.get("item")), _list(questionnaire.get("item")), QR, [])
    except _Stop:
        message = f"The check against the Questionnaire stopped after {max_issues} issues"
        check.issues.append(Issue("too-costly", message, "information"))
    return check.issues
