"""Inbound webhooks: POST /hooks/<flow code>/ starts a run of the flow's live version.

The trigger's verification decides who may call it: ``none`` (anyone with the
URL), ``hmac-sha256`` (hex HMAC of the raw body with a team secret, in the
configured header, with or without a ``sha256=`` prefix) or
``standard-webhooks`` (webhook-id / webhook-timestamp / webhook-signature).
A sender that repeats a message with the same ``webhook-id`` or
``Idempotency-Key`` gets the same run, not a second one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from executor.listener import RunClaim, claim_runs
from executor.models import Run
from flows.actions import live_version
from flows.models import Flow, Secret

logger = logging.getLogger(__name__)

# Never copied into the run's trigger: they authenticate the caller, and runs are shown to the team.
_DROPPED_HEADERS = {"authorization", "cookie", "proxy-authorization", "x-api-key"}


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message, "details": []}}, status=status)


def _secret(flow: Flow, name: str) -> str | None:
    secret = Secret.objects.filter(team_id=flow.team_id, name=name).first()
    return secret.reveal() if secret is not None else None


def _verified(spec: dict, flow: Flow, request: HttpRequest, body: bytes) -> bool:
    method = spec.get("verification") or "none"
    if method == "none":
        return True
    key = _secret(flow, spec.get("secret") or "")
    if not key:
        logger.warning("webhook for flow %s: its signing secret %r does not exist", flow.code, spec.get("secret"))
        return False
    if method == "hmac-sha256":
        given = request.headers.get(spec.get("signature_header") or "X-Signature-256", "")
        given = given.removeprefix("sha256=").strip().lower()
        expected = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
        # As bytes: compare_digest refuses a str with non-ASCII characters (a 500 before).
        return bool(given) and hmac.compare_digest(given.encode(), expected.encode())
    if method == "standard-webhooks":
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError

        try:
            Webhook(key).verify(body, {k.lower(): v for k, v in request.headers.items()})
        except (WebhookVerificationError, ValueError):
            return False
        return True
    logger.error("webhook for flow %s: unknown verification %r", flow.code, method)
    return False


@csrf_exempt
def inbound_webhook(request: HttpRequest, code: str) -> JsonResponse:
    if request.method != "POST":
        return _error(405, "method_not_allowed", "Send a POST.")
    flow = Flow.objects.filter(code=code).first()
    version = (
        live_version(flow) if flow is not None and not flow.paused
        else None
    )
    spec = (version.dag or {}).get("trigger") or {} if version is not None else {}
    if spec.get("type") != "webhook":
        # The same answer for a wrong code, a paused flow and a flow with another trigger.
        return _error(404, "not_found", "No live flow listens at this URL.")
    try:
        body = request.body
    except RequestDataTooBig:
        return _error(413, "too_large", "The request body is too large.")
    if not _verified(spec, flow, request, body):
        return _error(401, "bad_signature", "The request signature does not verify.")
    text = body.decode("utf-8", errors="replace").replace("\x00", "")
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = text
    except RecursionError:
        return _error(400, "too_deep", "The JSON body is nested too deeply.")
    sent_id = request.headers.get("webhook-id") or request.headers.get("Idempotency-Key") or ""
    trigger = {
        "type": "webhook",
        "method": request.method,
        "body": parsed,
        "headers": {k.lower(): v.replace("\x00", "") for k, v in request.headers.items()
                    if k.lower() not in _DROPPED_HEADERS},
        "query": {k: v.replace("\x00", "") for k, v in request.GET.items()},
    }
    key = f"webhook:{hashlib.sha256(sent_id.encode()).hexdigest()[:32]}" if sent_id else f"webhook:{uuid.uuid4()}"
    claim_runs([RunClaim(version_id=version.pk, flow_id=flow.pk, team_id=flow.team_id, trigger_key=key,
                         trigger=trigger)])
    run = Run.objects.get(version=version, trigger_key=key)
    return JsonResponse({"run": str(run.code), "status": run.status}, status=202)
