"""Putting user values into Hydra overrides safely.

Why: Hydra parses override values with its own grammar, so a path holding ``#``, ``=``, spaces
or brackets (``IN1K-vit.h.14-300e.pth.tar#encoder``) breaks or changes meaning unless quoted.
"""

from __future__ import annotations

_PLAIN = set("/._-~+:")


def quote_value(value: str) -> str:
    """``value`` as it must appear after ``key=`` in a Hydra override (quoted when needed)."""
    if value and all(c.isalnum() or c in _PLAIN for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
