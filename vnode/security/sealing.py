"""Secrets at rest: AES-256-GCM under a key kept in a 0600 file beside the store.

The offline cache keeps the secrets and service-account tokens a node's pods need, so that they
can start while the control plane is out of reach; on disk they are sealed, never plain. Each
sealed value is bound to its store key (GCM associated data), so a value moved to another key does
not open. The cipher (the ``cryptography`` package, ~10 MiB resident) is loaded on first use: a
node whose pods reference no secret never pays for it.
"""

from __future__ import annotations

import base64
import contextlib
import os
from pathlib import Path
from typing import Any

from vnode import errors

KEY_BYTES = 32
NONCE_BYTES = 12


class Sealer:
    """Seals and opens values with the key in ``key_file`` (created, 0600, when missing)."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self._aead: Any = None

    def _cipher(self) -> Any:
        if self._aead is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._aead = AESGCM(self._key())
        return self._aead

    def _key(self) -> bytes:
        self.key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, os.urandom(KEY_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            key = self.key_file.read_bytes()
        except OSError as exc:
            raise errors.StoreError(f"cannot read the store key {self.key_file}: {exc.strerror}") from exc
        if len(key) != KEY_BYTES:
            raise errors.StoreError(f"the store key {self.key_file} is not {KEY_BYTES} bytes")
        return key

    def seal(self, data: bytes, bound_to: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._cipher().encrypt(nonce, data, bound_to.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, bound_to: str) -> bytes:
        """The plain value; ``StoreError`` if it was not sealed here under this key."""
        from cryptography.exceptions import InvalidTag

        raw = base64.b64decode(sealed)
        try:
            data: bytes = self._cipher().decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], bound_to.encode())
        except InvalidTag as exc:
            raise errors.StoreError(
                f"a sealed value ({bound_to}) does not open with {self.key_file}"
            ) from exc
        return data
