"""Counts in words, for every message the tool prints."""


def counted(count, noun, plural=None):
    """``1 variable``, ``2 variables``, ``1,024 parameters``: a count and its noun in the right number."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"
