"""Where a job's images live (docs/http-api.md, where images live): `UPSCALER_STORAGE_URL` picks one of three stores.

- unset: Redis, beside the records (the zero-setup default of `--dev`). There is no blob store object then
  (`open_blob_store` answers None): the store's scripts carry the bytes themselves, so an input is stored in the
  very step that records its job, and a result in the step that marks it succeeded.
- `file:///a/dir`: a directory (one host, or a volume every API and worker process mounts).
- `s3://bucket/prefix`: any S3-compatible store, through obstore (a Rust client: against SeaweedFS it put and got
  a 64 KB object in half the time of boto3, at a fifth of the CPU; figures in bench/RESULTS.md, `bench/s3_clients.py`).

With a blob store, Redis keeps the object's key in the job record, never its bytes. Each object has a key of its own
per job and per run (`input_key`, `result_key`, `checkpoint_key` below), and the job store tracks every object it
may ever have to delete in two sorted sets, so that none is orphaned by a crash at any point (jobs/store.py):
`blobs:pending` (an intent, added before the put; the script that records the object removes it; the sweeper
deletes those left older than a grace) and `blobs:trash` (each recorded object, due at its record's expiry, or at
once when its job ended or its run was fenced; the sweeper deletes them when due).

The interface is blocking, for the workers; the API awaits the `a*` methods, which never block its event loop
(obstore's own async calls for S3, a thread for a directory).
"""
from __future__ import annotations

import abc
import datetime
import functools
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio

log = logging.getLogger(__name__)
CHUNK_BYTES = 1024 * 1024  # of a streamed result


class StorageUnavailable(Exception):
    """The blob store did not answer (or answered an error): the caller retries later or answers 503."""


def input_key(job_id: str) -> str:
    return f"jobs/{job_id}/input"


def result_key(job_id: str, token: str) -> str:
    """A run's result: a key of its own, so a fenced run's object is never the one served."""
    return f"jobs/{job_id}/result/{token}"


def checkpoint_key(job_id: str, token: str) -> str:
    return f"jobs/{job_id}/checkpoint/{token}"


@dataclass
class Blob:
    """An object being read: its size and its bytes, chunk by chunk."""
    size: int
    chunks: AsyncIterator[bytes]


class BlobStore(abc.ABC):
    presigns = False  # whether `presign` gives a URL a client can fetch the object from

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The object's bytes; None when there is no such object."""

    @abc.abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete the objects (an absent one is not an error)."""

    @abc.abstractmethod
    def keys(self) -> list[str]:
        """Every stored key (an audit: the tests compare them with what the records name)."""

    def ensure_ready(self) -> None:
        """Create the directory or bucket if it is missing and we may."""

    def presign(self, key: str, seconds: int) -> str:
        raise NotImplementedError

    async def aput(self, key: str, data: bytes) -> None:
        await anyio.to_thread.run_sync(self.put, key, data)

    async def aget(self, key: str) -> bytes | None:
        return await anyio.to_thread.run_sync(self.get, key)

    @abc.abstractmethod
    async def aopen(self, key: str) -> Blob | None:
        """The object as a stream of chunks; None when there is no such object."""

    async def apresign(self, key: str, seconds: int) -> str:
        return await anyio.to_thread.run_sync(self.presign, key, seconds)


class DirectoryBlobs(BlobStore):
    """Objects as files under one directory: written to a temporary name, synced, then renamed, so a reader never
    sees half a file; a put that dies half-way leaves a temporary file beside it, deleted with the key's pending
    intent."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def ensure_ready(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create {self.root}: {exc.strerror}") from None

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {key}: {exc.strerror}") from None

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {key}: {exc.strerror}") from None

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            try:
                path.unlink(missing_ok=True)
                for temporary in path.parent.glob(f".{path.name}.tmp-*"):  # a put that died half-way
                    temporary.unlink(missing_ok=True)
            except OSError as exc:
                raise StorageUnavailable(f"cannot delete {key}: {exc.strerror}") from None
            for folder in (path.parent, path.parent.parent):  # the run's and the job's folders, once empty
                if folder == self.root or self.root not in folder.parents:
                    break
                try:
                    folder.rmdir()
                except OSError:
                    break

    def keys(self) -> list[str]:
        return sorted(path.relative_to(self.root).as_posix() for path in self.root.rglob("*")
                      if path.is_file() and not path.name.startswith("."))

    async def aopen(self, key: str) -> Blob | None:
        try:
            file = await anyio.open_file(self._path(key), "rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {key}: {exc.strerror}") from None
        size = os.fstat(file.wrapped.fileno()).st_size  # a system call on an open file: no disk wait

        async def chunks() -> AsyncIterator[bytes]:
            async with file:
                while chunk := await file.read(CHUNK_BYTES):
                    yield chunk

        return Blob(size, chunks())


