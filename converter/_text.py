"""Counts and sizes in words, for every message the tool prints: sizes in binary units (1 MiB = 2**20 bytes)."""

BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def counted(count, noun, plural=None):
    """``1 variable``, ``2 variables``, ``1,024 parameters``: a count and its noun in the right number."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def size(count):
    """``512 B``, ``4.0 KiB``, ``1.3 MiB``: a byte count in the largest binary unit that keeps it at 1 or more."""
    value, unit = float(count), BYTE_UNITS[0]
    for unit in BYTE_UNITS:
        if value < 1024 or unit == BYTE_UNITS[-1]:
            break
        value /= 1024
    return f"{count} B" if unit == BYTE_UNITS[0] else f"{value:.1f} {unit}"
