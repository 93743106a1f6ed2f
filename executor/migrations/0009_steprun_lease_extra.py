"""Each step row keeps what its node type adds to the base lease, so a worker can claim a step
in the same statement that reads its run (executor.runs.store.claim_step).

Adding the column is a change to the catalog only (its default is a constant), and the
default stays in the database, so rows written by code that predates it still insert. The
unfinished rows of runs in flight get their value from their version's DAG; finished rows
are never claimed again and keep 0.
"""

from django.db import migrations, models

UNFINISHED = ("PENDING", "QUEUED", "RUNNING")


def fill_unfinished(apps, schema_editor):
    from flows.nodes import NODE_TYPES

    StepRun = apps.get_model("executor", "StepRun")
    FlowVersion = apps.get_model("flows", "FlowVersion")
    version_ids = set(StepRun.objects.filter(status__in=UNFINISHED).values_list("run__version_id", flat=True))
    for version in FlowVersion.objects.filter(pk__in=version_ids).only("dag"):
        for step in (version.dag or {}).get("steps", []):
            node_type = NODE_TYPES.get(step.get("type"))
            extra = node_type.lease_seconds_extra(step.get("config") or {}) if node_type is not None else 0
            if extra:
                StepRun.objects.filter(run__version_id=version.pk, step_id=step["id"], status__in=UNFINISHED).update(
                    lease_extra_seconds=extra)


class Migration(migrations.Migration):

    dependencies = [
        ("executor", "0008_history_indexes"),
        ("flows", "0007_team_run_retention"),
    ]

    operations = [
        migrations.AddField(
            model_name="steprun",
            name="lease_extra_seconds",
            field=models.FloatField(db_default=0, default=0),
        ),
        migrations.RunPython(fill_unfinished, migrations.RunPython.noop),
    ]
