"""Run history at scale: every list page and API list over millions of runs, pruning a day of
them, and what that pruning costs the chain path.

Run from the repo root: ``python bench/history_scale.py [--runs 1000000] [--days 30]``.

1. **Fill.** PostgreSQL is filled in the database itself (INSERT ... SELECT over
   generate_series, two connections, indexes built afterwards): `--runs` runs over `--days`
   days, as the real rows look, each with its chain event, its two step rows (a condition and
   an HTTP request, with their input, output and logs), five run events, and an alert for
   each failed run. A team holds 90% of the runs, 80% in one flow (the issue's "one flow
   inflated"); a neighbour team holds the rest. 5% fail, 1% are cancelled or reorged, the
   newest hundred are still running. The rollups are then counted from the runs
   (`executor.rollups.rebuild`, timed: it is what the migration does on an existing install),
   and the tables vacuumed and analyzed. The fill is kept under var/bench-history and reused
   by the next run with the same --runs and --days (--refill starts over).
2. **Pages.** Each page and API list is requested through Django's test client, as the
   team's owner (pages) or with an API token (API), once to warm up and then --samples
   times: the median and the slowest are printed. `--explain` prints EXPLAIN ANALYZE of
   each page's slowest statement.
3. **Pruning.** The team's retention is set so that the oldest day is past it, and
   `executor.retention.prune` deletes it in its batches: runs per second and the slowest
   batch.
4. **The chain path while pruning.** anvil, `manage.py listen_chains` and the Dramatiq
   workers start on the same (filled) database, with a flow *chain.event -> stop* in the big
   team; as in bench/event_latency.py each sample sends one transaction and polls for the
   run row and its start. In each of --rounds rounds the next day comes due and
   `manage.py sweep` starts, as production runs it (a KWALA_RETENTION_SLICE_MS slice of
   pruning between two sweeps): samples are taken until the day is gone, between phases
   without pruning; the slowdown is the median p50 while pruning against the median p50
   without. --flat-out prunes batch after batch from a thread instead, as fast as the
   database goes.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import harness
from harness import percentile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HISTORY_TABLES = ("executor_runevent", "executor_steprun", "executor_notification", "executor_transaction",
                  "executor_run", "executor_event")
BATCH = 100_000  # runs per fill statement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30, help="The history spans this many days, up to now")
    parser.add_argument("--samples", type=int, default=9, help="Requests per page (after one to warm up)")
    parser.add_argument("--events", type=int, default=150, help="Chain path samples per phase without pruning")
    parser.add_argument("--rounds", type=int, default=3, help="Days pruned while the chain path is measured")
    parser.add_argument("--flat-out", action="store_true",
                        help="Prune batch after batch from a thread instead of through the sweeper's slices")
    parser.add_argument("--refill", action="store_true", help="Fill again even if the last fill matches")
    parser.add_argument("--explain", action="store_true", help="Print EXPLAIN ANALYZE of each page's slowest query")
    parser.add_argument("--skip-chain", action="store_true", help="Stop after pruning (no anvil, no workers)")
    args = parser.parse_args()

    harness.VAR_DIR = ROOT / "var" / "bench-history"  # its own servers: a 10M-run database is kept between runs
    var_dir = harness.product_env()
    children: list[subprocess.Popen] = []
    anvil = None
    try:
        import django

        django.setup()
        result = {"runs_requested": args.runs, "days": args.days}
        result.update(prepare(args, var_dir))
        result["pages"] = time_pages(args)
        result["prune"] = prune_one_day(args)
        if not args.skip_chain:
            from kwala_site.dev.devchain import AnvilProcess

            anvil = AnvilProcess(chain_id=31337, log_path=var_dir / "anvil.log")
            anvil.start()
            anvil.wait_ready(timeout=20)
            result["chain_path"] = chain_path(args, anvil, children, var_dir)
    finally:
        harness.stop(children)
        if anvil is not None:
            anvil.stop()
    report(result)


# -- 1. the fill --------------------------------------------------------------------------------


def prepare(args, var_dir: Path) -> dict:
    """Migrate, fill (unless the last fill matches), vacuum and analyze; the figures of each step."""
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    marker = var_dir / "history-fill.json"
    wanted = {"runs": args.runs, "days": args.days}
    out: dict = {}
    if args.refill or not marker.exists() or json.loads(marker.read_text()).get("fill") != wanted:
        marker.unlink(missing_ok=True)
        started = time.perf_counter()
        fill(args.runs, args.days)
        out["fill_seconds"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        rebuilt = rebuild_rollups()
        out["rollup_rebuild_seconds"] = None if rebuilt is None else round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        with connection.cursor() as cursor:
            for table in HISTORY_TABLES:
                cursor.execute(f"VACUUM (ANALYZE) {table}")
        out["vacuum_analyze_seconds"] = round(time.perf_counter() - started, 1)
        marker.write_text(json.dumps({"fill": wanted, **out}))
        print(f"filled {args.runs} runs in {out['fill_seconds']} s, rollups {out['rollup_rebuild_seconds']} s, "
              f"vacuum+analyze {out['vacuum_analyze_seconds']} s", flush=True)
    else:
        out.update({k: v for k, v in json.loads(marker.read_text()).items() if k != "fill"})
        with connection.cursor() as cursor:
            # What earlier runs pruned, vacuumed away as autovacuum would have by now.
            for table in HISTORY_TABLES:
                cursor.execute(f"VACUUM (ANALYZE) {table}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM executor_run")
        out["runs"] = cursor.fetchone()[0]
        cursor.execute("SELECT pg_database_size(current_database())")
        out["database_gb"] = round(cursor.fetchone()[0] / 2**30, 2)
        sizes = {}
        for table in HISTORY_TABLES:
            cursor.execute("SELECT reltuples::bigint, pg_total_relation_size(%s) FROM pg_class WHERE relname = %s",
                           [table, table])
            rows, size = cursor.fetchone()
            sizes[table] = {"rows": rows, "gb": round(size / 2**30, 2)}
        out["tables"] = sizes
    print(f"{out['runs']} runs, database {out['database_gb']} GB", flush=True)
    return out


def rebuild_rollups() -> bool | None:
    try:
        from executor import rollups
    except ImportError:
        return None  # (before the rollups existed)
    rollups.rebuild()
    return True


def bench_objects() -> dict:
    """The bench's user, teams, flows and token (made once, found again on later runs)."""
    from django.contrib.auth import get_user_model

    from flows import actions
    from flows.models import Flow, FlowVersion, Membership, Team

    user, _ = get_user_model().objects.get_or_create(username="history-bench")
    user.set_password("history-bench-password")
    user.save(update_fields=["password"])
    neighbour_user, _ = get_user_model().objects.get_or_create(username="history-neighbour")
    objects = {"user": user}
    for key, name, member, count in (("team", "History bench", user, 20), ("neighbour", "Neighbour", neighbour_user, 5)):
        team, _ = Team.objects.get_or_create(name=name)
        Membership.objects.get_or_create(team=team, user=member, defaults={"role": Membership.Role.OWNER})
        flows = list(Flow.objects.filter(team=team, name__regex=r"^history [0-9]{2}$").order_by("name"))
        for n in range(len(flows), count):
            graph = {
                "nodes": [
                    {"id": "start", "type": "manual", "name": "Start", "position": {"x": 0, "y": 0}, "config": {}},
                    {"id": "condition_1", "type": "condition", "name": "Large", "position": {"x": 250, "y": 0},
                     "config": {"expression": "trigger.args.value > 1000"}},
                    {"id": "http_request_1", "type": "http.request", "name": "Notify",
                     "position": {"x": 500, "y": 0},
                     "config": {"method": "POST", "url": "https://hooks.example.com/kwala",
                                "body": {"tx": "{{ trigger.tx_hash }}", "value": "{{ trigger.args.value }}"}}},
                ],
                "edges": [{"source": "start", "source_port": "out", "target": "condition_1"},
                          {"source": "condition_1", "source_port": "true", "target": "http_request_1"}],
            }
            flow = actions.do_create_flow(team, member, f"history {n:02d}", graph=graph)
            actions.do_publish_version(flow, member)
            flows.append(flow)
        objects[key] = team
        objects[f"{key}_flows"] = [
            (flow.pk, FlowVersion.objects.get(flow=flow, status=FlowVersion.Status.PUBLISHED).pk) for flow in flows
        ]
    # The neighbour keeps a year: only the big team's days are pruned.
    Team.objects.filter(pk=objects["neighbour"].pk).update(run_retention_days=365, failed_run_retention_days=365)
    return objects


