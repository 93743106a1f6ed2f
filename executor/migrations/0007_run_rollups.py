"""Run rollups: finished runs counted per flow and hour, kept exact by a trigger on executor_run.

The trigger adds a run to its hour's counts when the run gets a final status, in the
statement that sets it, and takes it out when it leaves one (a retry of a failed run, the
reorg of a finished one) or moves (its created_at or flow changes). Every way a run
finishes goes through it: the claim that inserts a run already finished, the engine's run
update, the listener's reorg, a retry, the admin, raw SQL. A second finish with the same
status changes nothing (the WHEN clause sees no change).

The existing runs are counted once, here, while the trigger's lock keeps run writes waiting
(about 10 s per 10 million runs on two cores: bench/history_scale.py), so nothing is counted
twice or missed.
"""

import django.db.models.deletion
from django.db import migrations, models

FINAL = "('SUCCEEDED', 'FAILED', 'CANCELLED', 'REORGED')"

# One upsert per side of the change; `shard` spreads a busy flow's hour over 8 rows (RunRollup.SHARDS).
ROLLUP_FUNCTION = f"""
CREATE FUNCTION executor_run_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.status IN {FINAL} THEN
        INSERT INTO executor_runrollup AS r (team_id, flow_id, hour, shard, succeeded, failed, cancelled, reorged)
        VALUES (OLD.team_id, OLD.flow_id, date_trunc('hour', OLD.created_at, 'UTC'), OLD.id % 8,
                -(OLD.status = 'SUCCEEDED')::int, -(OLD.status = 'FAILED')::int,
                -(OLD.status = 'CANCELLED')::int, -(OLD.status = 'REORGED')::int)
        ON CONFLICT (flow_id, hour, shard) DO UPDATE SET
            succeeded = r.succeeded + EXCLUDED.succeeded, failed = r.failed + EXCLUDED.failed,
            cancelled = r.cancelled + EXCLUDED.cancelled, reorged = r.reorged + EXCLUDED.reorged;
    END IF;
    IF NEW.status IN {FINAL} THEN
        INSERT INTO executor_runrollup AS r (team_id, flow_id, hour, shard, succeeded, failed, cancelled, reorged)
        VALUES (NEW.team_id, NEW.flow_id, date_trunc('hour', NEW.created_at, 'UTC'), NEW.id % 8,
                (NEW.status = 'SUCCEEDED')::int, (NEW.status = 'FAILED')::int,
                (NEW.status = 'CANCELLED')::int, (NEW.status = 'REORGED')::int)
        ON CONFLICT (flow_id, hour, shard) DO UPDATE SET
            succeeded = r.succeeded + EXCLUDED.succeeded, failed = r.failed + EXCLUDED.failed,
            cancelled = r.cancelled + EXCLUDED.cancelled, reorged = r.reorged + EXCLUDED.reorged;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER executor_run_rollup_insert AFTER INSERT ON executor_run FOR EACH ROW
    WHEN (NEW.status IN {FINAL}) EXECUTE FUNCTION executor_run_rollup();

CREATE TRIGGER executor_run_rollup_update AFTER UPDATE OF status, created_at, flow_id, team_id ON executor_run
    FOR EACH ROW WHEN (
        (OLD.status, OLD.created_at, OLD.flow_id, OLD.team_id) IS DISTINCT FROM
        (NEW.status, NEW.created_at, NEW.flow_id, NEW.team_id)
        AND (OLD.status IN {FINAL} OR NEW.status IN {FINAL})
    ) EXECUTE FUNCTION executor_run_rollup();
"""  # noqa: S608 (FINAL is a constant)

DROP_ROLLUP_FUNCTION = """
DROP TRIGGER executor_run_rollup_update ON executor_run;
DROP TRIGGER executor_run_rollup_insert ON executor_run;
DROP FUNCTION executor_run_rollup();
"""

COUNT_EXISTING_RUNS = f"""
INSERT INTO executor_runrollup (team_id, flow_id, hour, shard, succeeded, failed, cancelled, reorged)
SELECT team_id, flow_id, date_trunc('hour', created_at, 'UTC'), 0,
       count(*) FILTER (WHERE status = 'SUCCEEDED'), count(*) FILTER (WHERE status = 'FAILED'),
       count(*) FILTER (WHERE status = 'CANCELLED'), count(*) FILTER (WHERE status = 'REORGED')
FROM executor_run WHERE status IN {FINAL}
GROUP BY 1, 2, 3;
"""  # noqa: S608 (FINAL is a constant)


class Migration(migrations.Migration):

    dependencies = [
        ('executor', '0006_replay_jobs'),
        ('flows', '0007_team_run_retention'),
    ]

    operations = [
        migrations.CreateModel(
            name='RunRollup',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('hour', models.DateTimeField()),
                ('shard', models.PositiveSmallIntegerField(default=0)),
                ('succeeded', models.IntegerField(default=0)),
                ('failed', models.IntegerField(default=0)),
                ('cancelled', models.IntegerField(default=0)),
                ('reorged', models.IntegerField(default=0)),
                ('flow', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                                           related_name='run_rollups', to='flows.flow')),
                ('team', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                                           related_name='+', to='flows.team')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('flow', 'hour', 'shard'),
                                                        name='runrollup_unique_bucket')],
                'indexes': [
                    models.Index(fields=['team', 'hour'], name='runrollup_team_hour'),
                    models.Index(condition=models.Q(('shard', 0), _negated=True), fields=['hour'],
                                 name='runrollup_shards'),
                ],
            },
        ),
        migrations.RunSQL(ROLLUP_FUNCTION, DROP_ROLLUP_FUNCTION),
        migrations.RunSQL(COUNT_EXISTING_RUNS, migrations.RunSQL.noop),
    ]
