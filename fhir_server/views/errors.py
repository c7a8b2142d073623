"""The two ways a view can fail, each naming the element at fault.

``expression`` is a FHIRPath-like location in the ViewDefinition (such as
``ViewDefinition.select[0].column[1].path``) so that an OperationOutcome can point at it.
"""

from __future__ import annotations


class ViewError(ValueError):
    """Base of view errors: a message and the ViewDefinition element it is about."""

    def __init__(self, message: str, expression: str = "ViewDefinition") -> None:
        super().__init__(f"{expression}: {message}")
        self.message = message
        self.expression = expression


class ViewDefinitionError(ViewError):
    """The ViewDefinition is invalid: found before any resource is read."""


class ViewRunError(ViewError):
    """Evaluating a valid view on a resource failed (a column with several values but no
    ``collection: true``, a ``where`` that is not boolean...)."""

    def __init__(
        self, message: str, expression: str = "ViewDefinition", resource: str | None = None
    ) -> None:
        super().__init__(message if resource is None else f"{message} (in {resource})", expression)
        self.resource = resource
