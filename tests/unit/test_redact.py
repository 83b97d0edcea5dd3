"""redact: the secret of a URL masked in any text."""

from __future__ import annotations

from shovel.redact import redact


def test_redact_masks_passwords_and_tokens_in_any_text() -> None:
    assert redact("x nats://alice:pw@h:1/S?consumer=c y") == "x nats://alice:***@h:1/S?consumer=c y"
    assert redact("'tls://tok@h/S'") == "'tls://***@h/S'"
    assert redact("no URL here: alice@example.org") == "no URL here: alice@example.org"
