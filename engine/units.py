"""Byte units for display. Bytes are the unit of record everywhere; convert only to show a number, and say
which unit: binary (KiB = 2^10 bytes ... what memory is sold and reported in) or the ZeRO paper's decimal GB."""

from __future__ import annotations

KIB, MIB, GIB, TIB, PIB = (2**10 * 1024**k for k in range(5))
KB, MB, GB, TB, PB = (10**3 * 1000**k for k in range(5))

BINARY_STEPS = ((PIB, "PiB"), (TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB"))
DECIMAL_STEPS = ((PB, "PB"), (TB, "TB"), (GB, "GB"), (MB, "MB"), (KB, "kB"))
UNIT_NOTES = {
    "bytes": "bytes",
    **{name: f"{name} = 2^{10 * (k + 1)} bytes" for k, (_, name) in enumerate(reversed(BINARY_STEPS))},
    **{name: f"{name} = 1e{3 * (k + 1)} bytes" for k, (_, name) in enumerate(reversed(DECIMAL_STEPS))},
}


def display_unit(max_bytes: float, decimal: bool = False) -> tuple[int, str]:
    """(divisor, name) of the largest unit in which `max_bytes` is at least 1; ("bytes", 1) below 1 KiB."""
    for divisor, name in DECIMAL_STEPS if decimal else BINARY_STEPS:
        if max_bytes >= divisor:
            return divisor, name
    return 1, "bytes"


def unit_note(name: str) -> str:
    """What a unit means, for axis titles and captions: 'GiB = 2^30 bytes'."""
    return UNIT_NOTES[name]


def format_bytes(n_bytes: float, decimal: bool = False, digits: int = 3) -> str:
    """'1.50 GiB', '512 bytes': `digits` significant digits in the unit display_unit picks."""
    divisor, name = display_unit(abs(n_bytes), decimal)
    if divisor == 1:
        return f"{n_bytes:,.0f} bytes"
    value = n_bytes / divisor  # 1 <= |value| < 1024: never an exponent, `digits` significant digits
    whole_digits = len(str(int(abs(value))))
    return f"{value:,.{max(0, digits - whole_digits)}f} {name}"