def _fill_sql() -> list[str]:
    """The statements that fill runs %(lo)s..%(hi)s (ids, so the runs' ids follow their created_at).

    Run i: created at %(start)s + i * %(step)s seconds; 1 in 10 belongs to the neighbour
    team, 8 in 10 to the big team's first flow, 1 in 10 to its other flows.
    """
    flows = (
        "CASE WHEN mod(i, 10) = 0 THEN (%(neighbour)s::bigint[])[1 + mod(i / 10, 5)] "
        "WHEN mod(i, 10) = 9 THEN (%(flows)s::bigint[])[2 + mod(i / 10, 19)] ELSE (%(flows)s::bigint[])[1] END"
    )
    base = (
        "SELECT i, ts, fl.team_id, fl.flow_id, fl.version_id, "
        "CASE WHEN i > %(total)s - 100 THEN 'RUNNING' WHEN h < 50 THEN 'FAILED' WHEN h < 55 THEN 'CANCELLED' "
        "WHEN h < 60 THEN 'REORGED' ELSE 'SUCCEEDED' END AS status, "
        "'0x' || md5((1000000 + i / 3)::text) || md5((i / 3)::text) AS block_hash, 1000000 + i / 3 AS block, "
        "'0x' || md5(i::text || 'tx') || md5(i::text) AS tx_hash "
        "FROM (SELECT i, %(start)s::timestamptz + make_interval(secs => i * %(step)s) AS ts, "
        "mod(i * 2654435761, 1000) AS h, " + flows + " AS flow_id FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i) g "
        "JOIN (SELECT f.id AS flow_id, f.team_id, v.id AS version_id FROM flows_flow f "
        "JOIN flows_flowversion v ON v.flow_id = f.id AND v.status = 'PUBLISHED') fl USING (flow_id)"
    )
    return [
        # The chain event each run fired on.
        "INSERT INTO executor_event (id, chain_id, block_number, block_hash, log_index, tx_hash, address, topics, "
        "data, created_at) SELECT i, %(chain)s, block, block_hash, mod(i, 3), tx_hash, "
        "'0x5fbdb2315678afecb367f032d93f642f64180aa3', jsonb_build_array("
        "'0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef', "
        "'0x000000000000000000000000f39fd6e51aad88f6f4ce6ab8827279cfffb92266', "
        "'0x00000000000000000000000070997970c51812dc3a010c7d01b50e0d17dc79c8'), "
        "'0x' || lpad(to_hex(i), 64, '0'), ts FROM (" + base + ") b",
        "INSERT INTO executor_run (id, code, team_id, flow_id, version_id, trigger_key, trigger, event_id, chain_id, "
        "block_number, block_hash, dry_run, status, error, event_seq, created_at, dispatched_at, started_at, "
        "finished_at) SELECT i, md5(i::text || 'run')::uuid, team_id, flow_id, version_id, "
        "'log:31337:' || block_hash || ':' || (mod(i, 3)), jsonb_build_object("
        "'type', 'chain.event', 'event', 'Transfer', 'args', jsonb_build_object("
        "'from', '0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266', 'to', '0x70997970C51812dc3A010C7d01b50e0d17dc79C8', "
        "'value', mod(i * 7919, 100000)), 'args_list', jsonb_build_array("
        "'0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266', '0x70997970C51812dc3A010C7d01b50e0d17dc79C8', "
        "mod(i * 7919, 100000)), 'contract', '0x5FbDB2315678afecb367f032d93F642f64180aa3', 'chain_id', 31337, "
        "'tx_hash', tx_hash, 'block_number', block, 'block_hash', block_hash, 'log_index', mod(i, 3), "
        "'timestamp', extract(epoch FROM ts)::bigint), i, %(chain)s, block, block_hash, false, status, "
        "CASE status WHEN 'FAILED' THEN 'step “Notify” failed: HTTP 502 from https://hooks.example.com/kwala' "
        "WHEN 'REORGED' THEN 'block ' || block || ' was reorged out' ELSE '' END, "
        "CASE WHEN status = 'RUNNING' THEN 3 ELSE 5 END, ts, NULL, ts + interval '3 ms', "
        "CASE WHEN status = 'RUNNING' THEN NULL ELSE ts + interval '180 ms' END FROM (" + base + ") b",
        # Its two steps: the condition, then the HTTP request (its input, output and logs as stored).
        "INSERT INTO executor_steprun (run_id, step_id, status, attempt, input, output, error, logs, port, handled, "
        "state, lease_expires_at, next_attempt_at, queued_at, started_at, finished_at) "
        "SELECT id, 'condition_1', 'SUCCEEDED', 1, NULL::jsonb, '{\"result\": true}'::jsonb, '', '[]'::jsonb, 'true', "
        "false, '{}'::jsonb, "
        "started_at + interval '30 s', NULL::timestamptz, started_at, started_at, started_at + interval '1 ms' "
        "FROM executor_run WHERE id BETWEEN %(lo)s AND %(hi)s "
        "UNION ALL SELECT id, 'http_request_1', CASE status WHEN 'SUCCEEDED' THEN 'SUCCEEDED' "
        "WHEN 'FAILED' THEN 'FAILED' WHEN 'RUNNING' THEN 'RUNNING' ELSE 'CANCELLED' END, "
        "CASE WHEN status IN ('SUCCEEDED', 'FAILED', 'RUNNING') THEN 1 ELSE 0 END, "
        "jsonb_build_object('method', 'POST', 'url', 'https://hooks.example.com/kwala', 'headers', "
        "jsonb_build_object('content-type', 'application/json'), 'body', jsonb_build_object("
        "'tx', trigger->>'tx_hash', 'value', trigger->'args'->'value')), "
        "CASE status WHEN 'SUCCEEDED' THEN jsonb_build_object('status', 200, 'headers', "
        "jsonb_build_object('content-type', 'application/json'), 'body', jsonb_build_object('ok', true)) END, "
        "CASE status WHEN 'FAILED' THEN 'HTTP 502 from https://hooks.example.com/kwala' ELSE '' END, "
        "CASE WHEN status IN ('SUCCEEDED', 'FAILED') THEN jsonb_build_array(jsonb_build_object('at', "
        "started_at + interval '5 ms', 'message', 'POST https://hooks.example.com/kwala -> ' || "
        "CASE status WHEN 'FAILED' THEN '502' ELSE '200' END || ' in 160 ms')) ELSE '[]' END, "
        "CASE status WHEN 'SUCCEEDED' THEN 'out' ELSE '' END, false, '{}'::jsonb, started_at + interval '30 s', NULL, "
        "started_at + interval '2 ms', started_at + interval '4 ms', finished_at "
        "FROM executor_run WHERE id BETWEEN %(lo)s AND %(hi)s",
        # The run's event log, as the engine writes it.
        "INSERT INTO executor_runevent (run_id, seq, kind, data, created_at) "
        "SELECT r.id, e.seq, e.kind, CASE e.seq "
        "WHEN 1 THEN jsonb_build_object('status', 'RUNNING') "
        "WHEN 2 THEN jsonb_build_object('step', 'condition_1', 'status', 'SUCCEEDED', 'attempt', 1, 'port', 'true') "
        "WHEN 3 THEN jsonb_build_object('step', 'http_request_1', 'status', 'QUEUED', 'attempt', 0) "
        "WHEN 4 THEN jsonb_build_object('step', 'http_request_1', 'status', CASE r.status WHEN 'FAILED' "
        "THEN 'FAILED' ELSE 'SUCCEEDED' END, 'attempt', 1, 'port', 'out') "
        "ELSE jsonb_build_object('status', r.status, 'error', r.error) END, r.started_at + e.seq * interval '1 ms' "
        "FROM executor_run r CROSS JOIN (VALUES (1, 'run.status'), (2, 'step.status'), (3, 'step.status'), "
        "(4, 'step.status'), (5, 'run.status')) AS e(seq, kind) "
        "WHERE r.id BETWEEN %(lo)s AND %(hi)s AND e.seq <= r.event_seq",
        # Failed runs' alerts, read but for the last day's.
        "INSERT INTO executor_notification (team_id, run_id, kind, message, created_at, read_at) "
        "SELECT r.team_id, r.id, 'RUN_FAILED', 'Run of “' || f.name || '” failed: ' || r.error, r.finished_at, "
        "CASE WHEN r.finished_at < now() - interval '1 day' THEN r.finished_at + interval '1 hour' END "
        "FROM executor_run r JOIN flows_flow f ON f.id = r.flow_id "
        "WHERE r.id BETWEEN %(lo)s AND %(hi)s AND r.status = 'FAILED'",
    ]


