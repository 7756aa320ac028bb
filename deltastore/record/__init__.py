"""Recording: optimizer hooks (Recorder), the buffered writer (StoreWriter), store creation, options."""

from __future__ import annotations

from .options import RecordOptions
from .recorder import Recorder, recorded_tensors, specs_of
from .writer import StoreWriter

__all__ = ["RecordOptions", "Recorder", "StoreWriter", "recorded_tensors", "specs_of"]
