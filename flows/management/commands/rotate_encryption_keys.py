from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from flows import crypto
from flows.models import Secret, SignerKey


class Command(BaseCommand):
    help = (
        "Re-wrap every secret's and signer key's data key with the first key in KWALA_ENCRYPTION_KEYS. "
        "Run after prepending a new key; then the old key can be removed."
    )

    def handle(self, *args, **options):
        counts = {}
        for model, field in ((Secret, "value_encrypted"), (SignerKey, "key_encrypted")):
            done = 0
            with transaction.atomic():
                for row in model.objects.select_for_update().only("pk", "team_id", field, *_context_fields(model)):
                    token = getattr(row, field)
                    if crypto.needs_rewrap(token):
                        setattr(row, field, crypto.rewrap(token, row.encryption_context))
                        row.save(update_fields=[field])
                        done += 1
            counts[model.__name__] = done
        self.stdout.write(", ".join(f"{name}: {n} re-wrapped" for name, n in counts.items()))


def _context_fields(model) -> list[str]:
    return ["name"] if model is Secret else ["code"]
