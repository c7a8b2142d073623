"""A compiled fast path for the simple FHIRPath most view columns are made of.

Most columns are a chain of element names with a few functions, e.g.
``code.coding.code.first()``, ``value.ofType(Quantity).value`` or
``subject.getReferenceKey(Patient)``. fhirpathpy interprets such a chain by walking its
syntax tree and wrapping every value in a node, which made it the bound of a view's
throughput (~3,300 rows/s for a 10-column view). Here a chain is compiled once into
steps that walk the resource's dicts directly, computing each value's type path the way
fhirpathpy does (``pathsDefinedElsewhere``, choice types, ``path2Type``), so that the
result is the interpreter's, value for value and type for type.

A chain qualifies when every step is an element name (lower-case, no backticks) or one of
``first()``, ``exists()`` (last), ``ofType(T)``, ``getResourceKey()`` and
``getReferenceKey([T])``. Where the data holds what the interpreter treats specially, a
primitive's ``_name`` companion (its id or extensions) or a null in a list, the step
raises ``Fallback`` and that evaluation is left to the interpreter; so are expressions
the compiler does not know (``compile_chain`` gives None).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from fhirpathpy.engine.nodes import ResourceNode, TypeInfo

Item = tuple[Any, str | None]  # a value and its fhirpathpy type path
Step = Callable[[list[Item]], list[Item]]


class Fallback(Exception):
    """This evaluation needs the interpreter (see the module's docstring)."""


class _Results(list[Any]):
    """Plain values a function gave (keys, booleans): no more navigation from them."""


# --- type paths, as fhirpathpy's member invocation computes them ------------------------


class _Types:
    """The model's path tables, with each (parent path, name) resolution cached."""

    def __init__(self, model: Mapping[str, Any]) -> None:
        self.elsewhere: Mapping[str, str] = model["pathsDefinedElsewhere"]
        self.choices: Mapping[str, list[str]] = model["choiceTypePaths"]
        self.path2type: Mapping[str, str] = model["path2Type"]
        self._children: dict[tuple[str | None, str], tuple[str, tuple[str, ...] | None]] = {}
        self._of_type: dict[tuple[str, str, bool], bool] = {}

    def child(self, parent: str | None, key: str) -> tuple[str, tuple[str, ...] | None]:
        """The child's path before its type is applied, and its choice types if any."""
        found = self._children.get((parent, key))
        if found is None:
            path = f"{parent}.{key}" if parent else f"_.{key}"
            path = self.elsewhere.get(path, path)
            choices = self.choices.get(path)
            found = (path, tuple(choices) if choices else None)
            self._children[(parent, key)] = found
        return found

    def typed(self, path: str) -> str:
        return self.path2type.get(path, path)

    def is_of(self, path: str, wanted: str) -> bool:
        """ofType's test, fhirpathpy's own (its answer depends on whether a model is
        loaded into TypeInfo, so the cache is keyed on that too)."""
        key = (path, wanted, TypeInfo.model is not None)
        found = self._of_type.get(key)
        if found is None:
            info = ResourceNode(None, path).get_type_info()
            found = info is not None and info.is_(TypeInfo(name=wanted, namespace=None))
            self._of_type[key] = found
        return found


def _node_path(data: Any, path: str | None) -> str | None:
    """A resource (a contained one too) is typed by its resourceType, as nodes are."""
    if isinstance(data, Mapping) and "resourceType" in data:
        return str(data["resourceType"])
    return path


# --- steps ---------------------------------------------------------------------------------


def _member(types: _Types, key: str) -> Step:
    underscore = f"_{key}"
    extension = key == "extension"
    # parent path -> (the child's type path if not a choice, its choices, its path)
    resolved: dict[str | None, tuple[str, tuple[str, ...] | None, str]] = {}

    def resolve(parent: str | None) -> tuple[str, tuple[str, ...] | None, str]:
        path, choices = types.child(parent, key)
        found = (types.typed("Extension" if extension else path), choices, path)
        resolved[parent] = found
        return found

    def step(items: list[Item]) -> list[Item]:
        if isinstance(items, _Results):
            raise Fallback
        out: list[Item] = []
        for data, parent in items:
            if not isinstance(data, dict):
                if key == "length" or isinstance(data, Mapping):
                    raise Fallback  # a string's length, or a mapping of another kind
                continue
            typed, choices, path = resolved.get(parent) or resolve(parent)
            if choices is not None:
                value = None
                for choice in choices:
                    field = key + choice
                    value = data.get(field)
                    if "_" + field in data:
                        raise Fallback
                    if value is not None:
                        typed = types.typed(path + choice)
                        break
            else:
                if underscore in data:
                    raise Fallback
                value = data.get(key)
            if value is None:
                continue
            if isinstance(value, list):
                for element in value:
                    if element is None:
                        raise Fallback
                    if isinstance(element, dict) and "resourceType" in element:
                        out.append((element, str(element["resourceType"])))
                    else:
                        out.append((element, typed))
            elif isinstance(value, dict) and "resourceType" in value:
                out.append((value, str(value["resourceType"])))
            else:
                out.append((value, typed))
        return out

    return step


def _first(items: list[Item]) -> list[Item]:
    return _Results(items[:1]) if isinstance(items, _Results) else items[:1]


def _exists(items: list[Item]) -> list[Item]:
    return _Results([len(items) > 0])


def _of_type(types: _Types, wanted: str) -> Step:
    def step(items: list[Item]) -> list[Item]:
        if isinstance(items, _Results):
            raise Fallback
        kept: list[Item] = []
        for data, path in items:
            if path is None or path.startswith("System."):
                raise Fallback
            if types.is_of(path, wanted):
                kept.append((data, path))
        return kept

    return step


def _resource_key(items: list[Item]) -> list[Item]:
    return _Results(
        [
            data["id"]
            for data, _ in items
            if isinstance(data, Mapping) and "resourceType" in data and "id" in data
        ]
    )


def _reference_key(reference_key: Callable[..., list[Any]], wanted: str | None) -> Step:
    """getReferenceKey through the view's own function (fhirpath.py), given plain data."""
    target = TypeInfo(name=wanted, namespace=None) if wanted is not None else None

    def step(items: list[Item]) -> list[Item]:
        if isinstance(items, _Results):
            raise Fallback
        data = [d for d, _ in items]
        return _Results(reference_key({}, data, target) if target else reference_key({}, data))

    return step


# --- compiling -----------------------------------------------------------------------------


def _identifier(node: Mapping[str, Any]) -> str | None:
    """The plain identifier a term is (``Quantity`` in ``ofType(Quantity)``), if it is one."""
    chain = node
    for kind in ("TermExpression", "InvocationTerm", "MemberInvocation", "Identifier"):
        if chain.get("type") != kind:
            return None
        if kind == "Identifier":
            text = chain.get("text")
            return text if isinstance(text, str) and "`" not in text else None
        children = chain.get("children") or []
        if len(children) != 1:
            return None
        chain = children[0]
    return None


class _Compiler:
    def __init__(self, types: _Types, reference_key: Callable[..., list[Any]]) -> None:
        self.types = types
        self.reference_key = reference_key
        self.steps: list[Step] = []
        self.ended = False  # exists() must be the last step

    def add(self, step: Step) -> None:
        if self.ended:
            raise _NotSimple
        self.steps.append(step)

    def chain(self, node: Mapping[str, Any]) -> None:
        kind = node.get("type")
        children = node.get("children") or []
        if kind == "InvocationExpression" and len(children) == 2:
            self.chain(children[0])
            self.invocation(children[1])
        elif kind == "TermExpression" and len(children) == 1:
            term = children[0]
            if term.get("type") != "InvocationTerm" or len(term.get("children") or []) != 1:
                raise _NotSimple
            self.invocation(term["children"][0])
        else:
            raise _NotSimple

    def invocation(self, node: Mapping[str, Any]) -> None:
        kind = node.get("type")
        children = node.get("children") or []
        if len(children) != 1:
            raise _NotSimple
        if kind == "MemberInvocation":
            name = children[0].get("text")
            if children[0].get("type") != "Identifier" or not isinstance(name, str):
                raise _NotSimple
            if not name[:1].islower() or "`" in name:
                raise _NotSimple  # a type name filters by resourceType: the interpreter's
            self.add(_member(self.types, name))
        elif kind == "FunctionInvocation":
            self.function(children[0])
        else:
            raise _NotSimple

    def function(self, node: Mapping[str, Any]) -> None:
        parts = node.get("children") or []
        if node.get("type") != "Functn" or not parts or parts[0].get("type") != "Identifier":
            raise _NotSimple
        name = parts[0].get("text")
        params = parts[1].get("children") or [] if len(parts) > 1 else []
        args = [_identifier(p) for p in params]
        if any(a is None for a in args):
            raise _NotSimple
        if name == "first" and not args:
            self.add(_first)
        elif name == "exists" and not args:
            self.add(_exists)
            self.ended = True
        elif name == "ofType" and len(args) == 1:
            self.add(_of_type(self.types, str(args[0])))
        elif name == "getResourceKey" and not args:
            self.add(_resource_key)
        elif name == "getReferenceKey" and len(args) <= 1:
            self.add(_reference_key(self.reference_key, args[0] if args else None))
        else:
            raise _NotSimple


class _NotSimple(Exception):
    pass


class Chain:
    """A compiled chain: ``chain(focus)`` is the interpreter's result for it, or raises
    Fallback."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps

    def __call__(self, focus: Any) -> list[Any]:
        items = self._items(focus)
        if isinstance(items, _Results):
            return list(items)
        return [ResourceNode(data, path) for data, path in items]

    def values(self, focus: Any) -> list[Any]:
        """The result as JSON values, as ``to_value`` gives them for the nodes the
        interpreter would return, without making the nodes: floats as Decimal, and no
        placeholder (a null, or a primitive's ``_name`` object)."""
        items = self._items(focus)
        if isinstance(items, _Results):
            return list(items)
        out = []
        for data, path in items:
            if data is None:
                continue
            if isinstance(data, float):
                data = Decimal(str(data))
            elif isinstance(data, dict) and _is_primitive(path):
                continue
            out.append(data)
        return out

    def _items(self, focus: Any) -> list[Item]:
        items: list[Item] = []
        for item in focus if isinstance(focus, list) else [focus]:
            if isinstance(item, ResourceNode):
                if not isinstance(item.data, dict):
                    raise Fallback  # a primitive or a FHIRPath value: the interpreter's
                items.append((item.data, item.path))
            elif isinstance(item, Mapping):
                items.append((item, _node_path(item, None)))
            else:
                raise Fallback
        for step in self.steps:
            items = step(items)
        return items


def _is_primitive(path: str | None) -> bool:
    """A primitive type's path (``code``, ``dateTime``): a mapping there is a ``_name``."""
    return isinstance(path, str) and "." not in path and path[:1].islower()


def compile_chain(
    root: Mapping[str, Any], model: Mapping[str, Any], reference_key: Callable[..., list[Any]]
) -> Chain | None:
    """The fast form of a parsed expression, or None when it is not a simple chain."""
    compiler = _Compiler(_types_for(model), reference_key)
    try:
        compiler.chain(root)
    except _NotSimple:
        return None
    return Chain(compiler.steps)


_TYPES: dict[int, _Types] = {}


def _types_for(model: Mapping[str, Any]) -> _Types:
    found = _TYPES.get(id(model))
    if found is None:
        found = _TYPES[id(model)] = _Types(model)
    return found
