"""The first place two JSON values differ: for messages about metadata that is not what the manifest implies."""

from __future__ import annotations


def first_difference(expected, got, where: str = "") -> str:
    """The first place two JSON values differ, for messages."""
    if isinstance(expected, dict) and isinstance(got, dict):
        for k in sorted(set(expected) | set(got)):
            if k not in got:
                return f"no {where + k!r}"
            if k not in expected:
                return f"unexpected {where + k!r}"
            if expected[k] != got[k]:
                return first_difference(expected[k], got[k], f"{where}{k}.")
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        for i, (e, g) in enumerate(zip(expected, got)):
            if e != g:
                return first_difference(e, g, f"{where}{i}.")
    return f"{where.rstrip('.') or 'value'} = {str(got)[:120]!r} instead of {str(expected)[:120]!r}"
