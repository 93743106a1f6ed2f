"""Each step row keeps what its node type adds to the base lease, so a worker can claim a step
in the same statement that reads its run (executor.runs.store.claim_step).

Adding the column changes the catalog only (its default is a constant, kept in the database,
so rows written by code that predates it still insert). Rows that keep 0 where their node type
needs more (those written before, a failed run's steps reset by a retry) get the rest when they
are claimed (executor.runs.engine._claim), so nothing is filled here: no scan of the step table
under this migration's lock.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("executor", "0008_history_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="steprun",
            name="lease_extra_seconds",
            field=models.FloatField(db_default=0, default=0),
        ),
    ]
