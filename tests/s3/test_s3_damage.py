"""Damage on object storage reads as it does locally: an error naming the object, never a different answer."""

from __future__ import annotations

import re

import boto3
import pytest

from deltastore.errors import CorruptStoreError, DeltaStoreError
from deltastore.read import StoreReader
from deltastore.verify import verify_store
from tests.s3.conftest import new_bucket


def _copy(url, endpoint):
    """A server-side copy of the recorded store under a new bucket (no re-recording)."""
    s3 = boto3.client("s3")
    src_bucket, src_prefix = url.removeprefix("s3://").split("/", 1)
    dst = new_bucket(endpoint)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=src_bucket, Prefix=src_prefix + "/")
            for o in page.get("Contents", [])]
    for k in keys:
        s3.copy_object(Bucket=dst, Key="copy/" + k[len(src_prefix) + 1:], CopySource={"Bucket": src_bucket, "Key": k})
    return s3, dst, [k[len(src_prefix) + 1:] for k in keys]


def _flip(s3, bucket, key, where):
    data = bytearray(s3.get_object(Bucket=bucket, Key=f"copy/{key}")["Body"].read())
    i = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[i] ^= 0x40
    s3.put_object(Bucket=bucket, Key=f"copy/{key}", Body=bytes(data))


@pytest.mark.parametrize("kind, damage", [("shard", "flip-middle"), ("shard", "delete"), ("commit", "flip-middle"), ("part", "delete")])
def test_damaged_object_is_named(recorded, s3_endpoint, kind, damage):
    url, _, _, _ = recorded
    s3, bucket, keys = _copy(url, s3_endpoint)
    key = {"shard": next(k for k in keys if "/values/c/" in k), "commit": "commit.json", "manifest": "zarr.json",
           "part": next(k for k in keys if k.startswith("index/part-"))}[kind]
    if damage == "delete":
        s3.delete_object(Bucket=bucket, Key=f"copy/{key}")
    elif damage == "truncate":
        data = s3.get_object(Bucket=bucket, Key=f"copy/{key}")["Body"].read()
        s3.put_object(Bucket=bucket, Key=f"copy/{key}", Body=data[: len(data) // 2])
    else:
        _flip(s3, bucket, key, damage.split("-")[1])
    store = f"s3://{bucket}/copy"
    rep = verify_store(store)
    name = key.rsplit("/", 1)[-1] if kind == "part" else key
    if kind == "part":  # verify checks arrays; the index is checked when used
        with pytest.raises(CorruptStoreError, match=re.escape(name)):
            r = StoreReader(store)
            r.index.check()
        return
    assert not rep.ok
    assert any(key in p.message or key.rsplit("/", 1)[0] in p.message for p in rep.problems), rep.problems
    with pytest.raises(DeltaStoreError):
        StoreReader(store).read_rows(0, list(range(12))) if kind == "shard" else StoreReader(store)
