"""The REST API (django-ninja): /api/v1/, OpenAPI at /api/v1/openapi.json, docs at /api/v1/docs.

One `NinjaAPI` for the project: authentication, throttling and the error handlers live
here; each app adds its `Router` from its own `api.py` (flows.api, executor.api,
flows.teams.api, flows.gallery.api).

Authentication is a personal token (``Authorization: Bearer kwl_...``) acting in
the token's team, or the browser session acting in the session's team (CSRF checked
on writes: the editor uses it). Every lookup is scoped to that team, so another team's
objects are 404 whatever their code. Every error, including validation, 404, 403, 409
and 429, has one shape:
``{"error": {"code": "flow_not_found", "message": "...", "details": [...]}}``.
"""

from __future__ import annotations

import logging
from functools import wraps

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import include, path
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer
from ninja.security.session import SessionAuth
from ninja.throttling import BaseThrottle

from executor import api as runs_api
from executor.replay import ReplayError
from executor.runs.manual import RunError
from flows import api as flows_api
from flows.actions import CompileError, ConflictError, InvalidGraph, NothingToPublish
from flows.flowyaml import FlowYamlError
from flows.gallery import api as gallery_api
from flows.models import Membership
from flows.permissions import current_membership, membership_in_team
from flows.teams import TeamError, membership_for_token
from flows.teams import api as teams_api
from kwala_site import ratelimit
from kwala_site.api_common import ApiError

logger = logging.getLogger(__name__)


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Membership | None:
        found = membership_for_token(token)
        if found is None:
            return None
        request.api_token, membership = found
        request.user = membership.user
        return membership


class TeamSession(SessionAuth):
    """The logged-in browser (CSRF checked on writes), acting in the team its X-Kwala-Team header
    names (the editor names its flow's team) or else in the team chosen in its session."""

    def authenticate(self, request: HttpRequest, key: str | None) -> Membership | None:
        team = request.headers.get("X-Kwala-Team")
        if team:
            return membership_in_team(request.user, team)
        return current_membership(request)


class RedisRateLimit(BaseThrottle):
    """A fixed window per token (or per user for sessions), counted in Redis so every process shares it."""

    def __init__(self) -> None:
        self._wait = 0

    def allow_request(self, request: HttpRequest) -> bool:
        limit = getattr(settings, "KWALA_API_RATE_LIMIT", 600)
        window = getattr(settings, "KWALA_API_RATE_WINDOW", 60)
        token = getattr(request, "api_token", None)
        who = f"t{token.token_hash[:24]}" if token is not None else f"u{getattr(request.user, 'pk', None) or 'anon'}"
        counted = ratelimit.hit(f"api:{who}", window)
        self._wait = counted.retry_after
        return not counted.over(limit)

    def wait(self) -> int:
        return max(self._wait, 1)


class KwalaAPI(NinjaAPI):
    def get_openapi_operation_id(self, operation) -> str:
        # The ids the API published when it was one module: generated clients name their
        # methods after them, so they do not change with the file an operation lives in.
        return f"flows_api_{operation.view_func.__name__}"


api = KwalaAPI(
    title="Kwala API",
    version="1",
    description=(
        "Flows, versions, runs, chains, templates, secrets, team members and tokens. "
        "Authenticate with `Authorization: Bearer <token>` (create one under Account → API tokens). "
        "Errors: `{\"error\": {\"code\", \"message\", \"details\"}}`."
    ),
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
    auth=[BearerToken(), TeamSession()],
    throttle=[RedisRateLimit()],
)


# -- the error envelope -----------------------------------------------------------------------


def error_response(request: HttpRequest, status: int, code: str, message: str, details=None) -> HttpResponse:
    return api.create_response(
        request, {"error": {"code": code, "message": message, "details": details or []}}, status=status
    )


def _jsonable_errors(errors: list) -> list[dict]:
    return [{"loc": [str(p) for p in item.get("loc", [])], "message": str(item.get("msg", "")),
             "type": str(item.get("type", ""))} for item in errors]


