"""One place that removes credentials from URLs, free text and parameters before anything shows them.

Every error, log line, process title, cache document and ``ohlcv-config list`` output goes through
these functions. They never raise and they err on the side of hiding too much: a URL's password is
taken to run from the first ``:`` after ``scheme://`` up to the LAST ``@`` of the URL, so a password
holding an unencoded ``/``, ``?``, ``#`` or ``@`` is hidden whole (a standard parser would end it at
the first such character and print the rest as a host, a path or a port).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

# query parameters that carry a secret (libpq's and redis-py's ``?password=``, API tokens)
_SECRET_QUERY = re.compile(
    r"(?i)([?&;](?:password|passwd|pass|pwd|secret|token|access_token|api[_-]?key|apikey|auth)=)[^&#;\s]*"
)
# a URL inside free text: a scheme (or none), ``://`` and everything up to whitespace
_URL_IN_TEXT = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.\-]*)?://\S+")
# parameter names whose whole value is a secret
_SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|api[_-]?key|apikey|private[_-]?key|credential)")


def _scrub_query(text: str) -> str:
    return _SECRET_QUERY.sub(lambda m: m.group(1) + MASK, text)


def redact_url(url: str) -> str:
    """``url`` with its password (userinfo after the first ``:``) and secret query values replaced by ``***``.

    Safe on any string, malformed or not. Without ``://`` only the query is scrubbed.
    """
    text = str(url)
    start = text.find("://")
    if start < 0:
        return _scrub_query(text)
    head, body = text[: start + 3], text[start + 3:]
    at = body.rfind("@")
    if at < 0:
        return head + _scrub_query(body)
    userinfo, rest = body[:at], body[at + 1:]
    user, sep, _password = userinfo.partition(":")
    if not sep:  # a user name only: nothing secret in it
        return head + _scrub_query(body)
    return f"{head}{user}:{MASK}@{_scrub_query(rest)}"


def url_has_credentials(url: str) -> bool:
    """True when ``url`` carries a password (in its userinfo or a secret query parameter)."""
    return redact_url(url) != str(url)


def password_forms(url: str) -> set[str]:
    """The password of ``url`` as written and percent-decoded (non-empty forms only), for scrubbing texts."""
    from urllib.parse import unquote

    text = str(url)
    start = text.find("://")
    forms: set[str] = set()
    if start >= 0:
        body = text[start + 3:]
        at = body.rfind("@")
        if at >= 0:
            _user, sep, password = body[:at].partition(":")
            if sep and password:
                forms |= {password, unquote(password)}
    for m in _SECRET_QUERY.finditer(text):
        value = text[m.end(1): m.end()]
        if value:
            forms |= {value, unquote(value)}
    return {f for f in forms if f}


def redact_text(text: str, *urls: str) -> str:
    """Free text (an exception message, a log line) with every URL in it redacted, and the passwords of
    ``urls`` (the URLs the text may be about, as written and decoded) replaced wherever they appear."""
    out = str(text)
    for url in urls:
        for secret in sorted(password_forms(url), key=len, reverse=True):
            out = out.replace(secret, MASK)
    if "://" in out:
        out = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), out)
    elif "=" in out:
        out = _scrub_query(out)
    return out


def redact_param(name: str, value: str) -> str:
    """A configuration parameter as it may be shown: a secret-named one masked, any URL in it redacted."""
    if value and _SECRET_NAME.search(name):
        return MASK
    return redact_text(value)


def redact_params(params: Mapping[str, str]) -> dict[str, str]:
    """``redact_param`` over a mapping (ohlcv-config list, logs)."""
    return {k: redact_param(k, v) for k, v in params.items()}


def redact_value(value: Any) -> Any:
    """A JSON-like value (cache document fields) with every string passed through ``redact_text``."""
    if isinstance(value, str):
        return redact_text(value) if ("://" in value or "=" in value) else value
    if isinstance(value, Mapping):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value
