"""`manage.py dev`: the whole product on one machine, in one terminal.

Embedded PostgreSQL and Redis (started by settings when DATABASE_URL/REDIS_URL
are unset), two anvil chains with their state under var/chains, the demo
contracts, then the web server, Dramatiq workers, chain listeners, the
scheduler and the sweeper with prefixed logs. A second run reuses everything that is there.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from executor.metrics import clear_samples
from kwala_site.dev.supervisor import Program, Supervisor

DEMO_USERNAME = "admin"
# The worker settings `dev` starts with (bench/end_to_end.py measures with the same):
# a process per core (each has its own GIL), threads to overlap database and HTTP waits.
WORKER_PROCESSES = max(os.cpu_count() or 1, 2)
WORKER_THREADS = 8
# Web server processes: one per core, each with its own GIL and database pool
# (KWALA_DB_POOL_SIZE connections at most; see README, "Connections").
WEB_PROCESSES = max(os.cpu_count() or 1, 2)


class Command(BaseCommand):
    help = "Run the whole product locally: web, workers, listeners, scheduler, sweeper and two anvil chains."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=WORKER_PROCESSES, help="Dramatiq worker processes.")
        parser.add_argument("--no-chains", action="store_true", help="Do not start the local anvil chains.")

    def handle(self, *args, port: int, workers: int, no_chains: bool, **options):
        started = time.monotonic()
        supervisor = Supervisor(self.stdout._out)
        say = lambda line: supervisor.say("dev", line)  # noqa: E731
        say(f"data under {settings.VAR_DIR}")
        clear_samples()  # the metrics of an earlier `make run`'s processes
        call_command("migrate", interactive=False, verbosity=0)
        password = self.ensure_demo_user()

        anvils = []
        if not no_chains and settings.KWALA_CHAINS == settings.DEV_CHAINS:
            anvils = self.start_chains(say)
        call_command("sync_chains", stdout=io.StringIO())

        python = sys.executable
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        supervisor.start(Program("web", [python, "-m", "uvicorn", "kwala_site.asgi:application",
                                          "--host", "127.0.0.1", "--port", str(port), "--lifespan", "off",
                                          "--workers", str(WEB_PROCESSES), "--no-access-log"]))
        supervisor.start(Program("worker", [python, manage, "rundramatiq", "--processes", str(workers),
                                             "--threads", str(WORKER_THREADS)]))
        supervisor.start(Program("listener", [python, manage, "listen_chains"]))
        supervisor.start(Program("sched", [python, manage, "run_scheduler"]))
        # Recovers what a killed worker or a flushed Redis lost (expired leases, stuck QUEUED work).
        supervisor.start(Program("sweeper", [python, manage, "sweep"]))

        say(f"ready in {time.monotonic() - started:.1f} s: http://127.0.0.1:{port}/")
        say(f"log in as {DEMO_USERNAME!r} with password {password!r} (team 'Demo team'); Ctrl-C stops everything")
        try:
            code = supervisor.wait()
        finally:
            for anvil in anvils:
                anvil.stop()
            self.stop_embedded(say)
        if code:
            raise CommandError("a process stopped unexpectedly (see its log above)")

    def ensure_demo_user(self) -> str:
        from flows.models import Membership, Team

        password_file = settings.VAR_DIR / "demo_password"
        if not password_file.exists():
            password_file.write_text(secrets.token_urlsafe(12))
            password_file.chmod(0o600)
        password = password_file.read_text().strip()
        User = get_user_model()
        with transaction.atomic():
            user, created = User.objects.get_or_create(
                username=DEMO_USERNAME, defaults={"is_staff": True, "is_superuser": True, "email": "admin@localhost"}
            )
            if created:
                user.set_password(password)
                user.save(update_fields=["password"])
            if not Membership.objects.filter(user=user).exists():
                team = Team.objects.create(name="Demo team")
                Membership.objects.create(team=team, user=user, role=Membership.Role.OWNER)
        return password

    def start_chains(self, say) -> list:
        from web3 import Web3

        from kwala_site.dev import devchain

        chain_dir = settings.VAR_DIR / "chains"
        chain_dir.mkdir(parents=True, exist_ok=True)
        deployments_path = chain_dir / "deployments.json"
        deployments = json.loads(deployments_path.read_text()) if deployments_path.exists() else {}
        anvils = []
        for spec in settings.KWALA_CHAINS:
            port = int(spec["rpc_urls"][0].rsplit(":", 1)[1])
            anvil = devchain.AnvilProcess(
                chain_id=spec["chain_id"], port=port, state_path=chain_dir / f"{spec['slug']}.json",
                log_path=chain_dir / f"{spec['slug']}.log",
                state_interval=10,  # a crash loses at most ten seconds of chain history
            )
            anvil.start()
            anvils.append(anvil)
            anvil.wait_ready(timeout=20)
            w3 = Web3(Web3.HTTPProvider(anvil.http_url))
            known = deployments.get(str(spec["chain_id"]), {})
            if not known or any(w3.eth.get_code(address) in (b"", b"\x00") for address in known.values()):
                known = devchain.deploy_demo_contracts(w3)
                deployments[str(spec["chain_id"])] = known
                say(f"{spec['slug']}: deployed the demo contracts")
            say(f"{spec['slug']}: chain {spec['chain_id']} at {anvil.http_url}, block {w3.eth.block_number}")
            for name, address in known.items():
                say(f"{spec['slug']}:   {name:<11} {address}")
        deployments_path.write_text(json.dumps(deployments, indent=2))
        return anvils

    def stop_embedded(self, say) -> None:
        from kwala_site.dev import embedded

        if not os.environ.get("DATABASE_URL"):
            embedded.stop_postgres(settings.VAR_DIR / "pg")
        if not os.environ.get("REDIS_URL"):
            embedded.stop_redis(settings.VAR_DIR / "redis")
        say("stopped")
