"""http.request, and the one outgoing-HTTP path every step that calls a URL shares.

Every request goes through the SSRF guard (pinned address, no redirects), carries
an Idempotency-Key that is stable across retries of the same step, and is signed
with the flow's secret by the Standard Webhooks scheme so receivers can verify it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from executor import ssrf
from executor.steps.base import StepContext, StepError, StepResult, to_jsonable

USER_AGENT = "Kwala-Webhooks/1"
# Recorded response bodies are cut to this many characters; the cap on what is read is max_response_bytes.
RECORDED_BODY_CHARS = 64_000


def idempotency_key(ctx: StepContext) -> str:
    """The same for every attempt of this step of this run, so a receiver can drop repeats."""
    return f"{ctx.run.code}:{ctx.step['id']}"


# JavaScript (and every JSON parser that reads numbers as doubles) silently rounds integers
# beyond 2**53 - 1: a uint256 amount of 1.5e21 wei would arrive changed. Such integers go out
# as decimal strings; smaller ones stay numbers.
MAX_SAFE_INTEGER = 2**53 - 1


def _safe_numbers(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) > MAX_SAFE_INTEGER:
        return str(value)
    if isinstance(value, dict):
        return {k: _safe_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_safe_numbers(v) for v in value]
    return value


def _encode_body(body: Any) -> tuple[bytes | None, str | None]:
    if body is None or body == "":
        return None, None
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return json.dumps(_safe_numbers(to_jsonable(body)), separators=(",", ":")).encode(), "application/json"


def send(
    ctx: StepContext,
    *,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
    timeout: float = 10,
    max_response_bytes: int = 1_000_000,
    expected_status: list[int] | None = None,
    sign: bool = True,
    shown_url: str | None = None,
) -> dict:
    """Send one request and return {status_code, headers, body}; raise StepError on failure.

    5xx, 429, timeouts and network errors are retryable; a refused address, a
    redirect, another unexpected status and an oversized response are permanent.
    `shown_url` replaces the URL in records when the URL itself holds a secret.
    In a dry run nothing is sent and the request is recorded instead.
    """
    content, content_type = _encode_body(body)
    out_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    if content_type and not any(k.lower() == "content-type" for k in out_headers):
        out_headers["Content-Type"] = content_type
    key = idempotency_key(ctx)
    out_headers["Idempotency-Key"] = key
    secret = ctx.run.flow.signing_secret
    if sign and secret:
        timestamp = datetime.now(UTC)
        out_headers["webhook-id"] = key
        out_headers["webhook-timestamp"] = str(int(timestamp.timestamp()))
        out_headers["webhook-signature"] = Webhook(secret).sign(key, timestamp, (content or b"").decode())
    shown = {
        "method": method,
        "url": ctx.redact(shown_url or url),
        "headers": {k: ctx.redact(v) for k, v in out_headers.items() if k.lower() != "webhook-signature"},
        "body": ctx.redact(content.decode(errors="replace")) if content else None,
    }
    ctx.sent = shown
    if ctx.dry_run:
        return {"dry_run": True, "would_send": shown}

    try:
        target = ssrf.resolve(url)
    except ssrf.OutboundBlocked as exc:
        raise StepError(f"refused to call {ctx.redact(shown_url or url)}: {exc}", permanent=True) from None
    request = ssrf.build_request(target, method, headers=out_headers, content=content, timeout=timeout)
    try:
        response = ssrf.send(target, request)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise StepError(f"could not connect: {ctx.redact(str(exc)) or type(exc).__name__}") from None
    except httpx.TimeoutException:
        raise StepError(f"no answer within {timeout:g}s") from None
    except httpx.HTTPError as exc:
        # Connected: the request may have been received (and acted on) even though no answer came.
        raise StepError(f"the connection broke before an answer (the request may have been received): "
                        f"{ctx.redact(str(exc)) or type(exc).__name__}") from None
    try:
        raw = _read_capped(response, max_response_bytes)
    except httpx.HTTPError as exc:
        raise StepError(f"the response broke off: {type(exc).__name__}") from None
    finally:
        response.close()

    status = response.status_code
    result = {
        "status_code": status,
        "headers": dict(response.headers),
        "body": _decode_body(raw, response.headers.get("content-type", "")),
    }
    ok = status in expected_status if expected_status else 200 <= status < 300
    if not ok:
        snippet = ctx.redact(raw[:200].decode(errors="replace"))
        if 300 <= status < 400:
            location = ctx.redact(response.headers.get("location", ""))
            raise StepError(f"got a redirect ({status} to {location}); redirects are not followed", permanent=True)
        message = f"unexpected status {status}: {snippet}".rstrip(": ")
        raise StepError(message, permanent=not (status >= 500 or status in (408, 425, 429)))
    return result


def _read_capped(response: httpx.Response, limit: int) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise StepError(f"the response is larger than the limit of {limit:,} bytes", permanent=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_body(raw: bytes, content_type: str) -> Any:
    if "json" in content_type:
        try:
            return json.loads(raw)
        except ValueError:
            pass
    return raw.decode(errors="replace")[:RECORDED_BODY_CHARS]


def run_request(ctx: StepContext) -> StepResult:
    config = ctx.config
    url = str(ctx.render(config["url"], "URL"))
    headers = {str(k): str(v) for k, v in (ctx.render(config.get("headers") or {}, "headers")).items()}
    body = ctx.render(config.get("body"), "body")
    result = send(
        ctx,
        method=config.get("method") or "POST",
        url=url,
        headers=headers,
        body=body,
        timeout=float(config.get("timeout") or 10),
        max_response_bytes=int(config.get("max_response_bytes") or 1_000_000),
        expected_status=list(config.get("expected_status") or []),
    )
    return StepResult(output=result)
