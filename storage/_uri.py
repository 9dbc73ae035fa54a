"""Keeping credentials out of messages: redact a MongoDB URI, scrub a secret from any text."""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["redact_uri", "scrub"]

# Greedy up to the last "@": a password with an unescaped "@" is still hidden (over-redacting a
# host is the safe direction).
_USERINFO_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>.*)@(?P<rest>[^@]*)$")
# Query options that carry secrets (AWS session tokens, key-file passwords).
_SECRET_OPTION_RE = re.compile(r"(?i)((?:authMechanismProperties|tlsCertificateKeyFilePassword)=)[^&]*")


def redact_uri(uri: str) -> str:
    """The URI with its password (and secret-bearing options) replaced by ``***``.

    Args:
        uri: A ``mongodb://`` or ``mongodb+srv://`` URI, possibly with ``user:password@``.

    Returns:
        The same URI, safe to print: ``mongodb://user:***@host:27017/``.
    """
    m = _USERINFO_RE.match(uri)
    if m is not None:
        user, colon, _ = m["userinfo"].partition(":")
        uri = f"{m['scheme']}{user}{':***' if colon else ''}@{m['rest']}"
    return _SECRET_OPTION_RE.sub(r"\1***", uri)


def _secrets(uri: str) -> list[str]:
    m = _USERINFO_RE.match(uri)
    if m is None:
        return []
    _, colon, password = m["userinfo"].partition(":")
    if not colon or not password:
        return []
    return sorted({password, unquote(password)}, key=len, reverse=True)


def scrub(text: str, uri: str) -> str:
    """``text`` with the URI's password removed wherever it appears (driver messages may echo it).

    Args:
        text: A message that may contain the URI or its password.
        uri: The URI whose credentials must not appear.

    Returns:
        The text, with the full URI redacted and any bare occurrence of the password as ``***``.
    """
    text = text.replace(uri, redact_uri(uri))
    for secret in _secrets(uri):
        text = text.replace(secret, "***")
    return text
