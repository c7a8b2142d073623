"""[type]/$validate and [type]/[id]/$validate (resource-operation-validate.html): would
this content be accepted, in general or as a create, an update or a delete? The answer
is an OperationOutcome listing the issues; nothing is ever written.

The checks are the ones the write interactions make (service/resources.py): base
specification validation, the id rules of create and update, update-as-create being
allowed, If-Match; for a delete, that there is a live resource to delete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_server.outcome import FhirError, Issue, bad_request, operation_outcome
from fhir_server.service.parameters import Parameter, is_parameters, read_parameters
from fhir_server.service.resources import ResourceService, check_id, check_version_match
from fhir_server.validation import DEFAULT_MAX_ISSUES, validate_resource

MODES = ("create", "update", "delete")
INSTANCE_MODES = frozenset({"update", "delete"})
ALL_OK = Issue("informational", "All OK", severity="information")


@dataclass(frozen=True, slots=True)
class ValidateRequest:
    """The operation's inputs: ``resource`` (when ``has_resource``), ``mode``, ``profile``."""

    resource: Any = None
    has_resource: bool = False
    mode: str | None = None
    profile: str | None = None


def validation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """The operation's result: the issues, or one "All OK" when there are none."""
    return operation_outcome(issues or [ALL_OK])


# --- reading the request -------------------------------------------------------------------


def validate_request(
    resource_type: str, body: Any, mode: str | None, profile: str | None
) -> ValidateRequest:
    """The inputs from the body (the resource itself, a Parameters resource, or none)
    and the URL's ``mode`` and ``profile``."""
    if body is None:
        return ValidateRequest(mode=mode, profile=profile)
    if _is_operation_parameters(resource_type, body):
        return _from_parameters(body, mode, profile)
    if not isinstance(body, dict):
        raise bad_request("The body must be a resource, or a Parameters resource with one")
    return ValidateRequest(body, True, mode, profile)


def _is_operation_parameters(resource_type: str, body: Any) -> bool:
    """A Parameters body holds the operation's inputs, except when validating the type
    Parameters itself: then only if it carries a ``resource`` parameter with one."""
    if not is_parameters(body):
        return False
    if resource_type != "Parameters":
        return True
    items = body.get("parameter")
    return isinstance(items, list) and any(
        isinstance(p, dict) and p.get("name") == "resource" and "resource" in p for p in items
    )


def _from_parameters(
    body: dict[str, Any], mode: str | None, profile: str | None
) -> ValidateRequest:
    resource, has_resource = None, False
    seen: set[str] = set()
    for p in read_parameters(body):
        if p.name in seen:
            raise bad_request(f"Parameter {p.name!r} is given more than once", p.path)
        seen.add(p.name)
        if p.name == "resource":
            if p.resource is None:
                raise bad_request("Parameter 'resource' must hold a resource", p.path)
            resource, has_resource = p.resource, True
        elif p.name == "mode":
            mode = _merged(mode, _text(p, "valueCode"), "mode")
        elif p.name == "profile":
            profile = _merged(profile, _text(p, "valueUri", "valueCanonical"), "profile")
        else:
            raise FhirError.of(
                400, "not-supported", f"Unknown parameter {p.name!r} for $validate", p.path
            )
    return ValidateRequest(resource, has_resource, mode, profile)


def _text(p: Parameter, *kinds: str) -> str:
    if not isinstance(p.value, str) or not p.has_value:
        raise bad_request(f"Parameter {p.name!r} must have a {' or '.join(kinds)}", p.path)
    return p.value


def _merged(url_value: str | None, body_value: str, name: str) -> str:
    if url_value is not None and url_value != body_value:
        raise bad_request(f"{name} is given in the URL and the body with different values", name)
    return body_value


def check_request(req: ValidateRequest, instance: bool) -> None:
    """400 for inputs this server cannot act on (the spec: a profile the server cannot
    validate against SHALL be an error, not silently ignored)."""
    if req.profile is not None:
        raise FhirError.of(
            400,
            "not-supported",
            f"Validation against a profile ({req.profile}) is not supported yet; only the "
            "base specification is checked",
            "profile",
        )
    if req.mode is not None and req.mode not in MODES:
        if req.mode == "profile":
            raise FhirError.of(400, "not-supported", "mode=profile is not supported", "mode")
        raise bad_request(f"mode must be one of {', '.join(MODES)}, got {req.mode!r}", "mode")
    if req.mode in INSTANCE_MODES and not instance:
        raise bad_request(
            f"mode={req.mode} applies to a resource instance: POST [type]/[id]/$validate",
            "mode",
        )
    if req.mode != "delete" and not req.has_resource:
        raise bad_request("A resource to validate is required unless mode is delete", "resource")


