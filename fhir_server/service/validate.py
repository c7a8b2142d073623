"""[type]/$validate and [type]/[id]/$validate (resource-operation-validate.html): would
this content be accepted, in general or as a create, an update or a delete? The answer
is an OperationOutcome listing the issues; nothing is ever written.

The checks are the ones the write interactions make (service/resources.py): base
specification validation, the profiles of ``meta.profile`` the server holds, the id
rules of create and update, update-as-create being allowed, If-Match; for a delete,
that there is a live resource to delete; for a QuestionnaireResponse, its
Questionnaire's rules (with the warnings a write drops). ``profile`` adds a stored
profile to validate against (profiles/); ``mode=profile`` validates the stored resource
against it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

from fhir_server.jsonio import load_stored
from fhir_server.outcome import FhirError, Issue, bad_request, operation_outcome
from fhir_server.service.parameters import Parameter, is_parameters, read_parameters
from fhir_server.service.resources import ResourceService, check_id, check_version_match
from fhir_server.validation import DEFAULT_MAX_ISSUES, BindingContext, validate_resource
from profiles.compile import CompiledProfile, ProfileError
from profiles.extensions import extension_issues, extension_urls, find_extensions
from profiles.registry import declared_profiles, held, profile_issues, required_gaps

MODES = ("create", "update", "delete", "profile")
INSTANCE_MODES = frozenset({"update", "delete", "profile"})
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
    """400 for inputs this server cannot act on (a profile it does not hold is refused
    later, by ``ValidateService._profiles``)."""
    if req.mode is not None and req.mode not in MODES:
        raise bad_request(f"mode must be one of {', '.join(MODES)}, got {req.mode!r}", "mode")
    if req.mode in INSTANCE_MODES and not instance:
        raise bad_request(
            f"mode={req.mode} applies to a resource instance: POST [type]/[id]/$validate",
            "mode",
        )
    if req.mode == "profile":
        # resource-validation-mode#profile: an existing resource, nominated by id (not
        # provided as a parameter), checked against the nominated profile
        if req.profile is None:
            raise bad_request("mode=profile needs a profile to validate against", "profile")
        if req.has_resource:
            raise bad_request(
                "mode=profile validates the stored resource: send no resource", "resource"
            )
        return
    if req.mode != "delete" and not req.has_resource:
        raise bad_request("A resource to validate is required unless mode is delete", "resource")


# --- the checks ------------------------------------------------------------------------------


def content_issues(
    resource_type: str,
    resource: Any,
    mode: str | None,
    r4b_models: bool = False,
    max_issues: int = DEFAULT_MAX_ISSUES,
    bindings: BindingContext | None = None,
    invariants: bool = True,
) -> list[Issue]:
    """Base-specification validation, as a write would do it (create ignores the id),
    with the warnings a write does not show (extensible bindings, unknown code systems,
    wrong displays)."""
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
        resource,
        resource_type,
        r4b_models=r4b_models,
        max_issues=max_issues,
        bindings=bindings,
        invariants=invariants,
        best_practice=True,
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
        if req.mode == "profile":
            assert resource_id is not None
            stored = await self.resources.read(resource_type, resource_id)  # 404, 410
            assert stored.raw is not None
            req = replace(req, resource=load_stored(stored.raw), has_resource=True, mode=None)
        profiles, gaps = await self._profiles(req)
        settings = self.resources.settings
        issues = await self.resources.with_bindings(
            functools.partial(
                content_issues,
                resource_type,
                req.resource,
                req.mode,
                settings.validate_r4b_models,
                settings.validation_max_issues,
                # $validate is asked for a full answer, as the HL7 validator gives: the
                # base invariants always, whatever FHIR_VALIDATE_INVARIANTS says of writes
                invariants=True,
            )
        )
        if isinstance(req.resource, dict) and req.resource.get("resourceType") == resource_type:
            issues += await self.resources.answer_issues(resource_type, req.resource)
        issues += gaps
        for chosen, severity in profiles:
            issues += await self.resources.offload.call(
                profile_issues, req.resource, chosen, severity, settings.validation_max_issues
            )
        issues += await self._extensions(req.resource)
        if req.mode == "update":
            assert resource_id is not None
            issues += await self._update(resource_type, resource_id, req.resource, if_match)
        return issues

    async def _profiles(
        self, req: ValidateRequest
    ) -> tuple[list[tuple[list[CompiledProfile], str]], list[Issue]]:
        """The profiles to validate against, with the severity of their errors: the
        nominated one (400 if the server does not hold it: resource-operation-validate
        says a profile the server cannot validate against SHALL be an error), and those
        of ``meta.profile`` the server holds and the required ones of the type, as a
        write would check them (warnings for profiles enforced with ``warn``); and an
        error for each required profile the server does not hold."""
        declared = declared_profiles(req.resource) if req.has_resource else []
        enforcement = self.resources.enforcement
        urls = ([req.profile] if req.profile is not None else []) + declared
        urls += enforcement.required_for(req.resource) if req.has_resource else ()
        registry = self.resources.profiles
        if not urls or registry is None:
            if req.profile is not None:
                message = "This server does not validate against profiles"
                raise FhirError.of(400, "not-supported", message, "profile")
            return [], []
        found = await registry.resolve(urls)
        out: list[tuple[list[CompiledProfile], str]] = []
        if req.profile is not None:
            nominated = found[req.profile]
            if nominated is None:
                message = (
                    f"The profile {req.profile} is not known to this server (no "
                    "StructureDefinition has that url)"
                )
                raise FhirError.of(400, "not-found", message, "profile")
            if isinstance(nominated, ProfileError):
                message = f"The profile {req.profile} cannot be validated against: {nominated}"
                raise FhirError.of(400, "not-supported", message, "profile")
            out.append((nominated, "error"))
        required = enforcement.required_for(req.resource) if req.has_resource else ()
        required = tuple(u for u in required if u != req.profile)
        rest = [u for u in declared if u != req.profile and u not in required]
        if held(found, required):
            out.append((held(found, required), "error"))
        for severity in ("error", "warning"):
            mode = "reject" if severity == "error" else "warn"
            chosen = held(found, [u for u in rest if enforcement.mode(u) == mode])
            if chosen:
                out.append((chosen, severity))
        return out, required_gaps(found, req.resource, required)

    async def _extensions(self, resource: Any) -> list[Issue]:
        """The resource's extensions against their definitions, as a write checks them
        (profiles/extensions.py), with the warnings of unknown ones."""
        registry = self.resources.profiles
        found = find_extensions(resource)
        if registry is None or not found:
            return []
        settings = self.resources.settings
        definitions = await registry.resolve(extension_urls(found))
        severity = "error" if settings.profile_enforcement == "reject" else "warning"
        return await self.resources.offload.call(
            extension_issues, resource, found, definitions, settings.unknown_extensions, severity
        )

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
