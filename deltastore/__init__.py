"""deltastore: record pruned PyTorch training updates into Zarr v3 + Parquet.

Public surface (everything else is internal)::

    Recorder      attach to an optimizer, record each step's pruned update
    RecordOptions how a recording prunes, encodes, buffers and commits
    StoreReader   open a store read-only, read steps, sum updates on a device
    PruningPlan   how much of each tensor's update to keep (random/magnitude/global)
    verify_store  check every checksum and that index and values agree
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import *  # noqa: F401,F403  (one documented hierarchy)
from .plan import PruningPlan, TensorSpec

__all__ = ["PruningPlan", "TensorSpec", "Recorder", "RecordOptions", "StoreReader", "verify_store", "__version__"]


def __getattr__(name: str):
    # Lazy: importing deltastore must stay cheap (zarr/pyarrow load on first use).
    if name in ("Recorder", "RecordOptions"):
        from . import record

        return getattr(record, name)
    if name == "StoreReader":
        from .read import StoreReader

        return StoreReader
    if name == "verify_store":
        from .verify import verify_store

        return verify_store
    raise AttributeError(f"module 'deltastore' has no attribute {name!r}")
