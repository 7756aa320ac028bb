"""progress_bar: a tqdm bar when asked for and stderr is a terminal, else an object that does nothing.

A bar drawn into a log file or a pipe is noise (carriage returns, one line per
refresh), so ``enabled`` is necessary, not sufficient: the bar appears only when
stderr is a TTY. ``--quiet`` on the commands turns it off even there.
"""

from __future__ import annotations

import sys


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def progress_bar(total: int, enabled: bool, desc: str, unit: str = "chunk"):
    """A bar of ``total`` units, or a no-op bar unless ``enabled`` and stderr is a terminal."""
    if not enabled or not stderr_is_terminal():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)
