"""`image_url` submissions: the API fetches the image itself, under the webhook targets' rules.

Each hop's host is resolved and checked (public addresses only unless UPSCALER_WEBHOOK_ALLOW_PRIVATE=true;
link-local and cloud metadata addresses never), then the request goes to the address that was checked, so a DNS
answer that changes in between cannot steer it. Redirects are followed by hand, each target checked the same way.
The upload limit is enforced while the body streams in, and the whole fetch has one deadline. What comes back
then gets exactly the checks an upload gets.
"""
from __future__ import annotations

import ipaddress
from urllib.parse import urljoin, urlsplit

import anyio
import httpx

from api.errors import ApiError
from jobs.settings import Settings
from jobs.webhooks import METADATA_ADDRESSES, TargetRefused, embedded_ipv4, pinned_url, resolve_target

FIELD = "image_url"
MAX_REDIRECTS = 3
USER_AGENT = "zssr-upscaler-fetch/1"


async def fetch_image(url: str, settings: Settings) -> bytes:
    """The bytes at `url`: 422 image_url_refused / image_url_unreachable, 413 over the upload limit."""
    try:
        with anyio.fail_after(settings.image_url_timeout_seconds):
            return await _follow(url, settings)
    except TimeoutError:
        raise unreachable(f"fetching it took longer than {settings.image_url_timeout_seconds:g} s") from None


async def _follow(url: str, settings: Settings) -> bytes:
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=None) as client:
        for _ in range(MAX_REDIRECTS + 1):
            address = await checked_address(url, settings)
            headers = {"host": urlsplit(url).netloc.rpartition("@")[2], "user-agent": USER_AGENT, "accept": "image/*"}
            try:
                async with client.stream("GET", pinned_url(url, address), headers=headers,
                                         extensions={"sni_hostname": urlsplit(url).hostname}) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if not response.is_success:
                        raise unreachable(f"the server answered {response.status_code}")
                    return await _read_limited(response, settings.max_upload_bytes)
            except httpx.HTTPError as exc:
                raise unreachable(f"could not connect or read ({type(exc).__name__})") from None
    raise unreachable(f"more than {MAX_REDIRECTS} redirects")


async def checked_address(url: str, settings: Settings) -> str:
    """The address to connect to for `url`, or 422 image_url_refused."""
    try:
        address = await anyio.to_thread.run_sync(
            lambda: resolve_target(url, allow_private=settings.webhook_allow_private, field=FIELD))
    except TargetRefused as exc:
        if "does not resolve" in str(exc):
            raise unreachable(str(exc)) from None
        raise ApiError(422, "image_url_refused", str(exc)) from None
    if _never_fetched(ipaddress.ip_address(address)):
        raise ApiError(422, "image_url_refused", f"image_url points at {address}, a link-local or metadata address, "
                                                 "which is never fetched")
    return address


def _never_fetched(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Link-local (169.254.169.254 serves cloud credentials) and metadata addresses are refused even where private
    targets are allowed: no image host lives there."""
    if isinstance(address, ipaddress.IPv6Address) and any(_never_fetched(ipv4) for ipv4 in embedded_ipv4(address)):
        return True
    return address.is_link_local or address in METADATA_ADDRESSES


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


def unreachable(reason: str) -> ApiError:
    return ApiError(422, "image_url_unreachable", f"image_url could not be fetched: {reason}")


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the image at image_url exceeds {limit} bytes")
