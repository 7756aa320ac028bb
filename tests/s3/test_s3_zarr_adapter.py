"""SeamZarrStore over ObjectStoreIO passes zarr-python's own StoreTests against moto."""

from __future__ import annotations

import boto3
import pytest

from deltastore.storage import SeamZarrStore
from deltastore.storage.object import ObjectStoreIO
from tests import test_storage_zarr_adapter as local  # a module reference: its class is not collected twice
from tests.s3.conftest import new_bucket


class TestSeamZarrStoreOnS3(local.TestSeamZarrStore):
    """The local suite (zarr's StoreTests and the adapter's own checks) over an S3 bucket."""

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
