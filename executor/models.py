"""What runs: chains and their cursors, observed events, runs and their steps."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class Chain(models.Model):
    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=80)
    chain_id = models.PositiveBigIntegerField(unique=True)
    default_confirmations = models.PositiveIntegerField(default=0)
    supports_finalized = models.BooleanField(default=False, help_text="The RPC answers the 'finalized' block tag.")
    verify_with = models.PositiveSmallIntegerField(
        default=1, help_text="How many RPC endpoints must agree on a block's matching logs before its runs fire "
                             "(executor.blockcheck.agreed_logs); 1 takes the first believable answer.",
    )
    explorer_url = models.URLField(blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["chain_id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.chain_id})"


class RpcEndpoint(models.Model):
    class Kind(models.TextChoices):
        HTTP = "HTTP", "HTTP"
        WS = "WS", "WebSocket"

    chain = models.ForeignKey(Chain, models.CASCADE, related_name="endpoints")
    url = models.CharField(max_length=500)
    kind = models.CharField(max_length=4, choices=Kind.choices, default=Kind.HTTP)
    priority = models.PositiveIntegerField(default=0, help_text="Lower is tried first.")
    enabled = models.BooleanField(default=True)
    # Health, written by executor.chain when an endpoint fails or recovers (not on every call).
    last_ok_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    failures = models.PositiveIntegerField(default=0, help_text="Consecutive failed requests.")

    class Meta:
        ordering = ["chain", "kind", "priority", "id"]
        constraints = [models.UniqueConstraint(fields=["chain", "url"], name="rpcendpoint_unique_url")]

    def __str__(self) -> str:
        return self.url


class ChainCursor(models.Model):
    """Where a chain's listener is, and how healthy the chain looks to it."""

    chain = models.OneToOneField(Chain, models.CASCADE, related_name="cursor")
    block_number = models.BigIntegerField(null=True, blank=True)
    block_hash = models.CharField(max_length=66, blank=True)
    # [[number, hash, parent_hash, timestamp], ...] of recent unfinalized blocks, oldest first.
    recent_blocks = models.JSONField(default=list, blank=True)
    head_block = models.BigIntegerField(null=True, blank=True)
    head_seen_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    halted = models.BooleanField(default=False, help_text="Stopped on an unrecoverable error; see last_error.")
    processed_at = models.DateTimeField(null=True, blank=True, help_text="When block_number was processed.")
    # A block the listener will not pass yet: its logs answer is not believable (executor.blockcheck).
    held_block = models.BigIntegerField(null=True, blank=True)
    held_reason = models.TextField(blank=True)
    held_since = models.DateTimeField(null=True, blank=True)
    # Answers the nodes got wrong and the listener caught (empty logs the receipts contradict,
    # pushed logs the block loop never got), counted since the cursor was made.
    inconsistencies = models.PositiveBigIntegerField(default=0)
    last_inconsistency = models.TextField(blank=True)
    last_inconsistency_at = models.DateTimeField(null=True, blank=True)
    ws_state = models.CharField(max_length=16, blank=True, help_text="connected, down, or empty: no websocket.")
    ws_changed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.chain.slug} @ {self.block_number}"

    @property
    def lag(self) -> int | None:
        if self.head_block is None or self.block_number is None:
            return None
        return max(self.head_block - self.block_number, 0)


class TriggerState(models.Model):
    """The last value of a contract-state trigger's condition, so that it fires on the
    false-to-true edge only, across restarts and several listeners."""

    version = models.OneToOneField("flows.FlowVersion", models.CASCADE, related_name="trigger_state")
    chain = models.ForeignKey(Chain, models.CASCADE, related_name="trigger_states")
    block_number = models.BigIntegerField()
    value = models.BooleanField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.version_id} @ {self.block_number}: {self.value}"


