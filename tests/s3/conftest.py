"""A local S3 for the object-storage tests: moto's server in-process on 127.0.0.1, a free port.

The AWS environment variables point every client (obstore, s3fs, boto3, DuckDB through
fsspec) at it, as a user's would point at real S3. Each test gets its own bucket.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os

import pytest

# The S3 suite needs the `s3` extra (obstore) and the `test` extra (moto, boto3, duckdb, s3fs).
# Without them it is left out on a developer's machine; in CI (CI set) a missing one fails loudly.
_NEEDED = ("obstore", "moto", "boto3", "duckdb", "s3fs")
if any(importlib.util.find_spec(m) is None for m in _NEEDED) and not os.environ.get("CI"):
    collect_ignore_glob = ["test_*.py"]
else:
    import boto3
    from moto import server as moto_server

_count = itertools.count()


@pytest.fixture(scope="session")
def s3_endpoint():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true", "DELTASTORE_LEASE_SECONDS": "30"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def bucket(s3_endpoint):
    """A new, empty bucket name on the local server."""
    name = f"ds-test-{os.getpid()}-{next(_count)}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_url(bucket):
    """A store URL under a prefix of a fresh bucket."""
    return f"s3://{bucket}/runs/store"


def new_bucket(endpoint: str) -> str:
    name = f"ds-test-{os.getpid()}-{next(_count)}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def recorded(s3_endpoint, tmp_path_factory):
    """The same 12-step run of TinyNet recorded twice, locally and on S3 (string ids, random pruning,
    several flushes so the index has several parts): (url, local path, model, initial state)."""
    from deltastore.plan import PruningPlan
    from tests.helpers import TinyNet, record

    url = f"s3://{new_bucket(s3_endpoint)}/cycle"
    local = tmp_path_factory.mktemp("s3cycle") / "store"
    kw = dict(steps=12, plan=PruningPlan.uniform(0.5, seed=3), steps_per_shard=4, sample_id_type="int64")
    model, initial, _ = record(url, **kw)
    record(local, model=TinyNet(0), **kw)
    return url, local, model, initial
