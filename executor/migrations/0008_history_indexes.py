"""The indexes the run and alert lists page through at millions of rows, built without
locking the tables (CREATE INDEX CONCURRENTLY: runs keep being written meanwhile).

Each list reads the newest page and the next from where the last stopped, by (created_at,
id) within a team, a team and status, or a flow; an API client polling for runs finished
since it last asked reads (team, finished_at); the nav's unread alert count reads only the
unread. The old (team, -created_at) and (flow, -created_at) indexes are what the new ones
start with, so they go, once the new ones are there.
"""

import django.db.models.deletion
from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):

    atomic = False

    dependencies = [
        ('executor', '0007_run_rollups'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='run',
            index=models.Index(fields=['team', 'created_at', 'id'], name='run_team_created'),
        ),
        AddIndexConcurrently(
            model_name='run',
            index=models.Index(fields=['team', 'status', 'created_at', 'id'], name='run_team_status_created'),
        ),
        AddIndexConcurrently(
            model_name='run',
            index=models.Index(fields=['team', 'finished_at'], name='run_team_finished'),
        ),
        AddIndexConcurrently(
            model_name='run',
            index=models.Index(fields=['flow', 'created_at', 'id'], name='run_flow_created'),
        ),
        AddIndexConcurrently(
            model_name='notification',
            index=models.Index(fields=['team', 'created_at', 'id'], name='notification_team_created'),
        ),
        AddIndexConcurrently(
            model_name='notification',
            index=models.Index(condition=models.Q(('read_at', None)), fields=['team'], name='notification_unread'),
        ),
        RemoveIndexConcurrently(
            model_name='run',
            name='executor_ru_team_id_9b695f_idx',
        ),
        RemoveIndexConcurrently(
            model_name='run',
            name='executor_ru_flow_id_16ecaf_idx',
        ),
        # Its index is the start of notification_team_created.
        migrations.AlterField(
            model_name='notification',
            name='team',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                                    related_name='notifications', to='flows.team'),
        ),
    ]