class Event(models.Model):
    """A log seen on a chain; the (chain, block hash, log index) key makes it unique."""

    chain = models.ForeignKey(Chain, models.CASCADE, related_name="events", db_index=False)  # see the (chain, block_number) index
    block_number = models.BigIntegerField()
    block_hash = models.CharField(max_length=66)
    log_index = models.PositiveIntegerField()
    tx_hash = models.CharField(max_length=66)
    address = models.CharField(max_length=42)
    topics = models.JSONField(default=list)
    data = models.TextField(blank=True)
    retracted_at = models.DateTimeField(null=True, blank=True, help_text="Set when a reorg orphaned the block.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chain", "block_hash", "log_index"], name="event_unique_key"),
        ]
        indexes = [models.Index(fields=["chain", "block_number"]), models.Index(fields=["tx_hash"])]

    def __str__(self) -> str:
        return f"{self.chain_id}:{self.block_number}:{self.log_index}"


class Run(models.Model):
    class Status(models.TextChoices):
        QUEUED = "QUEUED", "Queued"
        RUNNING = "RUNNING", "Running"
        SUCCEEDED = "SUCCEEDED", "Succeeded"
        FAILED = "FAILED", "Failed"
        CANCELLED = "CANCELLED", "Cancelled"
        REORGED = "REORGED", "Reorged"

    FINISHED = {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.REORGED}

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # These three foreign keys lead the indexes and the unique constraint in Meta, which
    # serve their lookups; an index of their own would only slow every write down.
    team = models.ForeignKey("flows.Team", models.CASCADE, related_name="runs", db_index=False)
    flow = models.ForeignKey("flows.Flow", models.CASCADE, related_name="runs", db_index=False)
    version = models.ForeignKey("flows.FlowVersion", models.CASCADE, related_name="runs", db_index=False)
    # What fired it, as a key unique per version: log:<chain>:<block hash>:<log index>,
    # block:<chain>:<block hash>, schedule:<iso time>, manual:<uuid>, webhook:<id>.
    trigger_key = models.CharField(max_length=200)
    trigger = models.JSONField(default=dict)
    event = models.ForeignKey(Event, models.SET_NULL, null=True, blank=True, related_name="runs")
    chain = models.ForeignKey(Chain, models.SET_NULL, null=True, blank=True, related_name="runs", db_index=False)
    block_number = models.BigIntegerField(null=True, blank=True)
    block_hash = models.CharField(max_length=66, blank=True)
    dry_run = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    # Last RunEvent.seq handed out; bumped with a row-level UPDATE so seqs never collide.
    event_seq = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # Last time start_run was sent; the sweeper re-sends it when a QUEUED run sits past this.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["version", "trigger_key"], name="run_unique_trigger"),
        ]
        # The lists read a page of runs newest first and the next page from where it stopped
        # ((created_at, id) below the last one's), each through an index that ends with
        # (created_at, id); the team's index with status serves a status filter and retention,
        # the one with finished_at an API client polling for the runs finished since it last asked.
        indexes = [
            models.Index(fields=["team", "created_at", "id"], name="run_team_created"),
            models.Index(fields=["team", "status", "created_at", "id"], name="run_team_status_created"),
            models.Index(fields=["team", "finished_at"], name="run_team_finished"),
            models.Index(fields=["flow", "created_at", "id"], name="run_flow_created"),
            models.Index(fields=["status", "created_at"]),
            models.Index(fields=["chain", "block_hash"]),
        ]

    def __str__(self) -> str:
        return f"run {self.code} ({self.status})"


class RunRollup(models.Model):
    """Finished runs of a flow counted per hour they were created in, by final status.

    Kept exact by a trigger on executor_run (migration 0007): the statement that gives a run
    a final status, or takes it away (a retry, a reorg of a finished run), adds to its hour
    here in the same transaction. The flows page reads its figures from these rows, never by
    scanning runs (executor.rollups). Each run counts in one of SHARDS rows of its hour, so
    runs finishing together do not queue on one row lock; retention folds the shards of past
    hours into one row and deletes hours older than KWALA_ROLLUP_RETENTION_DAYS. Deleting
    runs leaves their counts: the figures outlive the runs.
    """

    SHARDS = 8

    team = models.ForeignKey("flows.Team", models.CASCADE, related_name="+", db_index=False)  # see Meta
    flow = models.ForeignKey("flows.Flow", models.CASCADE, related_name="run_rollups", db_index=False)
    hour = models.DateTimeField()
    shard = models.PositiveSmallIntegerField(default=0)
    # Signed: a run leaving a status subtracts from a shard that may not be the one it was counted in.
    succeeded = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    cancelled = models.IntegerField(default=0)
    reorged = models.IntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["flow", "hour", "shard"], name="runrollup_unique_bucket")]
        indexes = [
            models.Index(fields=["team", "hour"], name="runrollup_team_hour"),
            # The shard rows of recent hours, for the fold (everything else is in shard 0).
            models.Index(fields=["hour"], name="runrollup_shards", condition=~models.Q(shard=0)),
        ]

    def __str__(self) -> str:
        return f"{self.flow_id} @ {self.hour:%Y-%m-%d %H}:00/{self.shard}"


