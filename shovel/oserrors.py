"""An OS error's reason as the middle of a sentence: "no such file or directory"."""


def reason(e: OSError) -> str:
    """`e`'s reason (its strerror), its first letter lowered."""
    text = e.strerror or str(e) or type(e).__name__
    return text[:1].lower() + text[1:]
