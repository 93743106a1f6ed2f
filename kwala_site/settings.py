"""Kwala settings: one file, every knob read from the environment.

A bad value stops start-up with an ImproperlyConfigured message that names the
variable. With no DATABASE_URL / REDIS_URL the project starts embedded, real
PostgreSQL and Redis servers under the var directory (see kwala_site.dev.embedded);
that is also what turns on the development defaults (DEBUG, generated keys).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

# pytest (8.2+) exports PYTEST_VERSION, also to the workers the tests start, so
# the suite gets its own embedded servers and never touches development data.
TESTING = "PYTEST_VERSION" in os.environ


# -- environment helpers ------------------------------------------------------


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def env_bool(name: str, default: bool) -> bool:
    value = env_str(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no), got {value!r}.")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = env_str(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {value!r}.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}.")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = env_str(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


VAR_DIR = Path(env_str("KWALA_VAR_DIR") or BASE_DIR / "var" / ("test" if TESTING else "")).resolve()

# Prometheus samples from every process, added up by GET /metrics (executor.metrics). Set
# before anything imports prometheus_client, which reads it once.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "metrics"))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
# GET /metrics wants `Authorization: Bearer <this>`; unset, it answers only this machine.
KWALA_METRICS_TOKEN = env_str("KWALA_METRICS_TOKEN") or ""

# -- database and Redis ---------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")
# No DATABASE_URL means a developer's machine: embedded servers and generated
# keys. Production sets DATABASE_URL and must then set everything else too.
DEV_DEFAULTS = TESTING or DATABASE_URL is None

if DATABASE_URL is None:
    from kwala_site.dev import embedded

    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASE_URL = embedded.ensure_postgres(VAR_DIR / "pg")

if REDIS_URL is None:
    if not DEV_DEFAULTS:
        raise ImproperlyConfigured("REDIS_URL must be set when DATABASE_URL is (redis://host:6379/0).")
    from kwala_site.dev import embedded

    VAR_DIR.mkdir(parents=True, exist_ok=True)
    REDIS_URL = embedded.ensure_redis(VAR_DIR / "redis")


def _database_from_url(url: str) -> dict:
    import dj_database_url

    scheme = urlsplit(url).scheme
    if scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ImproperlyConfigured(
            f"DATABASE_URL must be a PostgreSQL URL (postgresql://user:pass@host:5432/name), got scheme {scheme!r}."
        )
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
    if not config.get("NAME"):
        raise ImproperlyConfigured("DATABASE_URL must name a database (…/dbname).")
    config["ENGINE"] = "django.db.backends.postgresql"
    options = config.setdefault("OPTIONS", {})
    # Django binds parameters client-side and never prepares. The executor's hot statements
    # use a server-binding cursor (executor.runs.store.prepared_cursor): psycopg prepares what it
    # runs at first use, and PostgreSQL keeps one generic plan per connection instead of
    # planning each time (planning the pushed-claim statement costs more than running it;
    # see executor.apps.use_generic_plans).
    options.setdefault("prepare_threshold", 0)
    if env_bool("KWALA_DB_POOL", default=False):
        # The web server (kwala_site.asgi turns this on) pools its connections. Under ASGI
        # every request's sync code runs in a thread of its own, and with a connection kept
        # per thread a burst of callers made PostgreSQL refuse connections ("too many
        # clients already"), answered as 500s. A request that waits longer than the timeout
        # for a connection is answered 503 with Retry-After (kwala_site.overload).
        config["CONN_MAX_AGE"] = 0  # the pool keeps them instead
        # No "SELECT 1" before every request (Django asks the pool to check each connection it
        # hands out when health checks are on): that was a round trip per webhook, ~7% of the web
        # process's samples in bench/webhook_load.py. A connection that died is dropped by the pool
        # when it is returned; the one request that meets it is answered 503 (kwala_site.overload).
        config["CONN_HEALTH_CHECKS"] = False
        options["pool"] = {
            "min_size": 2,
            "max_size": env_int("KWALA_DB_POOL_SIZE", 16, minimum=1),
            "timeout": env_int("KWALA_DB_POOL_TIMEOUT", 10, minimum=1),
        }
    return config


def _check_redis_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ImproperlyConfigured(
            f"REDIS_URL must start with redis://, rediss:// or unix://, got {url.split(':', 1)[0]!r}."
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ImproperlyConfigured("REDIS_URL must name a host (redis://host:6379/0).")
    return url


DATABASES = {"default": _database_from_url(DATABASE_URL)}
REDIS_URL = _check_redis_url(REDIS_URL)

# -- core -----------------------------------------------------------------------

DEBUG = env_bool("DEBUG", default=DEV_DEFAULTS and not TESTING)


def _dev_secret_file(name: str, make) -> str:
    """A generated value kept under var/, for development only."""
    path = VAR_DIR / name
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env_str("SECRET_KEY")
if SECRET_KEY is None:
    if not DEV_DEFAULTS:
        raise ImproperlyConfigured("SECRET_KEY must be set in production (a long random string).")
    SECRET_KEY = _dev_secret_file("secret_key", lambda: secrets.token_urlsafe(50))
elif len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:
    # Django's own deploy check (security.W009) asks for 50 characters, 5 of them different.
    raise ImproperlyConfigured("SECRET_KEY must be at least 50 characters long (and not one character repeated).")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEV_DEFAULTS else [])
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must list the host names Kwala is served on (comma-separated).")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
for origin in CSRF_TRUSTED_ORIGINS:
    if urlsplit(origin).scheme not in {"http", "https"}:
        raise ImproperlyConfigured(f"CSRF_TRUSTED_ORIGINS entries must start with http:// or https://, got {origin!r}.")


def _encryption_keys(raw: str) -> list[bytes]:
    """KWALA_ENCRYPTION_KEYS: comma-separated url-safe base64 32-byte keys, newest first.

    The first key wraps new data keys; the others only unwrap, so a key can be
    rotated by prepending a new one and running `manage.py rotate_encryption_keys`.
    """
    keys = []
    for index, item in enumerate(raw.split(",")):
        item = item.strip()
        try:
            key = base64.urlsafe_b64decode(item + "=" * (-len(item) % 4))
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            raise ImproperlyConfigured(
                f"KWALA_ENCRYPTION_KEYS entry {index + 1} is not a url-safe base64 32-byte key "
                "(make one with: python -c \"import os,base64;print(base64.urlsafe_b64encode(os.urandom(32)).decode())\")."
            )
        keys.append(key)
    return keys


_keys_raw = env_str("KWALA_ENCRYPTION_KEYS")
if _keys_raw is None:
    if not DEV_DEFAULTS:
        raise ImproperlyConfigured("KWALA_ENCRYPTION_KEYS must be set in production.")
    _keys_raw = _dev_secret_file("encryption_keys", lambda: base64.urlsafe_b64encode(os.urandom(32)).decode())
KWALA_ENCRYPTION_KEYS = _encryption_keys(_keys_raw)

# -- chains -------------------------------------------------------------------------

DEV_CHAINS = [
    {
        "slug": "anvil-a",
        "name": "Anvil A (local)",
        "chain_id": 31337,
        "rpc_urls": ["http://127.0.0.1:8545"],
        "ws_urls": ["ws://127.0.0.1:8545"],
        "confirmations": 0,
        "finalized_tag": False,
        "explorer_url": "",
    },
    {
        "slug": "anvil-b",
        "name": "Anvil B (local)",
        "chain_id": 31338,
        "rpc_urls": ["http://127.0.0.1:8546"],
        "ws_urls": ["ws://127.0.0.1:8546"],
        "confirmations": 0,
        "finalized_tag": False,
        "explorer_url": "",
    },
]


def _chains(raw: str | None) -> list[dict]:
    """KWALA_CHAINS: a JSON list of chains, or @path to a JSON file (see README)."""
    if raw is None:
        return DEV_CHAINS if DEV_DEFAULTS else []
    try:
        if raw.startswith("@"):
            raw = Path(raw[1:]).read_text()
        chains = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ImproperlyConfigured(f"KWALA_CHAINS must be a JSON list of chains or @/path/to/file.json: {exc}") from None
    if not isinstance(chains, list):
        raise ImproperlyConfigured("KWALA_CHAINS must be a JSON list of chains.")
    seen_ids, seen_slugs = set(), set()
    for index, chain in enumerate(chains):
        where = f"KWALA_CHAINS[{index}]"
        if not isinstance(chain, dict):
            raise ImproperlyConfigured(f"{where} must be an object.")
        for key in ("slug", "name", "chain_id", "rpc_urls"):
            if key not in chain:
                raise ImproperlyConfigured(f"{where} is missing {key!r}.")
        if not isinstance(chain["chain_id"], int) or chain["chain_id"] <= 0:
            raise ImproperlyConfigured(f"{where}.chain_id must be a positive integer.")
        urls = chain["rpc_urls"]
        if not isinstance(urls, list) or not urls:
            raise ImproperlyConfigured(f"{where}.rpc_urls must be a non-empty list of http(s) URLs.")
        for url in urls:
            if urlsplit(str(url)).scheme not in {"http", "https"}:
                raise ImproperlyConfigured(f"{where}.rpc_urls has a non-http(s) URL: {url!r}.")
        for url in chain.setdefault("ws_urls", []):
            if urlsplit(str(url)).scheme not in {"ws", "wss"}:
                raise ImproperlyConfigured(f"{where}.ws_urls has a non-ws(s) URL: {url!r}.")
        if chain["chain_id"] in seen_ids or chain["slug"] in seen_slugs:
            raise ImproperlyConfigured(f"{where} repeats chain id {chain['chain_id']} or slug {chain['slug']!r}.")
        seen_ids.add(chain["chain_id"])
        seen_slugs.add(chain["slug"])
        confirmations = chain.setdefault("confirmations", 0)
        if not isinstance(confirmations, int) or confirmations < 0:
            raise ImproperlyConfigured(f"{where}.confirmations must be a whole number >= 0.")
        chain.setdefault("finalized_tag", False)
        verify_with = chain.setdefault("verify_with", 1)
        if not isinstance(verify_with, int) or not 1 <= verify_with <= 5:
            raise ImproperlyConfigured(f"{where}.verify_with must be a whole number from 1 to 5.")
        chain.setdefault("explorer_url", "")
    return chains


KWALA_CHAINS = _chains(env_str("KWALA_CHAINS"))


def _networks(name: str, default: list[str]) -> list:
    nets = []
    for item in env_list(name, default):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{name} must be a comma-separated list of CIDR networks, got {item!r}.") from None
    return nets


# Outgoing HTTP from flows refuses internal addresses; these networks are let
# through anyway. Loopback is opened for local development only.
KWALA_OUTBOUND_ALLOW = _networks(
    "KWALA_OUTBOUND_ALLOW", ["127.0.0.0/8", "::1/128"] if DEV_DEFAULTS else []
)

# -- Django -------------------------------------------------------------------------

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "template_partials",
    "django_htmx",
    "channels",
    "django_dramatiq",
    "flows",
    "executor",
    "kwala_site.dev",
]

MIDDLEWARE = [
    "kwala_site.nulbytes.RefuseNulBytes",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

# Content-Security-Policy on every page (django-csp): scripts only from this site, no inline
# script, no eval; pages, the API and websockets only talk to this site. Styles allow inline
# style attributes: the canvas library (X6) and htmx's indicator styles set them.
from csp.constants import NONE, SELF, UNSAFE_INLINE  # noqa: E402

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF, "ws:", "wss:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

ROOT_URLCONF = "kwala_site.urls"
WSGI_APPLICATION = "kwala_site.wsgi.application"
ASGI_APPLICATION = "kwala_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "executor.context_processors.alerts",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if TESTING:
    # Hashing dominates test set-up time; production keeps the default hasher.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where collectstatic writes; bench/editor_load.py points it at a temporary directory.
STATIC_ROOT = Path(env_str("STATIC_ROOT") or BASE_DIR / "staticfiles")
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG or TESTING
        else "kwala_site.storage.StaticFilesStorage"
    },
}
# Serve straight from the app and static dirs when no collectstatic has run (dev, tests).
WHITENOISE_USE_FINDERS = DEBUG or TESTING

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if not DEBUG and not TESTING:
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_CONTENT_TYPE_NOSNIFF = True

if not DEV_DEFAULTS:
    # Production (DATABASE_URL set): HTTPS only, as `manage.py check --deploy` expects.
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Load balancers probe health over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    # Trust X-Forwarded-Proto only when a proxy that sets it is said to be in front:
    # otherwise any client could claim HTTPS.
    _proxy_header = env_str("SECURE_PROXY_SSL_HEADER")  # e.g. "HTTP_X_FORWARDED_PROTO=https"
    if _proxy_header:
        _name, _, _value = _proxy_header.partition("=")
        if not _name.startswith("HTTP_") or not _value:
            raise ImproperlyConfigured("SECURE_PROXY_SSL_HEADER must look like HTTP_X_FORWARDED_PROTO=https.")
        SECURE_PROXY_SSL_HEADER = (_name, _value)

# -- email --------------------------------------------------------------------------

EMAIL_HOST = env_str("EMAIL_HOST")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env_int("EMAIL_PORT", 587, minimum=1)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", EMAIL_PORT == 587)
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Kwala <kwala@localhost>")

# -- Channels and Dramatiq -------------------------------------------------------

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # redis-py 8 reads with a 5 s socket timeout by default, the same as channels_redis'
        # 5 s BZPOPMIN: every idle websocket consumer then dies with TimeoutError. Wait longer.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}], "capacity": 1000, "expiry": 30},
    }
}

# A killed worker's unacked messages are taken back by the survivors once its
# heartbeat is older than heartbeat_timeout, during "maintenance", which runs on
# maintenance_chance commands out of a MILLION (dramatiq's scale; default 1,000).
# Idle workers issue a few commands a second, so 100,000 (10%) runs it about
# every second: with the default 60 s timeout and 0.1% chance work sat for minutes.
DRAMATIQ_HEARTBEAT_TIMEOUT_MS = env_int("DRAMATIQ_HEARTBEAT_TIMEOUT_MS", 5_000, minimum=1_000)
DRAMATIQ_BROKER = {
    "BROKER": "executor.broker.WakingRedisBroker",
    "OPTIONS": {
        "url": REDIS_URL,
        "heartbeat_timeout": DRAMATIQ_HEARTBEAT_TIMEOUT_MS,
        "maintenance_chance": env_int("DRAMATIQ_MAINTENANCE_CHANCE", 100_000, minimum=1),
        "dead_message_ttl": 7 * 24 * 3600 * 1000,
    },
    "MIDDLEWARE": [
        "dramatiq.middleware.AgeLimit",
        "dramatiq.middleware.TimeLimit",
        "dramatiq.middleware.Callbacks",
        "dramatiq.middleware.Retries",
        "executor.middleware.WarmDbConnections",  # django_dramatiq's, plus connecting ahead of work
    ],
}
DRAMATIQ_AUTODISCOVER_MODULES = ["tasks"]
# An idle consumer waits on its queue's doorbell (executor.broker) for up to this
# many ms, then fetches anyway: messages re-queued from a dead worker come with no
# doorbell, and each fetch also refreshes the worker's heartbeat and gives
# maintenance (above) its chance to run.
DRAMATIQ_WORKER_TIMEOUT_MS = env_int("DRAMATIQ_WORKER_TIMEOUT_MS", 500, minimum=1)
os.environ.setdefault("dramatiq_worker_timeout", str(DRAMATIQ_WORKER_TIMEOUT_MS))

# -- logging --------------------------------------------------------------------------

LOG_FORMAT = env_str("LOG_FORMAT", "plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, got {LOG_FORMAT!r}.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "kwala_site.logfilters.PlainFormatter",
                  "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        # One object a line: timestamp, level, logger, message, and run/flow when a run is concerned.
        "json": {"()": "pythonjsonlogger.json.JsonFormatter",
                 "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
                 "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"}},
    },
    # A webhook URL's token is its credential: no log line shows it (Django logs a 4xx's path).
    "filters": {"webhook_tokens": {"()": "kwala_site.logfilters.RedactWebhookTokens"},
                "run_context": {"()": "kwala_site.logfilters.RunContext"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT,
                             "filters": ["webhook_tokens", "run_context"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "httpx": {"level": "WARNING"},
        "pgserver": {"level": "WARNING"},
    },
}

# -- executor ---------------------------------------------------------------------------

# Where notify.telegram sends (tests point it at a local sink).
KWALA_TELEGRAM_API_URL = env_str("KWALA_TELEGRAM_API_URL", "https://api.telegram.org")
# Optional Slack-compatible webhook told once about every failed run (besides the in-app notice).
KWALA_FAILURE_WEBHOOK_URL = env_str("KWALA_FAILURE_WEBHOOK_URL", "")
# Inbound webhook requests per flow per minute before 429 (a team's own limit is set in the admin).
KWALA_WEBHOOK_RATE_PER_MINUTE = env_int("KWALA_WEBHOOK_RATE_PER_MINUTE", 6000, minimum=1)
# CPU time one team's trigger conditions may take on one block before its flows are paused
# with an alert (executor.quotas); a team's own limit is set in the admin.
KWALA_CONDITION_MS_PER_BLOCK = env_int("KWALA_CONDITION_MS_PER_BLOCK", 500, minimum=1)
# Runs started per minute, per flow and per team (executor.quotas.run_start_wait): a run over
# either is not dropped, it starts in the next minute. A team's own limits are set in the admin.
KWALA_RUNS_PER_MINUTE_PER_FLOW = env_int("KWALA_RUNS_PER_MINUTE_PER_FLOW", 30_000, minimum=1)
KWALA_RUNS_PER_MINUTE_PER_TEAM = env_int("KWALA_RUNS_PER_MINUTE_PER_TEAM", 60_000, minimum=1)
# How long finished runs are kept (failed ones longer), pruned by the sweeper every interval
# (executor.retention); a team's own retention is set in the admin.
KWALA_RUN_RETENTION_DAYS = env_int("KWALA_RUN_RETENTION_DAYS", 30, minimum=1)
KWALA_FAILED_RUN_RETENTION_DAYS = env_int("KWALA_FAILED_RUN_RETENTION_DAYS", 90, minimum=1)
KWALA_RETENTION_INTERVAL_SECONDS = env_int("KWALA_RETENTION_INTERVAL_SECONDS", 600, minimum=10)
# While runs are due, the sweeper deletes them for this long between two of its sweeps (every
# 2 s): about a tenth of the time, ~450 runs/s with 10M runs kept, 4 times what 100 runs/s need
# (bench/history_scale.py).
KWALA_RETENTION_SLICE_MS = env_int("KWALA_RETENTION_SLICE_MS", 200, minimum=10)
# How long the per-hour run counts the flows page reads are kept (executor.rollups); at least
# the page's 7 days.
KWALA_ROLLUP_RETENTION_DAYS = env_int("KWALA_ROLLUP_RETENTION_DAYS", 400, minimum=8)
# The sweeper re-sends work that sat QUEUED this long without being picked up (lost messages).
KWALA_SWEEP_GRACE_SECONDS = env_int("KWALA_SWEEP_GRACE_SECONDS", 30, minimum=1)
# A replay job still running after this long lost its worker: the sweeper queues it again.
KWALA_REPLAY_JOB_TIMEOUT_SECONDS = env_int("KWALA_REPLAY_JOB_TIMEOUT_SECONDS", 1800, minimum=60)
# How long a claimed step may run before the sweeper hands it to another worker.
KWALA_STEP_LEASE_SECONDS = env_int("KWALA_STEP_LEASE_SECONDS", 30, minimum=2)
# contract.write: poll for a receipt this often; replace a transaction unmined after this long.
KWALA_TX_POLL_SECONDS = env_int("KWALA_TX_POLL_SECONDS", 2, minimum=1)
KWALA_TX_REPLACE_AFTER_SECONDS = env_int("KWALA_TX_REPLACE_AFTER_SECONDS", 60, minimum=5)
