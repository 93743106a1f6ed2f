"""Prometheus metrics: what every process counts, and what the database says at scrape time.

Web servers, workers, listeners, the scheduler and the sweeper are separate
processes, so counters and histograms use prometheus_client's multiprocess
mode: each process writes its samples under PROMETHEUS_MULTIPROC_DIR (set by
kwala_site.settings to var/metrics unless the environment sets it; `manage.py
dev` empties it at start), and GET /metrics adds them up. State (chain heads,
lag, held blocks, endpoint health, queue depths, pending transactions) is read
from PostgreSQL and Redis when Prometheus scrapes, so it is right whichever
process changed it.

Access: with KWALA_METRICS_TOKEN set, only `Authorization: Bearer <token>`;
without it, only clients on this machine (loopback). Anything else is a 404.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.http import Http404, HttpResponse
from django.utils import timezone
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

def clear_samples() -> None:
    """Forget the samples of earlier processes (at the start of `manage.py dev`, a test session, a bench).

    Only while no other process of this installation runs: their open files go too.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for path in Path(directory).glob("*.db"):
            path.unlink(missing_ok=True)


# -- counted where it happens (every process) ------------------------------------------------

RUN_STATUS = Counter("kwala_run_status", "Runs entering each status (RUNNING, SUCCEEDED, FAILED, CANCELLED, ...)",
                     ["team", "flow", "status"])