def fill(total: int, days: int) -> None:
    """Empty the history tables and fill them with `total` runs, two connections at a time."""
    from concurrent.futures import ThreadPoolExecutor

    import psycopg
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from executor.models import Chain

    # An empty database, as the migrations make it (an earlier fill may have stopped with its indexes dropped).
    with connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE")
        cursor.execute("CREATE SCHEMA public")
    with open(os.devnull, "w") as quiet:
        call_command("migrate", verbosity=0, stdout=quiet)
    os.environ["KWALA_CHAINS"] = json.dumps([{"slug": "bench", "name": "Bench (anvil)", "chain_id": 31337,
                                              "confirmations": 0, "rpc_urls": ["http://127.0.0.1:9"]}])
    settings.KWALA_CHAINS = json.loads(os.environ["KWALA_CHAINS"])
    with open(os.devnull, "w") as quiet:
        call_command("sync_chains", verbosity=0, stdout=quiet)
    chain = Chain.objects.get(chain_id=31337)
    objects = bench_objects()
    with connection.cursor() as cursor:
        # Built once the rows are in: faster than keeping them up to date row by row.
        cursor.execute(
            "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "WHERE c.conrelid::regclass::text = ANY(%s) AND c.contype = 'u'", [list(HISTORY_TABLES)])
        constraints = cursor.fetchall()
        for table, name, _ in constraints:
            cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        cursor.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = ANY(%s) "
            "AND i.indexname NOT LIKE '%%_pkey'", [list(HISTORY_TABLES)])
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
    connection.close()

    now = timezone.now()
    step = days * 86400 / total
    params = {"chain": chain.pk, "total": total, "start": now - timedelta(days=days), "step": step,
              "flows": [pk for pk, _ in objects["team_flows"]], "neighbour": [pk for pk, _ in objects["neighbour_flows"]]}
    statements = _fill_sql()
    conninfo = connection.get_connection_params()
    done = [0]
    lock = threading.Lock()
    started = time.perf_counter()

    def fill_batch(lo: int) -> None:
        hi = min(lo + BATCH - 1, total)
        with psycopg.connect(**conninfo) as conn:
            # No foreign key checks and no triggers (the rollups are counted afterwards, as an
            # existing install's are by the migration).
            conn.execute("SET session_replication_role = replica")
            conn.execute("SET synchronous_commit = off")
            for sql in statements:
                conn.execute(sql, {**params, "lo": lo, "hi": hi})
        with lock:
            done[0] += hi - lo + 1
            rate = done[0] / (time.perf_counter() - started)
            print(f"  {done[0]} / {total} runs ({rate:.0f} runs/s)", flush=True)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(fill_batch, range(1, total + 1, BATCH)))

    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '1GB'")
        cursor.execute("SET max_parallel_maintenance_workers = 1")
        for _, definition in indexes:
            cursor.execute(definition)
        for table, name, definition in constraints:
            cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        for table in ("executor_run", "executor_event"):
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    print(f"  indexes built, {time.perf_counter() - started:.0f} s in all", flush=True)


