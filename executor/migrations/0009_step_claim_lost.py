"""A function that fails a step write whose guard no longer holds (runs.store._STEP_UPDATE).

Raised inside the write's own statement, the failure stops the query before
the COMMIT sent with it, so a step's result can be written and committed in
one round trip and still never overwrite a row another worker took over.
"""

from django.db import migrations

CLAIM_LOST_FUNCTION = """
CREATE OR REPLACE FUNCTION kwala_step_claim_lost() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'a step row changed while its run was locked' USING ERRCODE = 'KW001';
END
$$;
"""
DROP_CLAIM_LOST_FUNCTION = "DROP FUNCTION IF EXISTS kwala_step_claim_lost();"


class Migration(migrations.Migration):

    dependencies = [
        ('executor', '0008_history_indexes'),
    ]

    operations = [
        migrations.RunSQL(CLAIM_LOST_FUNCTION, DROP_CLAIM_LOST_FUNCTION),
    ]