@api.exception_handler(ApiError)
def _api_error(request, exc: ApiError):
    return error_response(request, exc.status, exc.code, exc.message, exc.details)


@api.exception_handler(TeamError)
def _team_error(request, exc: TeamError):
    return error_response(request, exc.status, exc.code, exc.message)


@api.exception_handler(ValidationError)
def _validation_error(request, exc: ValidationError):
    return error_response(request, 422, "validation_error", "The request is not valid.", _jsonable_errors(exc.errors))


@api.exception_handler(AuthenticationError)
def _auth_error(request, exc):
    return error_response(request, 401, "unauthorized", "Send a valid token: Authorization: Bearer <token>.")


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    codes = {400: "invalid_body", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 429: "rate_limited"}
    return error_response(request, exc.status_code, codes.get(exc.status_code, "bad_request"), str(exc))


@api.exception_handler(Http404)
def _not_found(request, exc):
    return error_response(request, 404, "not_found", "Not found.")


@api.exception_handler(InvalidGraph)
def _invalid_graph(request, exc: InvalidGraph):
    return error_response(request, 422, "invalid_graph", "The graph is malformed.", exc.as_list())


@api.exception_handler(CompileError)
def _compile_error(request, exc: CompileError):
    return error_response(request, 422, "compile_error", "The flow does not compile.", exc.as_list())


@api.exception_handler(ConflictError)
def _conflict(request, exc: ConflictError):
    return error_response(request, 409, "conflict", str(exc), [{"current_revision": exc.current_revision}])


@api.exception_handler(NothingToPublish)
def _nothing(request, exc):
    return error_response(request, 409, "nothing_to_publish", str(exc))


@api.exception_handler(FlowYamlError)
def _bad_yaml(request, exc: FlowYamlError):
    return error_response(request, 400, "invalid_yaml", exc.message, [{"line": exc.line}] if exc.line else [])


@api.exception_handler(RunError)
def _run_error(request, exc):
    return error_response(request, 409, "run_error", str(exc))


@api.exception_handler(ReplayError)
def _replay_error(request, exc):
    return error_response(request, 422, "replay_error", str(exc))


@api.exception_handler(Exception)
def _unexpected(request, exc):
    from kwala_site.overload import is_overload, overloaded

    if is_overload(exc):
        return overloaded(request)
    logger.exception("API error on %s %s", request.method, request.path)
    return error_response(request, 500, "internal_error", "Something went wrong on our side; it has been logged.")


# -- one router per app, in the order the OpenAPI document lists them -------------------------

api.add_router("/flows", flows_api.router)
api.add_router("/flows", runs_api.flow_runs_router)
api.add_router("/runs", runs_api.runs_router)
api.add_router("/replays", runs_api.replays_router)
api.add_router("", runs_api.chains_router)
api.add_router("", gallery_api.router)
api.add_router("", teams_api.router)


def _json_method_not_allowed(view):
    """django-ninja answers a wrong method with a bare 405, and a body over the size limit with
    a 400 or a 500; give both the API's one error shape and the right status."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            request.body  # noqa: B018 (read here so that a body over the limit is a 413, not a parse error)
        except RequestDataTooBig:
            return error_response(request, 413, "too_large", "The request body is too large.")
        response = view(request, *args, **kwargs)
        if response.status_code == 405 and not response.get("Content-Type", "").startswith("application/json"):
            allowed = response.get("Allow", "")
            response = error_response(request, 405, "method_not_allowed", f"Use one of: {allowed}.")
            response["Allow"] = allowed
        return response

    return wrapper


def urlpatterns() -> list:
    """The API's URL patterns, for kwala_site.urls to mount at /api/v1/."""
    patterns, app_name, namespace = api.urls
    for pattern in patterns:
        pattern.callback = _json_method_not_allowed(pattern.callback)
    return [path("", include((patterns, app_name), namespace=namespace))]
