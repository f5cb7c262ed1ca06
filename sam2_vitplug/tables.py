"""Plain-text tables for terminal reports (``info``, ``check``, benchmarks): left-aligned
columns separated by two spaces, a dashed rule under the header, no trailing blanks."""

from __future__ import annotations

from typing import Any, Sequence


def format_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """``header`` and ``rows`` (any values, shown with ``str``) as aligned text lines."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(cells[0]))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])
