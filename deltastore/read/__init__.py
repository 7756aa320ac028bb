"""Reading: open a store (StoreReader), read rows and steps, sum updates on a device."""

from __future__ import annotations

from .reader import StoreReader
from .summing import SumResult

__all__ = ["StoreReader", "SumResult"]
