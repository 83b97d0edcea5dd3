"""Sizes as people write them: bytes, or a number with a unit (16MiB, 256MB, 1.5GiB)."""

import re

# Decimal units are powers of 1000, binary ones powers of 1024, as in IEC 80000-13.
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
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
HOW = (
    "give bytes (16777216) or a number with a unit: KB, MB, GB, TB (powers of 1000), "
    "KiB, MiB, GiB, TiB (powers of 1024)"
)


def parse_size(text: str) -> int:
    """Bytes in `text`; ValueError naming the units when it is not a size or not whole bytes."""
    match = _SIZE.fullmatch(text)
    unit = UNITS.get(match.group(2).upper()) if match else None
    if match is None or unit is None:
        raise ValueError(f"not a size: {HOW}")
    number: str = match.group(1)
    whole, _, fraction = number.partition(".")
    # Exact arithmetic: 1.5GiB is 1610612736 bytes, not a float's nearest neighbour.
    scaled = int(whole) * unit + int(fraction or "0") * unit // 10 ** len(fraction)
    if int(fraction or "0") * unit % 10 ** len(fraction):
        raise ValueError(f"{number}{match.group(2)} is not a whole number of bytes")
    return int(scaled)


def format_size(n: int) -> str:
    """`n` bytes in the largest binary unit that holds it whole (16MiB), else in bytes."""
    for name in ("TiB", "GiB", "MiB", "KiB"):
        unit = UNITS[name.upper()]
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    return str(n)
