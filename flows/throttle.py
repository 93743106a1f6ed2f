"""Throttles on the account doors: log in, sign up, password reset.

Failed logins count per user name and per client address; after
LOGIN_FAILURES_ALLOWED failures in a window the door answers 429 with Retry-After
until the window ends, whatever the password (so guessing stops, and a real user
waits at most a window). Sign-ups and password-reset requests count per address.
Counted in Redis (kwala_site.ratelimit), shared by every web process.
"""

from __future__ import annotations

import logging
from functools import wraps

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.shortcuts import render

from kwala_site import ratelimit

logger = logging.getLogger("kwala.throttle")

WINDOW_SECONDS = 15 * 60
LOGIN_FAILURES_ALLOWED = 20  # per user name, per window
ADDRESS_FAILURES_ALLOWED = 100  # per client address, per window (many users behind one NAT)
ACCOUNT_POSTS_ALLOWED = 10  # sign-ups or reset requests per address, per window


def _address(request) -> str:
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def _refused(request, template: str, context: dict, retry_after: int, what: str):
    logger.warning("%s throttled for %s; answered 429", what, _address(request))
    minutes = max(1, round(retry_after / 60))
    response = render(request, template, {**context, "throttled": f"Too many attempts. Try again in about "
                                                                  f"{minutes} minute{'s' if minutes != 1 else ''}."},
                      status=429)
    response["Retry-After"] = str(retry_after)
    return response


class ThrottledLoginView(auth_views.LoginView):
    """Django's login, refusing with 429 after too many failures for a name or an address."""

    redirect_authenticated_user = True

    def _keys(self) -> list[tuple[str, int]]:
        name = (self.request.POST.get("username") or "").strip().lower()[:150]
        limit = getattr(settings, "KWALA_LOGIN_FAILURES", LOGIN_FAILURES_ALLOWED)
        return [(f"login-name:{name}", limit), (f"login-address:{_address(self.request)}", ADDRESS_FAILURES_ALLOWED)]

    def post(self, request, *args, **kwargs):
        for key, limit in self._keys():
            window = ratelimit.peek(key, WINDOW_SECONDS)
            if window.count >= limit:
                # An unbound form: a bound one would check the password when the page shows its errors.
                form = self.get_form_class()(request, initial={"username": request.POST.get("username", "")})
                return _refused(request, self.template_name, {"form": form, "next": request.POST.get("next", "")},
                                window.retry_after, "login")
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        for key, _ in self._keys():
            ratelimit.hit(key, WINDOW_SECONDS)
        return super().form_invalid(form)


def throttled_posts(what: str, template: str):
    """Limit a view's POSTs per client address (sign-up, password reset)."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method == "POST":
                window = ratelimit.hit(f"{what}-address:{_address(request)}", WINDOW_SECONDS)
                if window.over(ACCOUNT_POSTS_ALLOWED):
                    return _refused(request, template, {}, window.retry_after, what)
            return view(request, *args, **kwargs)

        return wrapper

    return decorate
