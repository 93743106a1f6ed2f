from __future__ import annotations

import base64

import pytest
from django.core.management import call_command
from django.db import connection

from flows import crypto
from flows.models import Secret, SignerKey

NEW_KEY = b"n" * 32
DEV_KEY_0 = "0x" + "11" * 32


def test_a_value_round_trips_and_is_bound_to_its_context():
    token = crypto.encrypt("hunter2", "secret:1:API_KEY")
    assert "hunter2" not in token
    assert crypto.decrypt(token, "secret:1:API_KEY") == "hunter2"
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(token, "secret:2:API_KEY")


def test_each_encryption_uses_a_fresh_data_key():
    assert crypto.encrypt("same", "c") != crypto.encrypt("same", "c")


def test_a_tampered_or_malformed_token_is_refused():
    token = crypto.encrypt("value", "c")
    head, sealed = token.rsplit(".", 1)
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(f"{head}.{flipped}", "c")
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt("not a token", "c")


@pytest.mark.django_db
def test_rotation_rewraps_every_value_under_the_new_key(settings, team, capsys):
    secret = Secret(team=team, name="API_KEY")
    secret.set_value("canary-7f3a")
    secret.save()
    signer = SignerKey(team=team, name="ops")
    signer.set_private_key(DEV_KEY_0)
    signer.save()
    old_keys = list(settings.KWALA_ENCRYPTION_KEYS)

    settings.KWALA_ENCRYPTION_KEYS = [NEW_KEY, *old_keys]
    call_command("rotate_encryption_keys")
    assert "Secret: 1 re-wrapped, SignerKey: 1 re-wrapped" in capsys.readouterr().out

    settings.KWALA_ENCRYPTION_KEYS = [NEW_KEY]  # the old key is gone
    secret.refresh_from_db()
    signer.refresh_from_db()
    assert secret.reveal() == "canary-7f3a"
    assert signer.private_key() == DEV_KEY_0[2:]
    assert signer.address == "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A"


@pytest.mark.django_db
def test_plaintext_never_reaches_the_database(team):
    secret = Secret(team=team, name="TOKEN")
    secret.set_value("canary-plaintext-91")
    secret.save()
    with connection.cursor() as cursor:
        cursor.execute("SELECT value_encrypted FROM flows_secret")
        (stored,) = cursor.fetchone()
    assert "canary-plaintext-91" not in stored
    assert base64.urlsafe_b64encode(b"canary-plaintext-91").decode()[:12] not in stored
