"""Every bad environment variable stops start-up with a message naming it."""

from __future__ import annotations

import base64
import json
import re
import runpy
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

SETTINGS = Path(__file__).resolve().parents[2] / "kwala_site" / "settings.py"
GOOD_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()
PRODUCTION = {
    "DATABASE_URL": "postgresql://kwala:pw@db.internal:5432/kwala",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "SECRET_KEY": "kwala-production-secret-" + "x9Q2" * 8,
    "ALLOWED_HOSTS": "kwala.example.com",
    "KWALA_ENCRYPTION_KEYS": GOOD_KEY,
}


def load_settings(monkeypatch, env: dict, *, testing: bool = False) -> dict:
    for name in list(PRODUCTION) + ["DEBUG", "KWALA_CHAINS", "EMAIL_PORT", "KWALA_OUTBOUND_ALLOW",
                                    "SECURE_PROXY_SSL_HEADER"]:
        monkeypatch.delenv(name, raising=False)
    if not testing:
        monkeypatch.delenv("PYTEST_VERSION", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS))


def test_production_settings_load_from_the_environment(monkeypatch):
    values = load_settings(monkeypatch, PRODUCTION)
    assert values["DEBUG"] is False
    assert values["DATABASES"]["default"]["HOST"] == "db.internal"
    assert values["DATABASES"]["default"]["NAME"] == "kwala"
    assert values["ALLOWED_HOSTS"] == ["kwala.example.com"]
    assert values["KWALA_ENCRYPTION_KEYS"] == [b"k" * 32]
    assert values["KWALA_OUTBOUND_ALLOW"] == []  # loopback stays closed in production
    assert values["KWALA_CHAINS"] == []


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DATABASE_URL", "mysql://x@y/z", "DATABASE_URL must be a PostgreSQL URL"),
        ("DATABASE_URL", "postgresql://x@y:5432/", "DATABASE_URL must name a database"),
        ("REDIS_URL", "http://redis:6379", "REDIS_URL must start with redis://"),
        ("REDIS_URL", "redis://", "REDIS_URL must name a host"),
        ("SECRET_KEY", "short", "SECRET_KEY must be at least 50 characters"),
        ("SECRET_KEY", "s" * 60, "SECRET_KEY must be at least 50 characters"),
        ("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto", "SECURE_PROXY_SSL_HEADER must look like"),
        ("DEBUG", "maybe", "DEBUG must be a boolean"),
        ("ALLOWED_HOSTS", " , ", "ALLOWED_HOSTS must list the host names"),
        ("KWALA_ENCRYPTION_KEYS", "not-a-key", "KWALA_ENCRYPTION_KEYS entry 1 is not"),
        ("KWALA_ENCRYPTION_KEYS", f"{GOOD_KEY},abc", "KWALA_ENCRYPTION_KEYS entry 2 is not"),
        ("KWALA_CHAINS", "{not json", "KWALA_CHAINS must be a JSON list"),
        ("KWALA_CHAINS", json.dumps([{"slug": "eth"}]), "KWALA_CHAINS[0] is missing 'name'"),
        (
            "KWALA_CHAINS",
            json.dumps([{"slug": "eth", "name": "E", "chain_id": 1, "rpc_urls": ["ftp://x"]}]),
            "KWALA_CHAINS[0].rpc_urls has a non-http(s) URL",
        ),
        (
            "KWALA_CHAINS",
            json.dumps([{"slug": "eth", "name": "E", "chain_id": 1, "rpc_urls": ["https://x"], "confirmations": -1}]),
            "KWALA_CHAINS[0].confirmations must be a whole number",
        ),
        ("KWALA_OUTBOUND_ALLOW", "10.0.0.0/8,nonsense", "KWALA_OUTBOUND_ALLOW must be a comma-separated list"),
        ("EMAIL_HOST", "smtp.example.com", None),  # valid on its own; EMAIL_PORT checked below
    ],
)
def test_each_bad_variable_names_itself(monkeypatch, name, value, message):
    env = dict(PRODUCTION, **{name: value})
    if message is None:
        env["EMAIL_PORT"] = "smtp"
        message = "EMAIL_PORT must be a whole number"
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        load_settings(monkeypatch, env)


@pytest.mark.parametrize("missing", ["SECRET_KEY", "KWALA_ENCRYPTION_KEYS", "ALLOWED_HOSTS", "REDIS_URL"])
def test_production_requires_every_secret_and_host(monkeypatch, missing):
    env = {k: v for k, v in PRODUCTION.items() if k != missing}
    with pytest.raises(ImproperlyConfigured, match=missing):
        load_settings(monkeypatch, env)


def test_chains_can_be_read_from_a_file(monkeypatch, tmp_path):
    chains = [{"slug": "base", "name": "Base", "chain_id": 8453, "rpc_urls": ["https://base.example"]}]
    path = tmp_path / "chains.json"
    path.write_text(json.dumps(chains))
    values = load_settings(monkeypatch, dict(PRODUCTION, KWALA_CHAINS=f"@{path}"))
    assert values["KWALA_CHAINS"][0]["chain_id"] == 8453
    assert values["KWALA_CHAINS"][0]["confirmations"] == 0


def test_the_deploy_check_finds_nothing_to_warn_about_in_production():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_VERSION", "DEBUG", "KWALA_VAR_DIR")}
    env.update(PRODUCTION, DJANGO_SETTINGS_MODULE="kwala_site.settings")
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=SETTINGS.parents[1], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_the_proxy_header_is_trusted_only_when_configured(monkeypatch):
    assert "SECURE_PROXY_SSL_HEADER" not in load_settings(monkeypatch, PRODUCTION)
    values = load_settings(monkeypatch, dict(PRODUCTION, SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO=https"))
    assert values["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert values["SECURE_SSL_REDIRECT"] is True and values["SECURE_HSTS_SECONDS"] >= 31_536_000


def test_json_logs_carry_the_run_and_flow_codes_and_no_webhook_token(tmp_path):
    import os
    import subprocess
    import sys

    from django.conf import settings

    script = (
        "import logging, django; django.setup()\n"
        "from kwala_site.logfilters import bound\n"
        "log = logging.getLogger('kwala.test')\n"
        "with bound(flow='FLOWCODE', run='RUNCODE'):\n"
        "    log.warning('step failed for %s', '/hooks/FLOWCODE/SECRET-TOKEN/')\n"
        "log.warning('outside any run')\n"
    )
    env = {**os.environ, "LOG_FORMAT": "json", "DJANGO_SETTINGS_MODULE": "kwala_site.settings",
           "KWALA_VAR_DIR": str(settings.VAR_DIR)}
    result = subprocess.run([sys.executable, "-c", script], cwd=settings.BASE_DIR, env=env, capture_output=True,
                            text=True, timeout=120)
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    inside, outside = (line for line in lines if line["logger"] == "kwala.test")
    assert (inside["run"], inside["flow"], inside["level"]) == ("RUNCODE", "FLOWCODE", "WARNING")
    assert inside["message"] == "step failed for /hooks/FLOWCODE/…/"
    assert "SECRET-TOKEN" not in result.stderr
    assert "run" not in outside and outside["message"] == "outside any run"
