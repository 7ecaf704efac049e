"""Python client for the ZSSR upscaler job API (httpx only).

    from zssr_client import Client
    with Client("http://127.0.0.1:8000", api_key=None) as client:
        data = client.upscale("photo.jpg", scale=2, preset="fast")
"""
from zssr_client._clients import AsyncClient, Client, __version__
from zssr_client.errors import ApiConnectionError, ApiError, ClientError, JobFailed, WaitTimeout
from zssr_client.webhooks import verify_webhook

__all__ = ["AsyncClient", "Client", "ApiError", "ApiConnectionError", "ClientError", "JobFailed", "WaitTimeout",
           "verify_webhook", "__version__"]
