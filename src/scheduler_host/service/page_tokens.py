"""Opaque page tokens: the keyset position, bound to its scope and signed, so a foreign or
altered token is refused instead of silently reading the wrong page."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence

_MAC_BYTES = 16


class SignedPageTokens:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, scope: str, body: bytes) -> bytes:
        return hmac.new(self._key, scope.encode() + b"\0" + body, hashlib.sha256).digest()[
            :_MAC_BYTES
        ]

    def encode(self, scope: str, position: Sequence[str]) -> str:
        body = json.dumps(list(position), separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._mac(scope, body) + body).decode().rstrip("=")

    def decode(self, scope: str, token: str) -> list[str] | None:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        # Only the exact spelling this class issues: the decoder tolerates aliases ("+" for "-",
        # stray characters, unused low bits) that would let an altered token through.
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
            return None
        mac, body = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, self._mac(scope, body)):
            return None
        try:
            position = json.loads(body)
        except ValueError:
            return None
        if not isinstance(position, list) or not all(isinstance(p, str) for p in position):
            return None
        return position
