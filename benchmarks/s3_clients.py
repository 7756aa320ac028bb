"""obstore vs s3fs against a local moto server, for the request patterns a store makes.

``python -m benchmarks.s3_clients``: many small ranged GETs from threads (shard reads) and
conditional PUTs (create-if-absent; compare-and-swap). The figures chose the object-storage
backend's client (benchmarks/RESULTS.md, "Object storage"). moto serves every request in
Python, so this compares the clients' per-request cost, not S3 latency.
"""

from __future__ import annotations

import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

N_OBJECTS, OBJECT_BYTES, N_GETS, THREADS, N_PUTS = 50, 256 * 1024, 2000, 8, 200


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    import boto3
    import obstore as obs
    import s3fs
    from moto.server import ThreadedMotoServer
    from obstore.store import S3Store

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    try:
        host, port = srv.get_host_and_port()
        ep = f"http://{host}:{port}"
        os.environ.update(AWS_ENDPOINT_URL=ep, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_REGION="us-east-1")
        boto3.client("s3").create_bucket(Bucket="bench")
        o = S3Store("bench", endpoint=ep, client_options={"allow_http": True})
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": ep})
        data = os.urandom(OBJECT_BYTES)
        for i in range(N_OBJECTS):
            obs.put(o, f"o/{i}", data)
        rnd = random.Random(0)
        reqs = [(f"o/{rnd.randrange(N_OBJECTS)}", rnd.randrange(OBJECT_BYTES - 4096)) for _ in range(N_GETS)]

        def timed(label, n, fn):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            print(f"{label:52s} {dt / n * 1e3:7.2f} ms/request")

        with ThreadPoolExecutor(THREADS) as pool:
            timed(f"obstore ranged GET 4 KiB, {THREADS} threads", N_GETS,
                  lambda: list(pool.map(lambda r: obs.get_range(o, r[0], start=r[1], length=4096), reqs)))
            timed(f"s3fs    ranged GET 4 KiB, {THREADS} threads", N_GETS,
                  lambda: list(pool.map(lambda r: fs.cat_file(f"bench/{r[0]}", start=r[1], end=r[1] + 4096), reqs)))
        timed("obstore ranged GET 4 KiB, 1 thread", N_GETS, lambda: [obs.get_range(o, p, start=s, length=4096) for p, s in reqs])
        timed("s3fs    ranged GET 4 KiB, 1 thread", N_GETS, lambda: [fs.cat_file(f"bench/{p}", start=s, end=s + 4096) for p, s in reqs])
        timed("s3fs    cat_ranges 4 KiB (one async batch)", N_GETS,
              lambda: fs.cat_ranges([f"bench/{p}" for p, _ in reqs], [s for _, s in reqs], [s + 4096 for _, s in reqs]))
        timed("obstore PUT If-None-Match: *", N_PUTS, lambda: [obs.put(o, f"c/{i}", b"x" * 1000, mode="create") for i in range(N_PUTS)])
        timed("s3fs    PUT If-None-Match: * (pipe_file mode=create)", N_PUTS,
              lambda: [fs.pipe_file(f"bench/d/{i}", b"x" * 1000, mode="create") for i in range(N_PUTS)])

        def cas():
            etag = obs.put(o, "k", b"0")["e_tag"]
            for i in range(N_PUTS):
                etag = obs.put(o, "k", b"%d" % i, mode={"e_tag": etag})["e_tag"]

        timed("obstore PUT If-Match: ETag (compare-and-swap)", N_PUTS, cas)
        print("s3fs    PUT If-Match: not in its API (botocore's put_object(IfMatch=) underneath)")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