# -- 2. the pages --------------------------------------------------------------------------------


def time_pages(args) -> dict:
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from executor.models import Run
    from flows.models import Flow, Membership
    from flows.teams import do_create_token

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    # No collectstatic here: static URLs as in development (the pages' queries are what is measured).
    settings.STORAGES = {**settings.STORAGES,
                         "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    objects = bench_objects()
    team = objects["team"]
    page = Client()
    page.force_login(objects["user"])
    membership = Membership.objects.get(user=objects["user"], team=team)
    api = Client(HTTP_AUTHORIZATION=f"Bearer {do_create_token(membership, 'history bench')[1]}")
    big_flow = Flow.objects.get(pk=objects["team_flows"][0][0]).code
    small_flow = Flow.objects.get(pk=objects["team_flows"][5][0]).code
    newest = Run.objects.filter(team=team).order_by("-created_at", "-pk").values_list("code", flat=True).first()
    # A run from the middle of the history, to page on from (the way to go deep: no OFFSET).
    deep = Run.objects.filter(team=team, created_at__lt=timezone.now() - timedelta(days=args.days / 2)).order_by(
        "-created_at", "-pk").values_list("code", flat=True).first()
    minute_ago = quote((timezone.now() - timedelta(minutes=1)).isoformat())
    second_page = older_page_url(page)
    pages = [
        ("flows page /", page, "/"),
        ("/runs/", page, "/runs/"),
        ("/runs/ next page", page, second_page),
        ("/runs/?status=FAILED", page, "/runs/?status=FAILED"),
        ("/runs/?status=REORGED", page, "/runs/?status=REORGED"),
        ("/runs/?flow=big", page, f"/runs/?flow={big_flow}"),
        ("/runs/?flow=small", page, f"/runs/?flow={small_flow}"),
        ("/runs/?period=24h", page, "/runs/?period=24h"),
        ("/runs/<code>/", page, f"/runs/{newest}/"),
        ("/alerts/", page, "/alerts/"),
        ("GET /api/v1/runs?limit=50", api, "/api/v1/runs?limit=50"),
        ("GET /api/v1/runs?status=FAILED", api, "/api/v1/runs?limit=50&status=FAILED"),
        ("GET /api/v1/runs?flow=small", api, f"/api/v1/runs?limit=50&flow={small_flow}"),
        ("GET /api/v1/runs?offset=5000", api, "/api/v1/runs?limit=50&offset=5000"),
        ("GET /api/v1/runs?before=<code>", api, f"/api/v1/runs?limit=50&before={deep}"),
        ("GET /api/v1/runs?finished_after=-1min", api, f"/api/v1/runs?limit=50&finished_after={minute_ago}"),
        ("GET /api/v1/flows", api, "/api/v1/flows"),
    ]
    out = {}
    for name, client, url in pages:
        if url is None:
            continue
        response = client.get(url, secure=True)
        if response.status_code != 200:
            raise SystemExit(f"{url} answered {response.status_code}: {response.content[:300]!r}")
        with CaptureQueriesContext(connection) as queries:
            client.get(url, secure=True)
        captured = queries.captured_queries  # now: the next request empties the query log
        times = []
        for _ in range(args.samples):
            started = time.perf_counter()
            client.get(url, secure=True)
            times.append((time.perf_counter() - started) * 1000)
        slowest = max(captured, key=lambda q: float(q["time"]), default=None)
        out[name] = {"url": url, "median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1),
                     "queries": len(captured),
                     "slowest_query_ms": round(float(slowest["time"]) * 1000, 1) if slowest else None}
        print(f"{name:34} median {out[name]['median_ms']:7.1f} ms  max {out[name]['max_ms']:7.1f} ms  "
              f"{out[name]['queries']} queries, slowest {out[name]['slowest_query_ms']} ms", flush=True)
        if args.explain and slowest is not None:
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + slowest["sql"])
                print("    " + "\n    ".join(row[0] for row in cursor.fetchall()), flush=True)
    return out


