"""Accounts: sign up, profile and personal API tokens. Log in/out and password reset are Django's views."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from flows.models import ApiToken
from flows.permissions import require_membership, safe_next
from flows.teams import TeamError, do_create_token, do_revoke_token, do_sign_up
from flows.teams.forms import ProfileForm, SignUpForm, TokenForm


def signup(request):
    if request.user.is_authenticated:
        return redirect("home")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = do_sign_up(form.cleaned_data["username"], form.cleaned_data["email"], form.cleaned_data["password"])
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect(safe_next(request, request.GET.get("next"), reverse("home")))
    return render(request, "accounts/signup.html", {"form": form}, status=400 if form.errors else 200)


@login_required
def profile(request):
    user = request.user
    form = ProfileForm(
        request.POST or None, user=user,
        initial={"first_name": user.first_name, "last_name": user.last_name, "email": user.email},
    )
    if request.method == "POST" and form.is_valid():
        for field in ("first_name", "last_name", "email"):
            setattr(user, field, form.cleaned_data[field])
        user.save(update_fields=["first_name", "last_name", "email"])
        messages.success(request, "Profile saved.")
        return redirect("profile")
    return render(request, "accounts/profile.html", {"form": form}, status=400 if form.errors else 200)


@login_required
def tokens(request):
    membership = require_membership(request)
    form = TokenForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        token, plaintext = do_create_token(membership, form.cleaned_data["name"],
                                           expires_in_days=form.cleaned_data["expires_in_days"])
        # Shown once, in this response only; never stored in the session or a message.
        created = {"token": token, "plaintext": plaintext}
        form = TokenForm()
    listing = ApiToken.objects.filter(user=request.user).select_related("team").order_by("-created_at")
    response = render(
        request, "accounts/tokens.html",
        {"form": form, "tokens": listing, "created": created, "membership": membership},
        status=400 if form.errors else 200,
    )
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def revoke_token(request, token_id: int):
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    try:
        do_revoke_token(request.user, token)
    except TeamError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Token {token.name} revoked.")
    return redirect("tokens")
