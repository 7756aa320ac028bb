"""deltastore: record pruned PyTorch training updates into Zarr v3 + Parquet.

Public surface (everything else is internal)::

    Recorder      attach to an optimizer, record each step's pruned update
    StoreReader   open a store read-only, read steps, sum updates on a device
    PruningPlan   how much of each tensor's update to keep (random/magnitude/global)
    verify_store  check every checksum and that index and values agree
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import *  # noqa: F401,F403  (one documented hierarchy)
from .plan import PruningPlan, TensorSpec

__all__ = ["PruningPlan", "TensorSpec", "Recorder", "StoreReader", "open_store", "verify_store", "__version__"]


def __getattr__(name: str):
    # Lazy: importing deltastore must stay cheap (zarr/pyarrow load on first use).
    if name == "Recorder":
        from .recorder import Recorder

        return Recorder
    if name in ("StoreReader", "open_store"):
        from . import reader

        return getattr(reader, name)
    if name == "verify_store":
        from .verify import verify_store

        return verify_store
    raise AttributeError(f"module 'deltastore' has no attribute {name!r}")