def older_page_url(client) -> str | None:
    """The /runs/ page's link to older runs (a page number before keyset paging, a cursor after)."""
    import re

    html = client.get("/runs/", secure=True).content.decode()
    found = re.search(r'href="(\?[^"]*)"[^>]*>Older', html)
    return "/runs/" + found.group(1).replace("&amp;", "&") if found else None


# -- 3. pruning a day ---------------------------------------------------------------------------


def make_a_day_due() -> tuple:
    """Set the bench team's retention (failed runs too) so that about its oldest day of runs
    is past it (between half a day and a day and a half: retention is in whole days);
    return the cutoff and how many runs are due."""
    from django.utils import timezone

    from executor.models import Run
    from flows.models import Team

    team = Team.objects.get(name="History bench")
    oldest = Run.objects.filter(team=team).order_by("created_at").values_list("created_at", flat=True).first()
    now = timezone.now()
    keep = max(round((now - oldest).total_seconds() / 86400) - 1, 1)
    Team.objects.filter(pk=team.pk).update(run_retention_days=keep, failed_run_retention_days=keep)
    cutoff = now - timedelta(days=keep)
    return cutoff, Run.objects.filter(team=team, created_at__lt=cutoff).count()


def prune_one_day(args) -> dict:
    from executor import retention

    _, due = make_a_day_due()
    deleted, batches, slowest = 0, 0, 0.0
    started = time.perf_counter()
    while True:
        at = time.perf_counter()
        gone = retention.prune(max_batches=1)
        if not gone:
            break  # (that call found nothing due, and tidied the chain events and rollups)
        slowest = max(slowest, time.perf_counter() - at)
        deleted += gone
        batches += 1
    seconds = time.perf_counter() - started
    out = {"due": due, "deleted": deleted, "seconds": round(seconds, 2), "batches": batches,
           "runs_per_second": round(deleted / seconds) if seconds else None,
           "slowest_batch_ms": round(slowest * 1000, 1)}
    print(f"pruned {deleted} of {due} runs due (one day) in {out['seconds']} s: {out['runs_per_second']} runs/s, "
          f"{batches} batches, slowest {out['slowest_batch_ms']} ms", flush=True)
    return out


