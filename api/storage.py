"""The API's side of the blob store (jobs/blobs.py): a submission's input stored before its job is recorded, and a
result streamed from the store (or a redirect to it). Without a blob store, images stay in Redis (jobs/store.py).
"""
from __future__ import annotations

import base64
import json

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from api.errors import STORE_RETRY_AFTER_SECONDS, ApiError
from api.schemas import ResultBase64
from jobs.blobs import BlobStore, StorageUnavailable, input_key
from jobs.settings import Settings
from jobs.store import AsyncJobStore


def blob_store(request: Request) -> BlobStore | None:
    return request.app.state.blobs


def storage_unavailable() -> ApiError:
    return ApiError(503, "storage_unavailable", "the image store is unavailable; retry shortly",
                    {"Retry-After": str(STORE_RETRY_AFTER_SECONDS)})


async def store_input(blobs: BlobStore, store: AsyncJobStore, job_id: str, image: bytes) -> str:
    """Put a submission's input before its job is recorded (the create script records it); its key. Its intent is
    noted first, so that an API process that dies mid-put leaves nothing the sweeper does not delete."""
    key = input_key(job_id)
    await store.note_pending(key)
    try:
        await blobs.aput(key, image)
    except StorageUnavailable:
        await store.give_up_put(key)
        raise storage_unavailable() from None
    return key


async def result_response(fields: dict[str, str], store: AsyncJobStore, blobs: BlobStore | None,
                          settings: Settings, encoding: str | None) -> Response:
    """The succeeded job's result: the image, `?encoding=base64` JSON, or (S3 with UPSCALER_RESULT_REDIRECT) a 307 to
    a presigned URL. 410 when it expired meanwhile."""
    job_id, content_type = fields["id"], _content_type(fields)
    extension = content_type.rpartition("/")[2]
    headers = {"Content-Disposition": f'inline; filename="{job_id}.{extension}"'}
    stored = fields.get("result_key")
    try:
        if not stored:
            data = await store.result(job_id)
        elif encoding == "base64":
            data = await blobs.aget(stored)
        elif settings.result_redirect and blobs.presigns:
            url = await blobs.apresign(stored, settings.result_url_seconds)
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
        else:
            blob = await blobs.aopen(stored)
            if blob is None:
                raise _expired()
            return StreamingResponse(blob.chunks, media_type=content_type,
                                     headers={**headers, "Content-Length": str(blob.size)})
    except StorageUnavailable:
        raise storage_unavailable() from None
    if data is None:
        raise _expired()
    if encoding == "base64":
        return JSONResponse(jsonable_encoder(ResultBase64(image_base64=base64.b64encode(data).decode(),
                                                          content_type=content_type)))
    return Response(data, media_type=content_type, headers=headers)


def _content_type(fields: dict[str, str]) -> str:
    return json.loads(fields["output"])["content_type"]


def _expired() -> ApiError:
    return ApiError(410, "job_expired", "the result expired")
