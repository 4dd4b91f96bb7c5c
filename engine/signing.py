"""XT's request signature (HMAC-SHA256), as ccxt and pyxt compute it.

The signed string is the sorted ``xt-validate-*`` header pairs, then
``#METHOD#PATH`` and, for a request with a body, ``#`` and the body exactly as
sent. Kept free of I/O so the simulator verifies with the very same code.
"""

from __future__ import annotations

import hashlib
import hmac

ALGORITHM = "HmacSHA256"
SIGNATURE_HEADER = "xt-validate-signature"


def signature_payload(headers: dict[str, str], method: str, path: str, body: str | None) -> str:
    """The string to sign. ``headers`` are the validate headers, signature excluded."""
    x = "&".join(f"{name}={value}" for name, value in sorted(headers.items()))
    y = f"#{method}#{path}"
    if body is not None:
        y += f"#{body}"
    return x + y


def sign(secret: str, payload: str) -> str:
    """Lower-case hex HMAC-SHA256 of ``payload`` (XT compares without regard to case)."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def signed_headers(
    api_key: str,
    secret: str,
    method: str,
    path: str,
    body: str | None,
    timestamp_ms: int,
    recv_window_ms: int,
) -> dict[str, str]:
    """Every header a signed request carries, signature included."""
    headers = {
        "xt-validate-algorithms": ALGORITHM,
        "xt-validate-appkey": api_key,
        "xt-validate-recvwindow": str(recv_window_ms),
        "xt-validate-timestamp": str(timestamp_ms),
    }
    headers[SIGNATURE_HEADER] = sign(secret, signature_payload(headers, method, path, body))
    return headers
