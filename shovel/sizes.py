"""Sizes as people write them: bytes, or a number with a unit (16MiB, 256MB, 1.5GiB, 16Mi)."""

import re

# Decimal units are powers of 1000, binary ones powers of 1024 (IEC 80000-13); Ki, Mi, Gi, Ti
# as Kubernetes writes them.
UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "KI": 1024,
    "KIB": 1024,
    "MI": 1024**2,
    "MIB": 1024**2,
    "GI": 1024**3,
    "GIB": 1024**3,
    "TI": 1024**4,
    "TIB": 1024**4,
}
_SIZE = re.compile(r"\s*([0-9]+)(?:\.([0-9]+))?\s*([A-Za-z]*)\s*")
HOW = (
    "give bytes (16777216) or a number with a unit: KB, MB, GB, TB (powers of 1000), "
    "KiB, MiB, GiB, TiB (powers of 1024)"
)


def parse_size(text: str) -> int:
    """Bytes in `text`; ValueError saying how to write a size when it is not one, or not a
    whole number of bytes."""
    match = _SIZE.fullmatch(text)
    unit = UNITS.get(match.group(3).upper()) if match else None
    if match is None or unit is None:
        raise ValueError(f"not a size: {HOW}")
    whole: str = match.group(1)
    fraction: str = match.group(2) or ""
    # Exact arithmetic: 1.5GiB is 1610612736 bytes, not a float's nearest neighbour.
    # (int ** int is typed Any: a negative exponent would make a float.)
    tenths: int = 10 ** len(fraction)
    scaled, rest = divmod(int(fraction or "0") * unit, tenths)
    if rest:
        raise ValueError("not a whole number of bytes")
    return int(whole) * unit + scaled


def format_size(n: int) -> str:
    """`n` bytes in the largest binary unit that holds it whole (16MiB), else in bytes."""
    for name in ("TiB", "GiB", "MiB", "KiB"):
        unit = UNITS[name.upper()]
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    return str(n)
