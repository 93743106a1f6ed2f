"""Inbound webhooks: POST /hooks/<flow code>/<token>/ starts a run of the flow's live version.

The URL's token is random per flow, shown to the flow's editors only and
rotatable (flows.actions.do_rotate_webhook_token): the flow code alone, which
viewers, teams the flow is shared with and former members know, opens nothing.
On top of it the trigger's verification decides who may call: ``none`` (anyone
with the URL), ``hmac-sha256`` (hex HMAC of the raw body with a team secret, in
the configured header, with or without a ``sha256=`` prefix; with a timestamp
header, of ``<timestamp>.<body>``, within TIMESTAMP_TOLERANCE_S) or
``standard-webhooks`` (webhook-id / webhook-timestamp / webhook-signature).

What makes a request "the same" is covered by its signature: a signed request
sent again (a retry, or a captured request replayed) finds the run it started
and starts no other (answered 200, not 202). Unsigned requests repeat by
``Idempotency-Key``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from executor import metrics
from executor.models import Run
from executor.runs.start import RunClaim, start_claimed
from executor.runs.store import known_version, prepared_cursor
from flows.models import Flow, Secret
from kwala_site import counters, ratelimit
from kwala_site.logfilters import bound

logger = logging.getLogger(__name__)

# Never copied into the run's trigger: they authenticate the caller, and runs are shown to the team.
_DROPPED_HEADERS = {"authorization", "cookie", "proxy-authorization", "x-api-key"}
# How far a signed timestamp may be from now (the Standard Webhooks library's tolerance too).
TIMESTAMP_TOLERANCE_S = 300


def _as_response(answer: Answer) -> JsonResponse:
    response = JsonResponse(answer.body, status=answer.status)
    for name, value in answer.headers.items():
        response[name] = value
    return response


def _secret(team_id: int, name: str) -> str | None:
    secret = Secret.objects.filter(team_id=team_id, name=name).first()
    return secret.reveal() if secret is not None else None


def _verified(spec: dict, hook: LiveHook, headers: Mapping[str, str], body: bytes) -> str | None:
    """None when the request does not verify; else what identifies it, covered by its
    signature ("" for an unverified webhook: the caller's Idempotency-Key decides)."""
    method = spec.get("verification") or "none"
    if method == "none":
        return ""
    key = _secret(hook.team_id, spec.get("secret") or "")
    if not key:
        logger.warning("webhook for flow %s: its signing secret %r does not exist", hook.flow_code, spec.get("secret"))
        return None
    if method == "hmac-sha256":
        given = headers.get(spec.get("signature_header") or "X-Signature-256", "")
        given = given.removeprefix("sha256=").strip().lower()
        signed = body
        timestamp_header = spec.get("timestamp_header") or ""
        if timestamp_header:
            stamp = headers.get(timestamp_header, "").strip()
            if not stamp.isdigit() or abs(time.time() - int(stamp)) > TIMESTAMP_TOLERANCE_S:
                return None
            signed = stamp.encode() + b"." + body
        expected = hmac.new(key.encode(), signed, hashlib.sha256).hexdigest()
        # As bytes: compare_digest refuses a str with non-ASCII characters (a 500 before).
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            return None
        return f"sig:{expected}"
    if method == "standard-webhooks":
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError

        lowered = {k.lower(): v for k, v in headers.items()}
        try:
            Webhook(key).verify(body, lowered)
        except (WebhookVerificationError, ValueError):
            return None
        return f"id:{lowered.get('webhook-id', '')}"  # signed, with the timestamp
    logger.error("webhook for flow %s: unknown verification %r", hook.flow_code, method)
    return None


@csrf_exempt
def tokenless_webhook(request: HttpRequest, code: str) -> JsonResponse:
    """The URL form before webhook tokens: the flow code alone opens nothing."""
    logger.info("webhook for flow %s called without its URL token; refused", code)
    return _as_response(refused(404, "not_found", "No live flow listens at this URL. Webhook URLs end with the "
                                                "webhook's token: copy the URL from the flow's webhook trigger."))


@dataclass(frozen=True)
class LiveHook:
    """What a webhook URL opens: the flow's live version, and what the door needs of its flow and team."""

    version_id: int
    flow_id: int
    flow_code: str
    team_id: int
    rate_per_minute: int


# One plain statement rather than the ORM's: building the equivalent queryset (select_related,
# defer, first) took half the web process's CPU per webhook in bench/webhook_load.py.
_LIVE_SQL = """
    SELECT v.id, f.id, f.team_id, f.webhook_token_encrypted, t.webhook_rate_per_minute
    FROM flows_flowversion v
    JOIN flows_flow f ON f.id = v.flow_id
    JOIN flows_team t ON t.id = f.team_id
    WHERE f.code = %s AND v.status = 'PUBLISHED' AND NOT f.paused
"""


def _live_webhook(code: str, token: str) -> tuple[LiveHook, dict] | None:
    """The flow's live version and its webhook trigger, if the URL opens one.

    One query. The same None for a wrong code or token, a paused flow, no live
    version and a flow with another trigger: the answer tells a caller nothing.
    """
    if "\x00" in code:
        return None  # no flow has it, and PostgreSQL text cannot hold it (the query would fail: a 500)
    with prepared_cursor() as cursor:  # at most one row: one live version per flow (a constraint)
        cursor.execute(_LIVE_SQL, [code])
        found = cursor.fetchone()
    if found is None:
        return None
    version_id, flow_id, team_id, token_encrypted, rate = found
    flow = Flow(id=flow_id, code=code, team_id=team_id, webhook_token_encrypted=token_encrypted)
    stored = flow.webhook_token()
    if not stored or not hmac.compare_digest(stored.encode(), token.encode()):
        logger.info("webhook for flow %s: wrong URL token; refused", code)
        return None
    known = known_version(version_id)  # the compiled DAG, kept per process (it never changes)
    spec = ((known.dag if known is not None else None) or {}).get("trigger") or {}
    if spec.get("type") != "webhook":
        return None
    return LiveHook(version_id, flow_id, code, team_id, rate), spec


@dataclass
class Answer:
    """What a webhook request is answered: status, JSON body, extra headers."""

    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)


