"""Credentials never reach a file or the terminal: one place that strips and masks them.

A URL's ``user:password@`` is split off before any adapter sees the URL (the adapters send it
as HTTP Basic auth), and :func:`redact` masks any that remain in text or JSON-like data before
it is written (run.json, report.json) or printed. Bearer tokens travel only by the name of the
environment variable that holds them (``api_key_env``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s\"'<>]+@")
MASK = "***"
# Environment variables whose values are credentials (HF_TOKEN, OPENAI_API_KEY, AWS_SECRET_ACCESS_KEY…).
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|(^|_)API_?KEY$|(^|_)KEY$", re.IGNORECASE)


def redact(value: Any) -> Any:
    """``value`` with the credentials of every URL in it masked (strings, lists, dicts, nested)."""
    if isinstance(value, str):
        return _USERINFO.sub(rf"\g<scheme>{MASK}@", value) if "@" in value else value
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def has_credentials(url: str) -> bool:
    """Whether a URL carries ``user[:password]@``."""
    return bool(urlsplit(url).username)


def is_redacted(url: str) -> bool:
    """Whether a URL is a masked copy (its credentials are not in it)."""
    return f"://{MASK}@" in url


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without its userinfo, and (user, password) when it had them."""
    parts = urlsplit(url)
    if not parts.username:
        return url, None
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, (unquote(parts.username), unquote(parts.password or ""))


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of the environment's credential-named variables (longest first; short ones, which
    would mask ordinary words, left out)."""
    env = os.environ if environ is None else environ
    return sorted({v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 6}, key=len, reverse=True)


def mask_secrets(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` (a server's log, a command's output) with URL credentials and the value of every
    credential-named environment variable masked: what a container was given never reaches a file."""
    for value in secret_values(environ):
        text = text.replace(value, MASK)
    return str(redact(text))
