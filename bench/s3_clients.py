"""Which S3 library the blob store uses: obstore against boto3, on a private SeaweedFS (tests/s3_server.py).

  python bench/s3_clients.py --rounds 200 --large-mb 48

Per library: the median and p99 latency of a small put and get (64 KB, about a 512x512 upload), and the MB/s of one
large get (a 4096x4096 PNG is tens of MB), on one thread, against the same server; the libraries alternate round by
round so that the shared machine's load falls on both alike. Also the CPU time per small put, which is what an API
process pays on its own cores.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.s3_server import SeaweedS3  # noqa: E402


def clients(server: SeaweedS3, bucket: str):
    import boto3
    from botocore.config import Config
    from obstore.store import S3Store
    import obstore

    env = server.env(bucket)
    b3 = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_REGION"],
                      config=Config(max_pool_connections=16))
    b3.create_bucket(Bucket=bucket)
    ob = S3Store(bucket, endpoint=server.endpoint, access_key_id=env["AWS_ACCESS_KEY_ID"],
                 secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region=env["AWS_REGION"],
                 client_options={"allow_http": True})
    return {
        "boto3": (lambda k, d: b3.put_object(Bucket=bucket, Key=k, Body=d),
                  lambda k: b3.get_object(Bucket=bucket, Key=k)["Body"].read()),
        "obstore": (lambda k, d: obstore.put(ob, k, d),
                    lambda k: obstore.get(ob, k).bytes()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--small-kb", type=int, default=64)
    parser.add_argument("--large-mb", type=int, default=48)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = SeaweedS3(Path(tmp)).start()
        try:
            libs = clients(server, "bench-clients")
            small, large = os.urandom(args.small_kb * 1024), os.urandom(args.large_mb * 1024 * 1024)
            times = {name: {"put": [], "get": [], "cpu_put": []} for name in libs}
            for name, (put, get) in libs.items():  # warm: connections, signing keys
                put("warm", small), get("warm"), put(f"large-{name}", large)
            for i in range(args.rounds):
                for name, (put, get) in libs.items():
                    cpu, t0 = time.process_time(), time.perf_counter()
                    put(f"small-{name}-{i}", small)
                    t1 = time.perf_counter()
                    times[name]["cpu_put"].append(time.process_time() - cpu)
                    get(f"small-{name}-{i}")
                    times[name]["put"].append(t1 - t0)
                    times[name]["get"].append(time.perf_counter() - t1)
            for name, (put, get) in libs.items():
                rates = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    data = get(f"large-{name}")
                    rates.append(len(data) / (time.perf_counter() - t0) / 1e6)
                got = times[name]
                q = lambda xs: (statistics.median(xs) * 1000, statistics.quantiles(xs, n=100)[98] * 1000)
                print(f"{name:8s} put {args.small_kb} KB p50 {q(got['put'])[0]:.2f} ms p99 {q(got['put'])[1]:.2f} ms | "
                      f"get p50 {q(got['get'])[0]:.2f} ms p99 {q(got['get'])[1]:.2f} ms | "
                      f"CPU per put {statistics.mean(got['cpu_put']) * 1000:.2f} ms | "
                      f"{args.large_mb} MB get {statistics.median(rates):.0f} MB/s (median of 3)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
