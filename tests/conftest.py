"""Fixtures shared by the whole suite.

Real services only: the embedded PostgreSQL and Redis (or those named by
DATABASE_URL / REDIS_URL), Dramatiq workers, an ASGI server and Chromium are
started here, once per session, and talk to the test database.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings

from flows.models import Membership, Team

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


# -- people -----------------------------------------------------------------------


@pytest.fixture
def team(db):
    return Team.objects.create(name="Acme DAO")


@pytest.fixture
def alice(db, team, django_user_model):
    """Owns the team."""
    user = django_user_model.objects.create_user("alice", "alice@example.com", "alice-password-1")
    Membership.objects.create(team=team, user=user, role=Membership.Role.OWNER)
    return user


@pytest.fixture
def bob(db, team, django_user_model):
    """An editor in alice's team."""
    user = django_user_model.objects.create_user("bob", "bob@example.com", "bob-password-1")
    Membership.objects.create(team=team, user=user, role=Membership.Role.EDITOR)
    return user


@pytest.fixture
def charlie(db, django_user_model):
    """An outsider with a team of his own."""
    user = django_user_model.objects.create_user("charlie", "charlie@example.com", "charlie-password-1")
    Membership.objects.create(team=Team.objects.create(name="Other DAO"), user=user, role=Membership.Role.OWNER)
    return user


# -- processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_for(settings_dict: dict) -> str:
    """A DATABASE_URL for child processes that points at the test database."""
    host = settings_dict.get("HOST") or ""
    port = settings_dict.get("PORT") or ""
    user = quote(settings_dict.get("USER") or "")
    password = settings_dict.get("PASSWORD") or ""
    auth = f"{user}:{quote(password)}@" if password else f"{user}@"
    location = quote(host, safe="") if host.startswith("/") else host + (f":{port}" if port else "")
    return f"postgresql://{auth}{location}/{settings_dict['NAME']}"


@pytest.fixture(scope="session")
def child_env(django_db_setup, django_db_blocker, http_sink_server, smtp_sink_server) -> dict:
    """Environment for every process the tests start (workers, listeners, uvicorn).

    One environment for all of them: any worker may take any message, so they must
    all see the same test database, Redis, local stand-ins for the outside world
    (Telegram, SMTP) and the short leases the recovery tests rely on.
    """
    from django.db import connection

    env = dict(os.environ)
    env["DATABASE_URL"] = database_url_for(connection.settings_dict)
    env["REDIS_URL"] = settings.REDIS_URL
    env["KWALA_VAR_DIR"] = str(settings.VAR_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(
        KWALA_STEP_LEASE_SECONDS="3",
        KWALA_SWEEP_GRACE_SECONDS="2",
        KWALA_TX_POLL_SECONDS="1",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(smtp_sink_server.port),
        KWALA_TELEGRAM_API_URL=f"{http_sink_server.url}/telegram",
    )
    return env


class Service:
    """A child process with its output in a log file, stopped at teardown."""

    def __init__(self, name: str, args: list[str], env: dict, log_dir: Path):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not say {text!r}:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def stop(self, sig_timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(sig_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def service_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("services")


def start_worker(child_env: dict, log_dir: Path, name: str = "worker", threads: int = 4) -> Service:
    worker = Service(
        name,
        [sys.executable, "manage.py", "rundramatiq", "--processes", "1", "--threads", str(threads)],
        child_env,
        log_dir,
    )
    worker.wait_for_output("Worker process is ready for action", timeout=30)
    WORKERS.append(worker)
    return worker


# Every Dramatiq worker the tests started and have not stopped: a test that needs one
# particular worker to take a message must pause the others (any of them may take it).
WORKERS: list[Service] = []


def running_workers() -> list[Service]:
    return [worker for worker in WORKERS if worker.process.poll() is None]


@pytest.fixture(scope="session")
def dramatiq_worker(child_env, service_logs):
    """A real Dramatiq worker process consuming the test Redis broker."""
    worker = start_worker(child_env, service_logs)
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def asgi_server(child_env, service_logs):
    """The real ASGI app under uvicorn, on a free port, against the test database."""
    port = free_port()
    server = Service(
        "uvicorn",
        [sys.executable, "-m", "uvicorn", "kwala_site.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--no-access-log"],
        child_env,
        service_logs,
    )
    server.wait_for_output("Uvicorn running on", timeout=30)
    server.url = f"http://127.0.0.1:{port}"
    yield server
    server.stop()


# -- browser ------------------------------------------------------------------------

CHROMIUM = os.environ.get("KWALA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (no browser download).

    Module-scoped: Playwright's sync API keeps an event loop in this thread while
    it is open, which would break async_to_sync in every later test.
    """
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium package (make test does).")
    # Playwright's sync API runs an event loop in this thread; the ORM calls the
    # tests make in between are still plain synchronous code.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def page(browser, request):
    """A fresh browser context; saves a screenshot to test-artifacts/ when the test fails."""
    # Playwright's own string predicates (wait_for_function) are evaluated as code, which the
    # site's Content-Security-Policy refuses; tests/e2e/test_editor.py checks the policy itself
    # in a context that does not bypass it.
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=request.node.get_closest_marker(
        "csp") is None)
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: console_errors.append(str(exc)))
    page.console_errors = console_errors
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def login(page, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base_url}/")


@pytest.fixture(scope="session", autouse=True)
def _flush_retries_on_deadlock():
    """Between transactional tests pytest-django TRUNCATEs every table while the session's
    workers, sweepers and listeners keep working; PostgreSQL may then pick the TRUNCATE as a
    deadlock victim. Its transaction was rolled back whole, so trying again is safe."""
    from django.core.management.commands import flush
    from django.db import OperationalError

    original = flush.Command.handle

    def handle(self, *args, **options):
        for attempt in range(5):
            try:
                return original(self, *args, **options)
            except Exception as exc:
                deadlock = isinstance(exc.__cause__, OperationalError) and "deadlock detected" in str(exc.__cause__)
                if not deadlock or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    flush.Command.handle = handle
    yield
    flush.Command.handle = original


def pytest_configure(config):
    # The outermost pytest owns the embedded servers; a pytest that a test starts inside it
    # (tests/e2e/test_artifacts.py) inherits this and must leave them running.
    os.environ.setdefault("KWALA_TEST_SERVERS_OWNER", str(os.getpid()))
    if os.environ["KWALA_TEST_SERVERS_OWNER"] == str(os.getpid()):
        from executor.metrics import clear_samples

        clear_samples()  # counters start at zero with the session's processes


def pytest_unconfigure(config):
    """Leave no server running: stop the embedded PostgreSQL and Redis that this run started
    (servers named by DATABASE_URL / REDIS_URL are someone else's and are left alone).

    Runs after every fixture's teardown, so the test database has been dropped by then.
    """
    from django.db import connections

    from kwala_site.dev import embedded

    if os.environ.get("KWALA_TEST_SERVERS_OWNER") != str(os.getpid()):
        return
    connections.close_all()
    if not os.environ.get("DATABASE_URL"):
        embedded.stop_postgres(settings.VAR_DIR / "pg")
    if not os.environ.get("REDIS_URL"):
        embedded.stop_redis(settings.VAR_DIR / "redis")
