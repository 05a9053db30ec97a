"""Credentials in URLs (``user:password@``): used to authenticate, never shown, logged or
stored. One definition for the collector, the load generator and the store."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

_USERINFO = re.compile(r"(?<=://)[^/?#\s\"']*@")


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """`url` without its ``user:password@`` part, and that part as HTTP basic auth."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=hostport)), (unquote(user), unquote(password))


def redact_credentials(text: str) -> str:
    """`text` with the credentials of any URL in it replaced by ``***``, for messages and
    records that show a value the user typed."""
    return _USERINFO.sub("***@", text)


def is_http_url(url: str) -> bool:
    """An http(s) URL with a host, a valid port if any, and no white space."""
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # not a number, or out of range
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok
            and not any(c.isspace() for c in url))