class StepRun(models.Model):
    class Status(models.TextChoices):
        PENDING = "PENDING", "Pending"
        QUEUED = "QUEUED", "Queued"
        RUNNING = "RUNNING", "Running"
        SUCCEEDED = "SUCCEEDED", "Succeeded"
        FAILED = "FAILED", "Failed"
        SKIPPED = "SKIPPED", "Skipped"
        CANCELLED = "CANCELLED", "Cancelled"

    run = models.ForeignKey(Run, models.CASCADE, related_name="steps", db_index=False)  # see steprun_unique_step
    step_id = models.CharField(max_length=64)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempt = models.PositiveIntegerField(default=0)
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    logs = models.JSONField(default=list, blank=True)
    # The output port taken ("out", "true", a switch case, "error"); successors on other ports are skipped.
    port = models.CharField(max_length=64, blank=True)
    # Whether a failure was routed to the step's error port (so it does not fail the run).
    handled = models.BooleanField(default=False)
    # Private working state of a step that spans several messages (a delay's deadline, a transaction's progress).
    state = models.JSONField(default=dict, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # What the step's node type adds to the base lease (KWALA_STEP_LEASE_SECONDS) for its config,
    # set when the row is made: a worker claims the step in the statement that reads its run.
    lease_extra_seconds = models.FloatField(default=0, db_default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "step_id"], name="steprun_unique_step")]
        # For the sweeper, which looks only at unfinished steps: finished ones (nearly all) stay out.
        indexes = [models.Index(fields=["status", "lease_expires_at"], name="steprun_unfinished",
                                condition=models.Q(status__in=["QUEUED", "RUNNING"]))]

    def __str__(self) -> str:
        return f"{self.run_id}/{self.step_id} ({self.status})"


class RunEvent(models.Model):
    """The sequence-numbered log of a run's changes, replayed to reconnecting browsers."""

    run = models.ForeignKey(Run, models.CASCADE, related_name="log", db_index=False)  # see runevent_unique_seq
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=40)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="runevent_unique_seq")]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.seq} {self.kind}"


class WorkerProbe(models.Model):
    """A round trip through the broker to a worker and back to PostgreSQL (`manage.py check_workers`)."""

    created_at = models.DateTimeField(auto_now_add=True)
    answered_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"probe {self.pk}"


