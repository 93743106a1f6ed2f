"""Plain forms for accounts and teams; the writes themselves are in flows.teams."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model, password_validation

from flows.models import Membership
from flows.teams import SECRET_NAME


class SignUpForm(forms.Form):
    username = forms.RegexField(
        regex=r"^[\w.@+-]{3,150}$", max_length=150,
        error_messages={"invalid": "Use 3-150 letters, digits and @ . + - _ only."},
    )
    email = forms.EmailField()
    password = forms.CharField(widget=forms.PasswordInput, strip=False)

    def clean_username(self):
        username = self.cleaned_data["username"]
        if get_user_model().objects.filter(username__iexact=username).exists():
            raise forms.ValidationError("That username is taken.")
        return username

    def clean_email(self):
        email = self.cleaned_data["email"].lower()
        if get_user_model().objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("An account with that email exists: log in or reset your password.")
        return email

    def clean(self):
        data = super().clean()
        if data.get("password"):
            user = get_user_model()(username=data.get("username", ""), email=data.get("email", ""))
            try:
                password_validation.validate_password(data["password"], user)
            except forms.ValidationError as exc:
                self.add_error("password", exc)
        return data


class ProfileForm(forms.Form):
    first_name = forms.CharField(max_length=150, required=False)
    last_name = forms.CharField(max_length=150, required=False)
    email = forms.EmailField()

    def __init__(self, *args, user=None, **kwargs):
        self.user = user
        super().__init__(*args, **kwargs)

    def clean_email(self):
        email = self.cleaned_data["email"].lower()
        if get_user_model().objects.filter(email__iexact=email).exclude(pk=self.user.pk).exists():
            raise forms.ValidationError("Another account uses that email.")
        return email


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. CI deploys.")


class TeamForm(forms.Form):
    name = forms.CharField(max_length=100)


class InviteForm(forms.Form):
    email = forms.EmailField()
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.EDITOR)

    def __init__(self, *args, role_choices=None, **kwargs):
        super().__init__(*args, **kwargs)
        if role_choices is not None:
            self.fields["role"].choices = role_choices


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)


class SecretForm(forms.Form):
    name = forms.RegexField(
        regex=SECRET_NAME, max_length=64,
        error_messages={"invalid": "Letters, digits and _, starting with a letter or _."},
    )
    # render_value=False: a submitted value is never written back into the page.
    value = forms.CharField(widget=forms.PasswordInput(render_value=False), strip=False, max_length=65536)


class SignerForm(forms.Form):
    name = forms.RegexField(
        regex=SECRET_NAME, max_length=64,
        error_messages={"invalid": "Letters, digits and _, starting with a letter or _."},
    )
    private_key = forms.CharField(
        widget=forms.PasswordInput(render_value=False), required=False, strip=True,
        help_text="Leave empty to generate a new key here.",
    )


class ShareForm(forms.Form):
    team_code = forms.CharField(max_length=16, label="Team code")
