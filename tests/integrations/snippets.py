"""The README's pipeline snippets, by name (``<!-- snippet: NAME -->`` before a python block)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def snippet(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"<!-- snippet: {re.escape(name)} -->\s*```python\n(.*?)```", text, re.S)
    if m is None:
        raise LookupError(f"README.md: expected a snippet named {name!r} (<!-- snippet: {name} --> before a python block)")
    return m.group(1)


def run_snippet(name: str, namespace: dict) -> dict:
    """Execute the snippet in ``namespace`` (what the README assumes exists) and return it."""
    exec(compile(snippet(name), f"README.md:{name}", "exec"), namespace)
    return namespace