class Transaction(models.Model):
    """A signed transaction, stored before it is broadcast so a retry re-sends the same bytes.

    A stuck transaction is replaced by a new row with the same nonce and a higher
    fee (``replaces`` counts up); whichever lands is the step's result.
    """

    class Status(models.TextChoices):
        SIGNED = "SIGNED", "Signed"
        BROADCAST = "BROADCAST", "Broadcast"
        MINED = "MINED", "Mined"
        REVERTED = "REVERTED", "Reverted"
        DROPPED = "DROPPED", "Dropped"

    run = models.ForeignKey(Run, models.CASCADE, related_name="transactions")
    step_run = models.ForeignKey(StepRun, models.CASCADE, related_name="transactions")
    chain = models.ForeignKey(Chain, models.PROTECT, related_name="transactions")
    from_address = models.CharField(max_length=42)
    to_address = models.CharField(max_length=42)
    nonce = models.PositiveBigIntegerField()
    replaces = models.PositiveIntegerField(default=0, help_text="0 for the first, 1+ for fee-bumped replacements.")
    value = models.DecimalField(max_digits=78, decimal_places=0, default=0)
    data = models.TextField(blank=True)
    gas = models.PositiveBigIntegerField()
    max_fee_per_gas = models.DecimalField(max_digits=78, decimal_places=0)
    max_priority_fee_per_gas = models.DecimalField(max_digits=78, decimal_places=0)
    raw = models.TextField()
    tx_hash = models.CharField(max_length=66, unique=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.SIGNED)
    attempts = models.PositiveIntegerField(default=0, help_text="How many times the raw bytes were broadcast.")
    block_number = models.BigIntegerField(null=True, blank=True)
    receipt = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    broadcast_at = models.DateTimeField(null=True, blank=True)
    # Set once when the signer's limits stop this stuck transaction from being re-sent again.
    stuck_alerted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["step_run", "replaces"], name="transaction_unique_replacement"),
            models.UniqueConstraint(
                fields=["chain", "from_address", "nonce", "replaces"], name="transaction_unique_nonce_replacement"
            ),
        ]
        indexes = [models.Index(fields=["chain", "from_address", "nonce"])]

    def __str__(self) -> str:
        return f"{self.tx_hash} (nonce {self.nonce}, {self.status})"


class NonceCursor(models.Model):
    """The next nonce Kwala hands out for an address on a chain; the row is locked FOR UPDATE to allocate."""

    chain = models.ForeignKey(Chain, models.CASCADE, related_name="nonce_cursors")
    address = models.CharField(max_length=42)
    next_nonce = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain", "address"], name="noncecursor_unique_address")]

    def __str__(self) -> str:
        return f"{self.address}@{self.chain_id}: {self.next_nonce}"


class Notification(models.Model):
    """An in-app notice for a team, e.g. a failed run; one per (run, kind)."""

    class Kind(models.TextChoices):
        RUN_FAILED = "RUN_FAILED", "Run failed"
        TX_STUCK = "TX_STUCK", "Transaction stuck"

    team = models.ForeignKey("flows.Team", models.CASCADE, related_name="notifications", db_index=False)  # see Meta
    run = models.ForeignKey(Run, models.CASCADE, null=True, blank=True, related_name="notifications")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["run", "kind"], name="notification_unique_run_kind")]
        indexes = [
            models.Index(fields=["team", "created_at", "id"], name="notification_team_created"),
            # The nav's unread count reads only these.
            models.Index(fields=["team"], name="notification_unread", condition=models.Q(read_at=None)),
        ]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message[:40]}"


class ReplayJob(models.Model):
    """A replay or backtest of a flow's contract-event trigger over past blocks.

    Run by a worker (executor.tasks.run_replay), never inside a web request: a
    range of 100,000 blocks takes minutes of RPC calls. Safe to run twice: the
    live runs' keys are the listener's own, a backtest's runs are keyed by the job.
    """

    class Status(models.TextChoices):
        QUEUED = "QUEUED", "Queued"
        RUNNING = "RUNNING", "Running"
        SUCCEEDED = "SUCCEEDED", "Succeeded"
        FAILED = "FAILED", "Failed"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    team = models.ForeignKey("flows.Team", models.CASCADE, related_name="replay_jobs")
    flow = models.ForeignKey("flows.Flow", models.CASCADE, related_name="replay_jobs")
    version = models.ForeignKey("flows.FlowVersion", models.CASCADE, related_name="replay_jobs")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True,
                                     related_name="+")
    from_block = models.BigIntegerField()
    to_block = models.BigIntegerField()
    dry_run = models.BooleanField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    logs_seen = models.IntegerField(null=True, blank=True)
    matched = models.IntegerField(null=True, blank=True)
    run_codes = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(default=timezone.now)  # last sent to a worker (the sweeper re-sends)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "queued_at"], name="replayjob_status_queued")]

    def __str__(self) -> str:
        kind = "backtest" if self.dry_run else "replay"
        return f"{kind} {self.from_block}..{self.to_block} ({self.status})"