# -- 4. the chain path, with and without pruning -------------------------------------------------


def chain_path(args, anvil, children, var_dir) -> dict:
    import psycopg
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone
    from web3 import Web3

    from executor.models import Chain, ChainCursor, RpcEndpoint, StepRun
    from flows import actions
    from flows.models import FlowVersion
    from kwala_site.dev.devchain import DEV_ACCOUNTS, deploy, load_artifact

    chains = [{"slug": "bench", "name": "Bench (anvil)", "chain_id": 31337, "confirmations": 0,
               "rpc_urls": [anvil.http_url], "ws_urls": [anvil.ws_url]}]
    os.environ["KWALA_CHAINS"] = json.dumps(chains)
    settings.KWALA_CHAINS = chains
    RpcEndpoint.objects.all().delete()
    ChainCursor.objects.all().delete()
    with open(os.devnull, "w") as quiet:
        call_command("sync_chains", verbosity=0, stdout=quiet)
    Chain.objects.exclude(chain_id=31337).update(enabled=False)

    w3 = Web3(Web3.HTTPProvider(anvil.http_url))
    zoo = w3.eth.contract(address=deploy(w3, "EventZoo"), abi=load_artifact("EventZoo")["abi"])
    objects = bench_objects()
    FlowVersion.objects.filter(flow__name="history latency", status=FlowVersion.Status.PUBLISHED).update(
        status=FlowVersion.Status.ARCHIVED)
    graph = harness.big_then_stop(zoo.address)
    version = actions.do_publish_version(actions.do_create_flow(objects["team"], objects["user"], "history latency",
                                                          graph=graph), objects["user"])
    harness.spawn_workers_and_listener(children)
    deadline = time.monotonic() + 60
    while not ChainCursor.objects.filter(ws_state="connected").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the listener did not subscribe (see {var_dir}/logs/listener.log)")
        time.sleep(0.05)
    connection.close()

    conn = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    sender = DEV_ACCOUNTS[0].address
    counter = [0]

    def sample() -> tuple[float, float]:
        i = counter[0]
        counter[0] += 1
        measured = harness.event_to_run(conn, w3, zoo, sender, version.pk, i)
        time.sleep(0.02)
        return measured

    def phase(name: str, until=None, minimum: int | None = None) -> dict:
        """Samples until `until()` is false (and at least `minimum`), or --events of them."""
        rows, starts = [], []
        while len(rows) < (minimum if minimum is not None else args.events) or (until is not None and until()):
            row_ms, started_ms = sample()
            rows.append(row_ms)
            starts.append(started_ms)
        out = {"events": len(rows), "run_p50_ms": round(statistics.median(rows), 2),
               "run_p99_ms": round(percentile(rows, 99), 2), "started_p50_ms": round(statistics.median(starts), 2),
               "started_p99_ms": round(percentile(starts, 99), 2)}
        print(f"chain path, {name:15} {out['events']} events: run row p50 {out['run_p50_ms']} ms "
              f"p99 {out['run_p99_ms']} ms; started p50 {out['started_p50_ms']} ms", flush=True)
        return out

    for _ in range(10):  # warm the workers up
        sample()
    # The fill's unfinished runs would be "lost work" to the sweeper: keep their leases in the future.
    StepRun.objects.filter(status=StepRun.Status.RUNNING).update(lease_expires_at=timezone.now() + timedelta(days=3650))
    mode = "flat out" if args.flat_out else "sweeper"
    baselines, prunings = [phase("baseline")], []
    for round_ in range(args.rounds):
        cutoff, due_runs = make_a_day_due()
        started = time.perf_counter()
        pruning = prune_flat_out() if args.flat_out else spawn_sweeper(children, round_)
        checked = [0.0, True]

        def due(cutoff=cutoff, checked=checked) -> bool:
            """Whether runs of the day are still there (looked at once a second)."""
            if time.perf_counter() - checked[0] > 1:
                checked[0] = time.perf_counter()
                checked[1] = conn.execute("SELECT EXISTS (SELECT 1 FROM executor_run WHERE team_id = %s AND "
                                          "created_at < %s)", [objects["team"].pk, cutoff]).fetchone()[0]
            return checked[1]

        during = phase(f"pruning ({mode})", until=due, minimum=5)
        seconds = time.perf_counter() - started
        pruning.stop()
        during["pruned"] = {"runs": due_runs, "seconds": round(seconds, 1)}
        print(f"  {due_runs} runs were pruned in {seconds:.1f} s", flush=True)
        prunings.append(during)
        baselines.append(phase("baseline"))
    conn.close()
    baseline = statistics.median(p["run_p50_ms"] for p in baselines)
    while_pruning = statistics.median(p["run_p50_ms"] for p in prunings)
    out = {"mode": mode, "baselines": baselines, "while_pruning": prunings, "baseline_p50_ms": baseline,
           "while_pruning_p50_ms": while_pruning,
           "slowdown_p50_pct": round(100 * (while_pruning / baseline - 1), 1)}
    print(f"chain path p50: {baseline} ms without pruning, {while_pruning} ms while a day is pruned ({mode}; "
          f"medians of {len(baselines)} and {len(prunings)} phases): slowdown {out['slowdown_p50_pct']}%", flush=True)
    return out


class spawn_sweeper:
    """`manage.py sweep` as production runs it: a slice of pruning between two sweeps."""

    def __init__(self, children, round_: int) -> None:
        self.child = harness.spawn(children, f"sweeper-{round_}", [sys.executable, "manage.py", "sweep"])

    def stop(self) -> None:
        self.child.terminate()
        self.child.wait(30)


class prune_flat_out:
    """Batch after batch from a thread, as fast as the database goes (--flat-out)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        from django.db import connection

        from executor import retention

        try:
            while not self.done.is_set() and retention.prune(max_batches=1):
                pass
        finally:
            connection.close()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def report(result: dict) -> None:
    pages = result.get("pages", {})
    if pages:
        worst = max(pages.items(), key=lambda item: item[1]["median_ms"])
        result["slowest_page"] = {"name": worst[0], "median_ms": worst[1]["median_ms"]}
        print(f"{result['runs']} runs: slowest page {worst[0]} at {worst[1]['median_ms']} ms (median)")
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
