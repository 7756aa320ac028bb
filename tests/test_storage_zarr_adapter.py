"""SeamZarrStore passes zarr-python's own store test suite (zarr.testing.store.StoreTests)."""

from __future__ import annotations

import pickle

import pytest
from zarr.core.buffer import cpu
from zarr.testing.store import StoreTests

from deltastore.storage import LocalStoreIO, SeamZarrStore


class TestSeamZarrStore(StoreTests[SeamZarrStore, cpu.Buffer]):
    store_cls = SeamZarrStore
    buffer_cls = cpu.Buffer

    # The suite's own bypass: bytes written and read without the store's methods.
    async def set(self, store: SeamZarrStore, key: str, value) -> None:
        path = store.io.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.to_bytes())

    async def get(self, store: SeamZarrStore, key: str):
        return self.buffer_cls.from_bytes((store.io.root / key).read_bytes())

    @pytest.fixture
    def store_kwargs(self, tmp_path) -> dict:
        return {"io": LocalStoreIO(tmp_path), "read_only": False}

    def test_store_repr(self, store: SeamZarrStore) -> None:
        assert str(store) == f"deltastore-seam://{store.io.url}"

    def test_store_supports_writes(self, store: SeamZarrStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: SeamZarrStore) -> None:
        assert store.supports_listing

    async def test_serializable_store(self, store: SeamZarrStore) -> None:
        # Deliberately not picklable (the project unpickles nothing): a store is reopened from its location.
        with pytest.raises(TypeError):
            pickle.dumps(store)
