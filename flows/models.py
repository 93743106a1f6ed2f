"""What a user edits: teams, flows and their versions."""

from __future__ import annotations

import secrets
import string
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

CODE_ALPHABET = string.ascii_letters + string.digits


def short_code() -> str:
    """A public id for URLs: random, unguessable, never the database id.

    Letters and digits only (12 of them, ~71 bits): a code that starts with "-"
    would read as an option to every command that takes one.
    """
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(12))


class Team(models.Model):
    code = models.CharField(max_length=16, unique=True, default=short_code, editable=False)
    name = models.CharField(max_length=100)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="teams")
    created_at = models.DateTimeField(auto_now_add=True)
    # Operators' override of settings.KWALA_WEBHOOK_RATE_PER_MINUTE for this team's flows (admin only).
    webhook_rate_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Inbound webhook requests per flow per minute; empty: the site's default."
    )
    # Operators' overrides of settings.KWALA_RUNS_PER_MINUTE_PER_TEAM and _PER_FLOW (executor.quotas):
    # a run over either starts in the next minute instead of now.
    runs_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Runs the team's flows may start per minute, together; empty: the site's default."
    )
    flow_runs_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Runs each of the team's flows may start per minute; empty: the site's default."
    )
    # Operators' overrides of settings.KWALA_RUN_RETENTION_DAYS and _FAILED_ (executor.retention).
    run_retention_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Days finished runs are kept; empty: the site's default."
    )
    failed_run_retention_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Days failed runs are kept; empty: the site's default."
    )
    # Operators' override of settings.KWALA_CONDITION_MS_PER_BLOCK (executor.quotas).
    condition_ms_per_block = models.PositiveIntegerField(
        null=True, blank=True, help_text="CPU time the team's trigger conditions may take on one block, in ms; "
                                         "empty: the site's default.",
    )

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "OWNER", "Owner"
        ADMIN = "ADMIN", "Admin"
        EDITOR = "EDITOR", "Editor"
        VIEWER = "VIEWER", "Viewer"

    team = models.ForeignKey(Team, models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="membership_unique_team_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} as {self.role}"


class Flow(models.Model):
    code = models.CharField(max_length=16, unique=True, default=short_code, editable=False)
    team = models.ForeignKey(Team, models.CASCADE, related_name="flows")
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    # Per-flow secret that signs outgoing webhooks (Standard Webhooks, whsec_...).
    signing_secret = models.CharField(max_length=64, default="", blank=True, editable=False)
    # The random token in the inbound webhook's URL (/hooks/<code>/<token>/), encrypted;
    # shown to editors only and rotated with flows.actions.do_rotate_webhook_token.
    webhook_token_encrypted = models.TextField(blank=True, editable=False)
    # The editor's concurrency token: bumped by every change to the flow's graph
    # or versions; a save that names an older revision is refused, never merged.
    revision = models.PositiveIntegerField(default=1)
    paused = models.BooleanField(default=False, help_text="A paused flow's trigger does not fire.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def webhook_token_context(self) -> str:
        return f"webhook-token:{self.code}"

    def webhook_token(self) -> str:
        """The inbound webhook's URL token, or "" before one was made; never log it."""
        from flows import crypto

        if not self.webhook_token_encrypted:
            return ""
        return crypto.decrypt(self.webhook_token_encrypted, self.webhook_token_context)


class FlowVersion(models.Model):
    class Status(models.TextChoices):
        DRAFT = "DRAFT", "Draft"
        PUBLISHED = "PUBLISHED", "Published"
        ARCHIVED = "ARCHIVED", "Archived"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    flow = models.ForeignKey(Flow, models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    graph = models.JSONField(default=dict)
    dag = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["flow", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["flow", "number"], name="flowversion_unique_number"),
            # At most one live version per flow, enforced by PostgreSQL.
            models.UniqueConstraint(
                fields=["flow"], condition=Q(status="PUBLISHED"), name="flowversion_one_published"
            ),
            models.UniqueConstraint(fields=["flow"], condition=Q(status="DRAFT"), name="flowversion_one_draft"),
        ]

    def __str__(self) -> str:
        return f"{self.flow} v{self.number} ({self.status})"


class Secret(models.Model):
    """A team secret, used in expressions as {{ secrets.NAME }}; the value is never shown back."""

    team = models.ForeignKey(Team, models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=64)
    value_encrypted = models.TextField(editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="secret_unique_name")]

    def __str__(self) -> str:
        return self.name

    @property
    def encryption_context(self) -> str:
        return f"secret:{self.team_id}:{self.name}"

    def set_value(self, value: str) -> None:
        from flows import crypto

        self.value_encrypted = crypto.encrypt(value, self.encryption_context)

    def reveal(self) -> str:
        """The plaintext, for the executor only; never render or log it."""
        from flows import crypto

        return crypto.decrypt(self.value_encrypted, self.encryption_context)


def WeiField(help_text: str) -> models.DecimalField:  # noqa: N802 (a field factory)
    """An optional amount in wei: up to 2**256, so a 78-digit decimal."""
    return models.DecimalField(max_digits=78, decimal_places=0, null=True, blank=True, help_text=help_text)


class SignerKey(models.Model):
    """A team's transaction signing key (created in the app or imported); the key is never shown back."""

    code = models.CharField(max_length=16, unique=True, default=short_code, editable=False)
    team = models.ForeignKey(Team, models.CASCADE, related_name="signer_keys")
    name = models.CharField(max_length=64)
    address = models.CharField(max_length=42)
    key_encrypted = models.TextField(editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # Spending limits, set by team admins (flows.teams.do_set_signer_limits) and enforced
    # before anything is signed (executor.steps.spending). Amounts in wei, in each chain's
    # native currency; None is no limit.
    max_value_wei = WeiField("Largest value one transaction may send")
    max_fee_per_gas_wei = WeiField("Highest max fee per gas")
    max_priority_fee_per_gas_wei = WeiField("Highest priority fee per gas")
    daily_budget_wei = WeiField("Value plus the most its fees can cost, per chain and UTC day")
    max_replacements = models.PositiveSmallIntegerField(
        default=5, help_text="How many times a stuck transaction is re-sent with higher fees."
    )

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="signerkey_unique_name")]

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"

    @property
    def encryption_context(self) -> str:
        return f"signer:{self.team_id}:{self.code}"

    def set_private_key(self, private_key: str) -> None:
        """Store the key encrypted and derive its address; raises ValueError for a bad key."""
        from eth_account import Account

        from flows import crypto

        account = Account.from_key(private_key)
        self.address = account.address
        self.key_encrypted = crypto.encrypt(account.key.hex(), self.encryption_context)

    def private_key(self) -> str:
        """The key, for signing in the executor only; never render, log or store it elsewhere."""
        from flows import crypto

        return crypto.decrypt(self.key_encrypted, self.encryption_context)


