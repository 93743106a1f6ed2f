"""Messages to people: Slack, Discord and Telegram in their own request formats, and email.

Chat services are called through the same guarded HTTP path as http.request
(SSRF guard, Idempotency-Key); they are not signed, since they do not verify.
"""

from __future__ import annotations

import smtplib

from django.conf import settings
from django.core.mail import EmailMessage, get_connection

from executor.steps.base import StepContext, StepError, StepResult
from executor.steps.http import send


def _webhook_url(ctx: StepContext) -> tuple[str, str]:
    """(url, url as shown in records): a URL kept in a secret is never recorded."""
    if ctx.config.get("webhook_secret"):
        return ctx.secret(ctx.config["webhook_secret"]), f"[secret {ctx.config['webhook_secret']}]"
    url = str(ctx.config["webhook_url"])
    return url, url


def run_slack(ctx: StepContext) -> StepResult:
    url, shown = _webhook_url(ctx)
    text = str(ctx.render(ctx.config["text"], "message"))
    result = send(ctx, method="POST", url=url, body={"text": text}, sign=False, shown_url=shown)
    return StepResult(output={"status_code": result.get("status_code")} if not ctx.dry_run else result)


def run_discord(ctx: StepContext) -> StepResult:
    url, shown = _webhook_url(ctx)
    content = str(ctx.render(ctx.config["content"], "message"))
    # wait=true makes Discord answer with the created message instead of 204.
    separator = "&" if "?" in url else "?"
    result = send(ctx, method="POST", url=f"{url}{separator}wait=true", body={"content": content},
                  sign=False, shown_url=f"{shown}{separator}wait=true")
    if ctx.dry_run:
        return StepResult(output=result)
    body = result.get("body")
    return StepResult(output={"status_code": result["status_code"],
                              "message_id": body.get("id") if isinstance(body, dict) else None})


def run_telegram(ctx: StepContext) -> StepResult:
    token = ctx.secret(ctx.config["bot_token_secret"])
    chat_id = str(ctx.render(ctx.config["chat_id"], "chat id"))
    text = str(ctx.render(ctx.config["text"], "message"))
    base = settings.KWALA_TELEGRAM_API_URL.rstrip("/")
    result = send(
        ctx, method="POST", url=f"{base}/bot{token}/sendMessage", body={"chat_id": chat_id, "text": text},
        sign=False, shown_url=f"{base}/bot[redacted]/sendMessage",
    )
    if ctx.dry_run:
        return StepResult(output=result)
    body = result.get("body")
    if not isinstance(body, dict) or not body.get("ok"):
        raise StepError(f"Telegram refused the message: {ctx.redact(str(body)[:200])}", permanent=True)
    return StepResult(output={"message_id": body.get("result", {}).get("message_id")})


def run_email(ctx: StepContext) -> StepResult:
    recipients = [str(ctx.render(address, "to")) for address in ctx.config["to"]]
    subject = str(ctx.render(ctx.config["subject"], "subject")).replace("\n", " ")
    body = str(ctx.render(ctx.config["body"], "body"))
    # Stable across retries, so a mail system that dedups on Message-ID drops a repeat.
    message_id = f"<{ctx.run.code}.{ctx.step['id']}@kwala>"
    ctx.sent = {"to": recipients, "subject": ctx.redact(subject), "body": ctx.redact(body)}
    if ctx.dry_run:
        return StepResult(output={"dry_run": True, "would_send": ctx.sent})
    message = EmailMessage(subject, body, to=recipients, headers={"Message-ID": message_id},
                           connection=get_connection(timeout=20))
    try:
        message.send()
    except smtplib.SMTPRecipientsRefused as exc:
        raise StepError(f"the mail server refused the recipients: {sorted(exc.recipients)}", permanent=True) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise StepError(f"could not send the email: {type(exc).__name__}: {ctx.redact(str(exc))[:200]}") from None
    return StepResult(output={"message_id": message_id})