# --- the checks ------------------------------------------------------------------------------


def content_issues(
    resource_type: str,
    resource: Any,
    mode: str | None,
    r4b_models: bool = False,
    max_issues: int = DEFAULT_MAX_ISSUES,
) -> list[Issue]:
    """Base-specification validation, as a write would do it (create ignores the id)."""
    if isinstance(resource, dict):
        actual = resource.get("resourceType")
        if isinstance(actual, str) and actual != resource_type:
            message = f"resourceType {actual!r} does not match the request's type {resource_type!r}"
            return [Issue("invalid", message, expression=("resourceType",))]
    notes: list[Issue] = []
    if mode == "create" and isinstance(resource, dict) and "id" in resource:
        # http.html#create: the id in a create is ignored (the server assigns one)
        resource = {k: v for k, v in resource.items() if k != "id"}
        message = "The id is ignored by a create; the server assigns a new one"
        notes.append(Issue("informational", message, "information", (f"{resource_type}.id",)))
    issues = validate_resource(
        resource, resource_type, r4b_models=r4b_models, max_issues=max_issues
    )
    return issues + notes


def id_issues(resource_type: str, resource_id: str, resource: Any) -> list[Issue]:
    """http.html#update: the resource's id must be the URL's."""
    if not isinstance(resource, dict):
        return []
    where = (f"{resource_type}.id",)
    body_id = resource.get("id")
    if body_id is None:
        message = "The resource must have an id equal to the id in the URL (http.html#update)"
        return [Issue("required", message, expression=where)]
    if body_id != resource_id:
        message = f"The resource id {body_id!r} does not match the URL id {resource_id!r}"
        return [Issue("invalid", message, expression=where)]
    return []


def _version_issues(current: Any, if_match: int | None) -> list[Issue]:
    try:
        check_version_match(current, if_match)
    except FhirError as exc:
        return list(exc.issues)
    return []


class ValidateService:
    def __init__(self, resources: ResourceService) -> None:
        self.resources = resources

    async def run(
        self,
        resource_type: str,
        resource_id: str | None,
        req: ValidateRequest,
        if_match: int | None = None,
    ) -> list[Issue]:
        """The issues (empty: the content would be accepted in this mode)."""
        check_request(req, resource_id is not None)
        if resource_id is not None:
            check_id(resource_id)
        if req.mode == "delete":
            assert resource_id is not None
            return await self._delete(resource_type, resource_id, if_match)
        settings = self.resources.settings
        issues = await self.resources.offload.call(
            content_issues,
            resource_type,
            req.resource,
            req.mode,
            settings.validate_r4b_models,
            settings.validation_max_issues,
        )
        if req.mode == "update":
            assert resource_id is not None
            issues += await self._update(resource_type, resource_id, req.resource, if_match)
        return issues

    async def _update(
        self, resource_type: str, resource_id: str, resource: Any, if_match: int | None
    ) -> list[Issue]:
        issues = id_issues(resource_type, resource_id, resource)
        current = await self.resources.storage.read_current(resource_type, resource_id)
        issues += _version_issues(current, if_match)
        if current is None and not self.resources.settings.allow_update_create:
            message = (
                f"{resource_type}/{resource_id} does not exist and this server does not "
                "allow update-as-create"
            )
            issues.append(Issue("not-supported", message))
        return issues

    async def _delete(
        self, resource_type: str, resource_id: str, if_match: int | None
    ) -> list[Issue]:
        current = await self.resources.storage.read_current(resource_type, resource_id)
        if current is None:
            return [Issue("not-found", f"{resource_type}/{resource_id} is not known")]
        if current.deleted:
            message = f"{resource_type}/{resource_id} is already deleted"
            return [Issue("deleted", message)]
        return _version_issues(current, if_match)
