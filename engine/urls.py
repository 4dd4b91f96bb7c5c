"""The exchange's URL: one rule for the job file's ``base_url`` and ``--base-url``, and the
transport check every run applies to whichever of them it sends to."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

BASE_URL_RULE = "must be an http(s) URL such as https://sapi.xt.com"


class InsecureTransportError(Exception):
    """Credentials would cross a network in clear text."""


def base_url_problem(value: str) -> str | None:
    """Why ``value`` cannot be the exchange's URL (``BASE_URL_RULE``), or None: a query or a
    fragment would be sent with every signed request, and no signature covers them."""
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        ok = False
    if not ok or parts.query or parts.fragment or parts.username or parts.password:
        return BASE_URL_RULE
    return None


def check_transport(base_url: str, insecure: bool) -> str | None:
    """Refuse plain http:// beyond loopback unless ``insecure``; return a warning if allowed.

    The host is read as aiohttp will read it (yarl), not by a second parser that might
    see loopback where aiohttp sees another host. A URL yarl cannot read is refused.
    """
    from yarl import URL  # aiohttp's own parser; imported only by commands that send

    try:
        url = URL(base_url)
        host = url.host
    except ValueError:
        host = None
    if host is None or url.scheme not in ("http", "https"):
        raise InsecureTransportError(
            f"{base_url!r}: not an http(s) URL with a host, such as https://sapi.xt.com"
        )
    if url.scheme == "https" or _is_loopback(host):
        return None
    if not insecure:
        raise InsecureTransportError(
            f"{base_url}: refusing to send API keys and signatures over plain http:// to a "
            "host that is not loopback; use https:// or pass --insecure"
        )
    return f"warning: sending credentials over plain http:// to {host} (--insecure)"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
