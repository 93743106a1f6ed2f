"""What every app's API router shares: the error it raises, the error shape every operation
documents, text PostgreSQL can store, and the role check.

The project's `NinjaAPI` (kwala_site.api) turns ApiError into the one error envelope
``{"error": {"code", "message", "details"}}``; routers raise it and never build responses.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from django.http import HttpRequest
from ninja import Field, Schema
from pydantic import AfterValidator

from flows.models import Membership
from flows.permissions import has_role

Role = Membership.Role


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list | None = None):
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        super().__init__(message)


class ErrorBody(Schema):
    code: str = Field(description="Machine-readable, e.g. flow_not_found, validation_error, rate_limited")
    message: str
    details: list[Any] = []


class ErrorOut(Schema):
    error: ErrorBody


COMMON_ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut,
                 429: ErrorOut}


def not_found(kind: str) -> ApiError:
    return ApiError(404, f"{kind}_not_found", f"No such {kind.replace('_', ' ')} in your team.")


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def require_role(request: HttpRequest, role: str = Role.VIEWER) -> Membership:
    """The caller's membership (its token's team, or the session's), or 403 below `role`."""
    membership: Membership = request.auth
    if not has_role(membership, role):
        raise forbidden(f"This needs the {Role(role).label.lower()} role or higher in {membership.team.name}.")
    return membership


def uuid_or_404(value: str, kind: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise not_found(kind) from None


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _no_nul(value: Any) -> Any:
    # PostgreSQL text and jsonb cannot hold NUL; refuse it here rather than fail in the database.
    if _has_nul(value):
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_no_nul)]
