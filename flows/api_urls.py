from functools import wraps

from django.urls import include, path

from flows.api import api, error_response


def _json_method_not_allowed(view):
    """django-ninja answers a wrong method with a bare 405; give it the API's one error shape."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
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
