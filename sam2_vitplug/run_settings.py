"""Comparing the settings record of an earlier run with this one's, to resume only like with like.

Why: a rerun on the same output resumes, but resuming with another bank, checkpoint or option
would silently mix two runs in one file. Runs keep a JSON record of everything that changes
their output; :func:`changed_settings` turns two records into ``setting: old -> new`` lines
for the refusal message. Import-light (no torch).
"""

from __future__ import annotations

from typing import Any


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:18] + "..." + text[-18:]


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every flattened key whose value differs (sorted by key)."""
    a, b = flatten(old), flatten(new)
    return [f"{key}: {_short(a.get(key))} -> {_short(b.get(key))}"
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
