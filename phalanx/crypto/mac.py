"""Message authentication codes: HMAC-SHA256 truncated to 16 bytes.

MACs authenticate the links and the client authenticators (Castro & Liskov's "MACs
instead of signatures"): 128 bits of tag are ample against forgery, and the truncation
halves the authenticator a client attaches per replica.
"""

from __future__ import annotations

import hmac

MAC_SIZE = 16
_DIGEST = "sha256"


def mac(key: bytes, data: bytes) -> bytes:
    """The 16-byte tag of ``data`` under ``key``."""
    # hmac.digest runs the whole HMAC in C (OpenSSL): no Python-level HMAC object per call.
    return hmac.digest(key, data, _DIGEST)[:MAC_SIZE]


def mac_ok(key: bytes, data: bytes, tag: object) -> bool:
    """Is ``tag`` the tag of ``data`` under ``key``? Constant-time; never raises."""
    if not isinstance(tag, bytes | bytearray | memoryview) or len(tag) != MAC_SIZE:
        return False
    try:
        return hmac.compare_digest(mac(key, data), tag)
    except (TypeError, ValueError):
        return False


class MacKey:
    """A key prepared once for many tags over ``prefix || data``.

    The inner/outer HMAC pads are computed once and copied per tag, which is cheaper than
    ``hmac.digest`` on a concatenation and never copies ``data`` (frames can be 16 MiB).
    """

    __slots__ = ("_template",)

    def __init__(self, key: bytes) -> None:
        self._template = hmac.new(key, digestmod=_DIGEST)

    def tag(self, prefix: bytes, data: bytes | memoryview) -> bytes:
        """The 16-byte tag of ``prefix || data``."""
        h = self._template.copy()
        h.update(prefix)
        h.update(data)
        return h.digest()[:MAC_SIZE]

    def check(self, prefix: bytes, data: bytes | memoryview, tag: bytes | memoryview) -> bool:
        """Constant-time check of a tag produced by :meth:`tag`."""
        return hmac.compare_digest(self.tag(prefix, data), tag)