RUN_SECONDS = Histogram("kwala_run_seconds", "From a run's start to its end", ["status"],
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
STEP_SECONDS = Histogram("kwala_step_seconds", "How long one attempt of a step took to run", ["type"],
                         buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
STEP_RETRIES = Counter("kwala_step_retries", "Step attempts that failed and were scheduled again", ["type"])
WEBHOOKS = Counter("kwala_webhooks", "Inbound webhook requests by outcome", ["outcome"])
CLAIMS_PER_STATEMENT = Histogram("kwala_webhook_claims_per_statement",
                                 "Inbound webhook claims written together in one statement (runs.batching)",
                                 buckets=(1, 2, 3, 4, 6, 8, 16, 32, 64))
RPC_REQUESTS = Counter("kwala_rpc_requests", "JSON-RPC requests (or batches) by chain, endpoint and outcome",
                       ["chain", "endpoint", "outcome"])
RPC_SECONDS = Histogram("kwala_rpc_request_seconds", "JSON-RPC round trips by chain and endpoint", ["chain", "endpoint"],
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SWEEPER = Counter("kwala_sweeper_resent", "Work the sweeper found lost and sent again", ["kind"])


def observe_run_events(team: str, flow: str, events: list[tuple[str, dict]], started_at, now) -> None:
    """Count a run's committed status changes (called after commit, from runs.store)."""
    for kind, data in events:
        if kind != "run.status" or not data.get("status"):
            continue
        status = data["status"]
        RUN_STATUS.labels(team=team, flow=flow, status=status).inc()
        if status in ("SUCCEEDED", "FAILED", "CANCELLED") and started_at is not None:
            RUN_SECONDS.labels(status=status).observe(max((now - started_at).total_seconds(), 0.0))


# -- read at scrape time (PostgreSQL and Redis) -----------------------------------------------


class StateCollector(Collector):
    """Chains, endpoints, queues, pending transactions and the site's refusal counters."""

    def collect(self) -> Iterator:
        yield from _chains()
        yield from _endpoints()
        yield from _queues()
        yield from _transactions()
        yield from _refusals()


def _chains() -> Iterator:
    from executor.models import ChainCursor

    head = GaugeMetricFamily("kwala_chain_head_block", "The newest block the listener saw", labels=["chain"])
    done = GaugeMetricFamily("kwala_chain_processed_block", "The newest block the listener processed", labels=["chain"])
    lag = GaugeMetricFamily("kwala_chain_lag_blocks", "Blocks between the head and the processed block", labels=["chain"])
    age = GaugeMetricFamily("kwala_chain_head_age_seconds", "Since the listener last saw a new head", labels=["chain"])
    behind = GaugeMetricFamily("kwala_chain_processed_age_seconds", "Since the listener last processed a block",
                               labels=["chain"])
    held = GaugeMetricFamily("kwala_chain_held", "1 while a block is held until its logs are believable",
                             labels=["chain"])
    halted = GaugeMetricFamily("kwala_chain_halted", "1 while the chain's listener is halted", labels=["chain"])
    socket = GaugeMetricFamily("kwala_chain_websocket_up", "1 while the listener's websocket is connected",
                               labels=["chain"])
    wrong = CounterMetricFamily("kwala_chain_rpc_inconsistencies", "Node answers the listener caught being wrong",
                                labels=["chain"])
    now = timezone.now()
    for cursor in ChainCursor.objects.select_related("chain"):
        slug = cursor.chain.slug
        if cursor.head_block is not None:
            head.add_metric([slug], cursor.head_block)
        if cursor.block_number is not None:
            done.add_metric([slug], cursor.block_number)
        if cursor.lag is not None:
            lag.add_metric([slug], cursor.lag)
        if cursor.head_seen_at is not None:
            age.add_metric([slug], (now - cursor.head_seen_at).total_seconds())
        if cursor.processed_at is not None:
            behind.add_metric([slug], (now - cursor.processed_at).total_seconds())
        held.add_metric([slug], 1 if cursor.held_block is not None else 0)
        halted.add_metric([slug], 1 if cursor.halted else 0)
        socket.add_metric([slug], 1 if cursor.ws_state == "connected" else 0)
        wrong.add_metric([slug], cursor.inconsistencies)
    yield from (head, done, lag, age, behind, held, halted, socket, wrong)


def _endpoints() -> Iterator:
    from executor.models import RpcEndpoint

    failures = GaugeMetricFamily("kwala_rpc_endpoint_failures", "Failures in a row (0: healthy; more: cooling down)",
                                 labels=["chain", "endpoint", "kind"])
    for endpoint in RpcEndpoint.objects.filter(enabled=True).select_related("chain"):
        failures.add_metric([endpoint.chain.slug, endpoint_label(endpoint.url), endpoint.kind], endpoint.failures)
    yield failures


def endpoint_label(url: str) -> str:
    """An endpoint as a label: scheme, host and port only (a path, query or user part may hold a provider's key)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"


def _queues() -> Iterator:
    import dramatiq

    depth = GaugeMetricFamily("kwala_queue_messages", "Messages waiting in each Dramatiq queue (delayed ones apart)",
                              labels=["queue", "delayed"])
    try:
        broker = dramatiq.get_broker()
        client = getattr(broker, "client", None)
        if client is None:
            return
        for queue in sorted(broker.get_declared_queues()):
            for name, delayed in ((queue, "no"), (f"{queue}.DQ", "yes")):
                depth.add_metric([queue, delayed], client.llen(f"{broker.namespace}:{name}"))
    except Exception:
        logger.warning("metrics: could not read the queues' depth", exc_info=True)
        return
    yield depth


def _transactions() -> Iterator:
    from django.db.models import Count

    from executor.models import Transaction

    pending = GaugeMetricFamily("kwala_signer_pending_transactions",
                                "Signed contract writes not mined yet, by chain and sender", labels=["chain", "sender"])
    rows = (Transaction.objects.filter(status__in=[Transaction.Status.SIGNED, Transaction.Status.BROADCAST])
            .values("chain__slug", "from_address").annotate(n=Count("id")))
    for row in rows:
        pending.add_metric([row["chain__slug"], row["from_address"]], row["n"])
    yield pending


def _refusals() -> Iterator:
    from kwala_site import counters

    refused = CounterMetricFamily("kwala_refused", "Work the site refused, deferred or re-sent (kwala_site.counters)",
                                  labels=["what"])
    for name, value in counters.read().items():
        refused.add_metric([name], value)
    yield refused


# -- the endpoint -----------------------------------------------------------------------------


def _allowed(request) -> bool:
    token = settings.KWALA_METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def metrics_view(request) -> HttpResponse:
    if not _allowed(request):
        raise Http404("No such page")  # says nothing of what is here
    started = time.monotonic()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(StateCollector())
    body = generate_latest(registry)
    logger.debug("metrics rendered in %.1f ms", (time.monotonic() - started) * 1000)
    return HttpResponse(body, content_type="text/plain; version=0.0.4; charset=utf-8")
