"""Envelope encryption for team secrets and signer keys.

Each value gets its own random data key (AES-256-GCM); the data key is wrapped
by the newest master key in KWALA_ENCRYPTION_KEYS. Rotating a master key means
prepending a new one and re-wrapping the data keys (`rotate_encryption_keys`),
without touching the encrypted values. A context string (the row's identity) is
bound as associated data, so a ciphertext copied to another row fails to open.

Token: "v1.<key id>.<wrapped data key>.<ciphertext>", url-safe base64 parts.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

VERSION = "v1"


class DecryptionError(Exception):
    """The token is malformed, or no configured key (or context) opens it."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:12]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _master_keys() -> dict[str, bytes]:
    return {key_id(key): key for key in settings.KWALA_ENCRYPTION_KEYS}


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)


def encrypt(plaintext: str, context: str) -> str:
    primary = settings.KWALA_ENCRYPTION_KEYS[0]
    kid = key_id(primary)
    data_key = AESGCM.generate_key(bit_length=256)
    wrapped = _seal(primary, data_key, f"{kid}|{context}".encode())
    sealed = _seal(data_key, plaintext.encode(), context.encode())
    return ".".join([VERSION, kid, _b64(wrapped), _b64(sealed)])


def _parse(token: str) -> tuple[str, bytes, bytes]:
    try:
        version, kid, wrapped, sealed = token.split(".")
        if version != VERSION:
            raise ValueError(version)
        return kid, _unb64(wrapped), _unb64(sealed)
    except (ValueError, TypeError) as exc:
        raise DecryptionError("malformed encrypted value") from exc


def _unwrap(kid: str, wrapped: bytes, context: str) -> bytes:
    master = _master_keys().get(kid)
    if master is None:
        raise DecryptionError(f"encrypted with key {kid}, which is not in KWALA_ENCRYPTION_KEYS")
    try:
        return _open(master, wrapped, f"{kid}|{context}".encode())
    except InvalidTag as exc:
        raise DecryptionError("the data key does not open with its master key (wrong context?)") from exc


def decrypt(token: str, context: str) -> str:
    kid, wrapped, sealed = _parse(token)
    data_key = _unwrap(kid, wrapped, context)
    try:
        return _open(data_key, sealed, context.encode()).decode()
    except InvalidTag as exc:
        raise DecryptionError("the value does not open with its data key (wrong context?)") from exc


def needs_rewrap(token: str) -> bool:
    return _parse(token)[0] != key_id(settings.KWALA_ENCRYPTION_KEYS[0])


def rewrap(token: str, context: str) -> str:
    """The same ciphertext with its data key wrapped by the newest master key."""
    kid, wrapped, sealed = _parse(token)
    data_key = _unwrap(kid, wrapped, context)
    primary = settings.KWALA_ENCRYPTION_KEYS[0]
    new_kid = key_id(primary)
    return ".".join([VERSION, new_kid, _b64(_seal(primary, data_key, f"{new_kid}|{context}".encode())), _b64(sealed)])
