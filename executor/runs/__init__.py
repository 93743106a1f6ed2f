"""Runs: how a run starts, advances and is written; the one way in for every producer.

- `start`   — claims and starts: every trigger, webhook, schedule, replay and
              manual run becomes a run here, exactly once;
- `engine`  — advancing a run's DAG and running its steps (for the workers);
- `store`   — every statement on the run, step and run-event rows;
- `queue`   — the seam to the workers' queue (executor.tasks plugs Dramatiq in);
- `manual`  — what people do to runs: start by hand, retry, re-run, replay.

Producers (executor.listener, executor.webhooks, executor.scheduler,
executor.replay) import from here; nothing here imports them.
"""