def refused(status: int, code: str, message: str, **headers: str) -> Answer:
    """A refusal in the API's error format, counted by its code (the view and the ASGI door both answer with it)."""
    metrics.WEBHOOKS.labels(outcome=code).inc()
    return Answer(status, {"error": {"code": code, "message": message, "details": []}}, headers)


def accept(code: str, token: str, *, method: str, headers: Mapping[str, str], query: Mapping[str, str],
           body: bytes) -> Answer:
    """Verify, claim and start in one statement; 202 with the run's code.

    The run is stored, with its trigger, before the answer: a 202 is never lost.
    Its steps then go to the workers like a chain event's. When PostgreSQL or
    Redis cannot take the request, the caller is told to come back (503 with
    Retry-After, kwala_site.overload), never 202. Served by the ASGI door
    (executor.webhook_door) and by the Django view below, with the same answers.
    """
    found = _live_webhook(code, token)
    if found is None:
        return refused(404, "not_found", "No live flow listens at this URL.")
    hook, spec = found
    with bound(flow=hook.flow_code):
        return _accept_for(hook, spec, method=method, headers=headers, query=query, body=body)


def _accept_for(hook: LiveHook, spec: dict, *, method: str, headers: Mapping[str, str],
                query: Mapping[str, str], body: bytes) -> Answer:
    limit = hook.rate_per_minute or settings.KWALA_WEBHOOK_RATE_PER_MINUTE
    # By the flow's code, which is never reused (a primary key is, in a recreated database).
    window = ratelimit.hit(f"webhook:{hook.flow_code}", 60)
    if window.over(limit):
        logger.warning("webhook for flow %s: over its limit of %s requests a minute; answered 429",
                       hook.flow_code, limit)
        counters.incr("webhook_rate_limited")
        return refused(429, "rate_limited", f"This webhook takes at most {limit} requests a minute.",
                        **{"Retry-After": str(window.retry_after)})
    signed_as = _verified(spec, hook, headers, body)
    if signed_as is None:
        logger.info("webhook for flow %s: signature does not verify; refused", hook.flow_code)
        return refused(401, "bad_signature", "The request signature does not verify.")
    text = body.decode("utf-8", errors="replace").replace("\x00", "")
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = text
    except RecursionError:
        return refused(400, "too_deep", "The JSON body is nested too deeply.")
    # A signed request is identified by what its signature covers; headers it does not
    # cover (Idempotency-Key) would let a captured request be replayed as new.
    sent_id = signed_as or headers.get("Idempotency-Key") or ""
    trigger = {
        "type": "webhook",
        "method": method,
        "body": parsed,
        "headers": {k.lower(): v.replace("\x00", "") for k, v in headers.items()
                    if k.lower() not in _DROPPED_HEADERS},
        "query": {k: v.replace("\x00", "") for k, v in query.items()},
    }
    key = f"webhook:{hashlib.sha256(sent_id.encode()).hexdigest()[:32]}" if sent_id else f"webhook:{uuid.uuid4()}"
    run, new = start_claimed(RunClaim(version_id=hook.version_id, flow_id=hook.flow_id, team_id=hook.team_id,
                                      trigger_key=key, trigger=trigger))
    if not new:
        run = Run.objects.only("code", "status").get(version_id=hook.version_id, trigger_key=key)
        logger.info("webhook for flow %s: a repeat of run %s; no new run", hook.flow_code, run.code)
        metrics.WEBHOOKS.labels(outcome="repeat").inc()
        return Answer(200, {"run": str(run.code), "status": run.status, "repeat": True})
    metrics.WEBHOOKS.labels(outcome="accepted").inc()
    return Answer(202, {"run": str(run.code), "status": run.status})


@csrf_exempt
def inbound_webhook(request: HttpRequest, code: str, token: str) -> JsonResponse:
    """The webhook through Django: what the ASGI door does not take (a server without it, the tests' client)."""
    if request.method != "POST":
        return _as_response(refused(405, "method_not_allowed", "Send a POST."))
    try:
        body = request.body
    except RequestDataTooBig:
        return _as_response(refused(413, "too_large", "The request body is too large."))
    return _as_response(accept(code, token, method=request.method, headers=request.headers, query=request.GET,
                               body=body))
