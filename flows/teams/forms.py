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
    current_password = forms.CharField(
        widget=forms.PasswordInput, required=False, strip=False,
        help_text="Needed to change your email: the email is where password resets go.",
    )

    def __init__(self, *args, user=None, **kwargs):
        self.user = user
        super().__init__(*args, **kwargs)

    def clean_email(self):
        email = self.cleaned_data["email"].lower()
        if get_user_model().objects.filter(email__iexact=email).exclude(pk=self.user.pk).exists():
            raise forms.ValidationError("Another account uses that email.")
        return email

    def clean(self):
        data = super().clean()
        changed = data.get("email") and data["email"] != (self.user.email or "").lower()
        if changed and not self.user.check_password(data.get("current_password") or ""):
            self.add_error("current_password", "Enter your current password to change your email.")
        return data


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. CI deploys.")
    expires_in_days = forms.IntegerField(min_value=1, max_value=3650, required=False, initial=90,
                                         label="Expires in (days)", help_text="Empty: it does not expire.")


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


class SignerLimitsForm(forms.Form):
    """A signer key's spending limits, in the units people think in; empty is no limit."""

    max_value = forms.DecimalField(
        required=False, min_value=0, max_digits=60, decimal_places=18, label="Largest value per transaction",
        help_text="In the chain's native currency (ETH on Ethereum).",
    )
    max_fee_gwei = forms.DecimalField(required=False, min_value=0, max_digits=60, decimal_places=9,
                                      label="Highest max fee per gas (gwei)")
    max_priority_gwei = forms.DecimalField(required=False, min_value=0, max_digits=60, decimal_places=9,
                                           label="Highest priority fee per gas (gwei)")
    daily_budget = forms.DecimalField(
        required=False, min_value=0, max_digits=60, decimal_places=18, label="Budget per chain and UTC day",
        help_text="Value plus the most the fees can cost, in the chain's native currency.",
    )
    max_replacements = forms.IntegerField(min_value=0, max_value=100, label="Re-sends of a stuck transaction")

    SCALES = {"max_value": ("max_value_wei", 10**18), "max_fee_gwei": ("max_fee_per_gas_wei", 10**9),
              "max_priority_gwei": ("max_priority_fee_per_gas_wei", 10**9),
              "daily_budget": ("daily_budget_wei", 10**18)}

    @classmethod
    def for_signer(cls, signer, data=None) -> SignerLimitsForm:
        initial = {"max_replacements": signer.max_replacements}
        for field, (attr, scale) in cls.SCALES.items():
            wei = getattr(signer, attr)
            initial[field] = None if wei is None else _plain_number(wei / scale)
        return cls(data, initial=initial, prefix=f"limits-{signer.code}")

    def limits(self) -> dict:
        """The cleaned limits as SignerKey fields, amounts in wei."""
        limits = {"max_replacements": self.cleaned_data["max_replacements"]}
        for field, (attr, scale) in self.SCALES.items():
            value = self.cleaned_data[field]
            limits[attr] = None if value is None else int(value * scale)
        return limits


def _plain_number(value) -> str:
    """200, not 2E+2; 1.5, not 1.500000000000000000."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
