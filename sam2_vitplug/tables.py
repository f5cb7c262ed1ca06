"""Plain-text tables for terminal reports (``info``, ``check``, benchmarks): left-aligned
columns separated by two spaces, a dashed rule under the header, no trailing blanks."""

from __future__ import annotations

from typing import Any, Sequence


def format_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], *, full_rule: bool = False) -> str:
    """``header`` and ``rows`` (any values, shown with ``str``) as aligned text lines; the rule
    under the header is dashed per column, or one unbroken line with ``full_rule`` (benchmarks)."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(cells[0]))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()

    body = [line(r) for r in cells]
    rule = "-" * max(len(b) for b in body) if full_rule else line(["-" * w for w in widths])
    return "\n".join([body[0], rule, *body[1:]])
