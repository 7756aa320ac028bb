"""The one I/O seam: every byte a store holds is read and written through a :class:`StoreIO`.

Keys are ``/``-separated paths relative to the store's root (``commit.json``,
``g0003/values/c/0/0``, ``index/part-...parquet``). Durability (atomic replace,
fsync), create-if-absent, byte counting and locking live behind this interface:
:class:`LocalStoreIO` for a directory, ``ObjectStoreIO`` (:mod:`.object`, the ``s3``
extra) for ``s3://bucket/prefix``, where conditional writes replace rename and locks. Zarr reaches
the same bytes through :class:`SeamZarrStore`, an adapter over a ``StoreIO``.
"""

from __future__ import annotations

from .base import Lease, RangeFile, StoreIO, check_key
from .local import LocalStoreIO
from .zarr_adapter import SeamZarrStore

__all__ = ["StoreIO", "Lease", "RangeFile", "LocalStoreIO", "SeamZarrStore", "check_key", "open_io", "is_url"]

# URL schemes with a backend: s3:// (ObjectStoreIO, the optional 's3' extra).
_SCHEMES = ("s3://",)


def is_url(location) -> bool:
    """True for a store URL (``s3://bucket/prefix``) rather than a local path."""
    return isinstance(location, str) and location.lower().startswith(_SCHEMES)


def open_io(location, storage_options: dict | None = None) -> StoreIO:
    """A StoreIO for a store location.

    An open StoreIO is returned as is; ``s3://bucket/prefix`` gets the object-storage
    backend (credentials and endpoint from the AWS environment variables, or
    ``storage_options``: obstore ``S3Store`` keyword arguments); a path gets the local one.
    """
    if isinstance(location, StoreIO):
        return location
    if is_url(location):
        from .object import ObjectStoreIO  # imports obstore only when used

        return ObjectStoreIO(location, storage_options)
    if isinstance(location, str) and "://" in location:
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(f"store location: expected a local path or s3://bucket/prefix, got {location!r}")
    if storage_options:
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(f"storage_options: expected only with an s3:// URL, got them with the local path {location!r}")
    return LocalStoreIO(location)
