from functools import wraps

from django.core.exceptions import RequestDataTooBig
from django.urls import include, path

from flows.api import api, error_response


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


_patterns, _app_name, _namespace = api.urls
for pattern in _patterns:
    pattern.callback = _json_method_not_allowed(pattern.callback)

urlpatterns = [path("", include((_patterns, _app_name), namespace=_namespace))]