class S3Blobs(BlobStore):
    """Objects in one bucket, under an optional prefix, through obstore."""

    presigns = True

    def __init__(self, bucket: str, prefix: str, *, endpoint: str | None, timeout_seconds: float = 30):
        from obstore.store import S3Store  # noqa: PLC0415 - only with s3:// storage

        self.bucket, self.prefix = bucket, prefix.strip("/")
        options = {"connect_timeout": "2s", "timeout": f"{int(timeout_seconds)}s"}
        if endpoint and endpoint.startswith("http://"):
            options["allow_http"] = True
        # Few retries inside a call: the API answers 503 at once, and the workers retry on their own schedule.
        retry = {"max_retries": 2, "backoff": {"init_backoff": datetime.timedelta(milliseconds=100),
                                               "max_backoff": datetime.timedelta(seconds=1), "base": 2},
                 "retry_timeout": datetime.timedelta(seconds=5)}
        extra = {"endpoint": endpoint} if endpoint else {}
        # Credentials and region from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (obstore reads them).
        self._connect = functools.partial(S3Store, bucket, client_options=options, retry_config=retry, **extra)
        self.store = self._connect(prefix=self.prefix or None)

    def _call(self, what: str, function, *args):
        try:
            return function(*args)
        except FileNotFoundError:
            raise
        except Exception as exc:  # obstore's errors: connection refused, timeouts, 5xx, refused credentials
            raise StorageUnavailable(f"{what}: {type(exc).__name__}") from exc

    def ensure_ready(self) -> None:
        """Create the bucket if it is missing: a signed PUT of the bucket itself (S3's CreateBucket)."""
        import httpx  # noqa: PLC0415
        import obstore  # noqa: PLC0415

        url = self._call("sign", obstore.sign, self._connect(), "PUT", "", datetime.timedelta(seconds=60))
        try:
            answer = httpx.put(url, timeout=10)
        except httpx.HTTPError as exc:
            raise StorageUnavailable(f"create bucket: {type(exc).__name__}") from None
        if answer.status_code not in (200, 409):  # 409: it exists (BucketAlreadyOwnedByYou / BucketAlreadyExists)
            log.warning("could not create bucket %s (HTTP %d); assuming it exists", self.bucket, answer.status_code)

    def put(self, key: str, data: bytes) -> None:
        import obstore  # noqa: PLC0415

        self._call("put", obstore.put, self.store, key, data)

    def get(self, key: str) -> bytes | None:
        import obstore  # noqa: PLC0415

        try:
            return bytes(self._call("get", lambda: obstore.get(self.store, key).bytes()))
        except FileNotFoundError:
            return None

    def delete(self, keys: list[str]) -> None:
        import obstore  # noqa: PLC0415

        if keys:
            self._call("delete", obstore.delete, self.store, keys)

    def keys(self) -> list[str]:
        import obstore  # noqa: PLC0415

        return sorted(meta["path"] for batch in self._call("list", obstore.list, self.store) for meta in batch)

    def presign(self, key: str, seconds: int) -> str:
        import obstore  # noqa: PLC0415

        return self._call("sign", obstore.sign, self.store, "GET", key, datetime.timedelta(seconds=seconds))

    async def aput(self, key: str, data: bytes) -> None:
        import obstore  # noqa: PLC0415

        try:
            await obstore.put_async(self.store, key, data)
        except Exception as exc:
            raise StorageUnavailable(f"put: {type(exc).__name__}") from exc

    async def aget(self, key: str) -> bytes | None:
        import obstore  # noqa: PLC0415

        try:
            return bytes(await (await obstore.get_async(self.store, key)).bytes_async())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StorageUnavailable(f"get: {type(exc).__name__}") from exc

    async def aopen(self, key: str) -> Blob | None:
        import obstore  # noqa: PLC0415

        try:
            found = await obstore.get_async(self.store, key)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StorageUnavailable(f"get: {type(exc).__name__}") from exc

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in found.stream(min_chunk_size=CHUNK_BYTES):
                yield bytes(chunk)

        return Blob(found.meta["size"], chunks())

    async def apresign(self, key: str, seconds: int) -> str:
        import obstore  # noqa: PLC0415

        try:
            return await obstore.sign_async(self.store, "GET", key, datetime.timedelta(seconds=seconds))
        except Exception as exc:
            raise StorageUnavailable(f"sign: {type(exc).__name__}") from exc


def open_blob_store(storage_url: str | None, *, s3_endpoint_url: str | None = None) -> BlobStore | None:
    """The store `UPSCALER_STORAGE_URL` names; None: images stay in Redis with their records."""
    if not storage_url:
        return None
    parts = urlsplit(storage_url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError("UPSCALER_STORAGE_URL: a file:// URL names a local path (file:///a/dir)")
        return DirectoryBlobs(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if len(parts.netloc) < 3:
            raise ValueError("UPSCALER_STORAGE_URL: s3://bucket/prefix needs a bucket name of 3 or more characters")
        return S3Blobs(parts.netloc, unquote(parts.path), endpoint=s3_endpoint_url or None)
    raise ValueError("UPSCALER_STORAGE_URL must be unset, file:///a/dir or s3://bucket/prefix")
