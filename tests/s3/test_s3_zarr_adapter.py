"""SeamZarrStore over ObjectStoreIO passes zarr-python's own StoreTests against moto."""

from __future__ import annotations

import pickle

import boto3
import pytest
from zarr.core.buffer import cpu
from zarr.testing.store import StoreTests

from deltastore.storage import SeamZarrStore
from deltastore.storage.object import ObjectStoreIO
from tests.s3.conftest import new_bucket


class TestSeamZarrStoreOnS3(StoreTests[SeamZarrStore, cpu.Buffer]):
    store_cls = SeamZarrStore
    buffer_cls = cpu.Buffer

    # The suite's own bypass: bytes written and read with boto3, not through the store.
    async def set(self, store: SeamZarrStore, key: str, value) -> None:
        io = store.io
        boto3.client("s3").put_object(Bucket=io.bucket, Key=f"{io.prefix}/{key}", Body=value.to_bytes())

    async def get(self, store: SeamZarrStore, key: str):
        io = store.io
        return self.buffer_cls.from_bytes(boto3.client("s3").get_object(Bucket=io.bucket, Key=f"{io.prefix}/{key}")["Body"].read())

    @pytest.fixture
    def store_kwargs(self, s3_endpoint) -> dict:
        return {"io": ObjectStoreIO(f"s3://{new_bucket(s3_endpoint)}/zarr"), "read_only": False}

    def test_store_repr(self, store: SeamZarrStore) -> None:
        assert str(store) == f"deltastore-seam://{store.io.url}"

    def test_store_supports_writes(self, store: SeamZarrStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: SeamZarrStore) -> None:
        assert store.supports_listing

    async def test_serializable_store(self, store: SeamZarrStore) -> None:
        with pytest.raises(TypeError):  # deliberately not picklable, as locally
            pickle.dumps(store)