# -- accounts, teams and sharing ------------------------------------------------------


class ApiToken(models.Model):
    """A personal API token acting for its user in one team.

    Only a sha256 of the token is stored; the user sees the token once. The
    visible prefix lets a person tell their tokens apart in lists and logs.
    """

    PREFIX_LENGTH = 12

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_tokens")
    team = models.ForeignKey(Team, models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=PREFIX_LENGTH, db_index=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: the token does not expire.")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class Invitation(models.Model):
    """An emailed invitation to join a team; the link is signed, expires, and works once."""

    code = models.CharField(max_length=16, unique=True, default=short_code, editable=False)
    team = models.ForeignKey(Team, models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=10, choices=Membership.Role.choices, default=Membership.Role.VIEWER)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.email} to {self.team} as {self.role}"

    @property
    def is_pending(self) -> bool:
        from django.utils import timezone

        return self.accepted_at is None and self.revoked_at is None and self.expires_at > timezone.now()


class AuditQuerySet(models.QuerySet):
    """Append-only: bulk updates and deletes are refused."""

    def update(self, **kwargs):
        raise PermissionError("The audit log is append-only.")

    def delete(self):
        raise PermissionError("The audit log is append-only.")


class AuditEvent(models.Model):
    """Who did what and when. Rows are only ever inserted (flows.audit.record)."""

    team = models.ForeignKey(Team, models.CASCADE, related_name="audit_events")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+")
    # Kept as text so the record survives the actor's account being deleted.
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=40, db_index=True)
    target = models.CharField(max_length=200, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["team", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.actor_name or 'system'} {self.action} {self.target}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise PermissionError("The audit log is append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("The audit log is append-only.")


class FlowShare(models.Model):
    """A flow shared read-only with another team."""

    flow = models.ForeignKey(Flow, models.CASCADE, related_name="shares")
    team = models.ForeignKey(Team, models.CASCADE, related_name="shared_flows")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["flow", "team"], name="flowshare_unique_team")]

    def __str__(self) -> str:
        return f"{self.flow} shared with {self.team}"


def public_token() -> str:
    return secrets.token_urlsafe(24)


class PublicLink(models.Model):
    """A revocable, unguessable read-only link to a flow's graph."""

    token = models.CharField(max_length=43, unique=True, default=public_token, editable=False)
    flow = models.ForeignKey(Flow, models.CASCADE, related_name="public_links")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"public link to {self.flow}"
