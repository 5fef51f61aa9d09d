"""Small helpers shared by the tests: base64url, hand-made tokens, a settable clock."""

from __future__ import annotations

import base64
import json
import time
from typing import Any


def b64(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    """A JSON value as a base64url segment."""
    return b64(json.dumps(value).encode())


def compact(header: Any, payload: Any, signature: bytes = b"sig") -> str:
    """A compact JWS from parts, signed with nothing in particular."""
    return f"{segment(header)}.{segment(payload)}.{b64(signature)}"


class Clock:
    """Epoch seconds that move only when told to (``now`` is set, or ``advance`` called)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
