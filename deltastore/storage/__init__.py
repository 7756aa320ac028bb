"""The one I/O seam: every byte a store holds is read and written through a :class:`StoreIO`.

Keys are ``/``-separated paths relative to the store's root (``commit.json``,
``g0003/values/c/0/0``, ``index/part-...parquet``). Durability (atomic replace,
fsync), create-if-absent, byte counting and locking live behind this interface,
so a second backend (object storage) plugs in here and nowhere else. Zarr reaches
the same bytes through :class:`SeamZarrStore`, an adapter over a ``StoreIO``.
"""

from __future__ import annotations

from .base import Lease, RangeFile, StoreIO, check_key
from .local import LocalStoreIO
from .zarr_adapter import SeamZarrStore

__all__ = ["StoreIO", "Lease", "RangeFile", "LocalStoreIO", "SeamZarrStore", "check_key", "open_io"]


def open_io(location) -> StoreIO:
    """A StoreIO for a store location: an open StoreIO is returned as is, a path gets the local backend."""
    if isinstance(location, StoreIO):
        return location
    return LocalStoreIO(location)
