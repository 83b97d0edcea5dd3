"""Secrets never leave the process: every text shovel writes for people (a log line, a usage
error, the stop report) goes through `redact` first.

Two nets, because an error can come before the secret is known: any `SCHEME://USER:PASSWORD@`
(or `SCHEME://TOKEN@`) in a text has its password (its token) masked, whether or not the URL
parsed; and the secrets of a URL that did parse (passwords and tokens, as typed and decoded)
are remembered and masked wherever they appear, in a client library's message too.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

# A URL up to its last '@' (a password may hold '@', '/' or '?' typed unencoded): the scheme,
# then what is masked, then the '@'. It ends at a space or a quote. An '@' further on (in a
# query value) masks more than the user information: more, never less.
_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<userinfo>[^\s'\"]*)@", re.I)
# Shorter secrets are masked only inside a URL: masking every "ab" in every line would make the
# logs unreadable.
MIN_REMEMBERED = 4

_known: set[str] = set()


def remember(secret: str) -> None:
    """Masks `secret` (and its percent-decoded form) in every text redacted from now on."""
    for form in (secret, unquote(secret)):
        if len(form) >= MIN_REMEMBERED:
            _known.add(form)


def _mask_userinfo(m: re.Match[str]) -> str:
    user, colon, _ = m.group("userinfo").partition(":")
    # USER:PASSWORD keeps the user; a lone TOKEN is all secret.
    return f"{m.group('scheme')}{user + ':' if colon else ''}{MASK}@"


def redact(text: str) -> str:
    """`text` with every password and token masked (see the module docstring)."""
    text = _USERINFO.sub(_mask_userinfo, text)
    # Longest first: a secret that contains another is masked whole.
    for secret in sorted(_known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
