"""Webhooks (Standard Webhooks v1, docs/http-api.md "Webhooks"): signing, the target guard, one delivery attempt.

Retries are scheduled by the Celery task (`worker.tasks.deliver_webhook`) so no worker thread sleeps
through a backoff. The target guard resolves the host, refuses loopback, private, link-local, metadata
and other non-global addresses (unless allowed), and then connects to the address it checked, so a DNS
answer that changes between the check and the request cannot redirect the delivery.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

EVENTS = ("job.started", "job.succeeded", "job.failed", "job.canceled")
TERMINAL_EVENT = {"succeeded": "job.succeeded", "failed": "job.failed", "canceled": "job.canceled"}
USER_AGENT = "zssr-upscaler-webhooks/1"
# Metadata services that some clouds serve on addresses Python does not count as non-global.
METADATA_ADDRESSES = {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}


class TargetRefused(ValueError):
    """The webhook URL is not one we send to; the message says why (and contains no secret)."""


def webhook_id(job_id: str, event_type: str) -> str:
    """Stable per job and event: every retry, and every re-run of the job, sends the same id."""
    return "msg_" + hashlib.sha256(f"{job_id}:{event_type}".encode()).hexdigest()[:32]


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(key: bytes, headers: dict[str, str], body: bytes, *, tolerance_seconds: int = 300) -> bool:
    """What a receiver does (used by the tests and shown in the README)."""
    message_id, timestamp = headers["webhook-id"], int(headers["webhook-timestamp"])
    if abs(time.time() - timestamp) > tolerance_seconds:
        return False
    expected = sign(key, message_id, timestamp, body).encode()
    return any(hmac.compare_digest(expected, candidate.encode())
               for candidate in headers["webhook-signature"].split(" "))


def event_body(event_type: str, job: dict[str, Any]) -> str:
    return json.dumps({"type": event_type, "timestamp": job.get("finished_at") or job.get("started_at")
                       or job.get("created_at"), "data": job}, separators=(",", ":"))


def check_url_syntax(url: str, field: str = "webhook_url") -> None:
    """What can be checked without DNS: scheme, host, no credentials in the URL. `field` names the URL in errors
    (the image_url fetch shares these rules)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"{field} must be an http or https URL")
    if not parts.hostname:
        raise TargetRefused(f"{field} has no host")
    if parts.username or parts.password:
        raise TargetRefused(f"{field} must not contain credentials")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise TargetRefused(f"{field} has an invalid port") from None


# IPv6 prefixes whose addresses carry an IPv4 address in their last 32 bits: a connection to one reaches that IPv4
# address (the host's own stack for IPv4-mapped, a NAT64 gateway or an SIIT translator for the others), so it is
# judged by the IPv4 address. Python's is_global counts most of them as global.
_LAST_32_BITS = (
    ipaddress.ip_network("::ffff:0:0/96"),  # IPv4-mapped (RFC 4291)
    ipaddress.ip_network("::/96"),  # IPv4-compatible (deprecated, RFC 4291)
    ipaddress.ip_network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT, RFC 2765)
    ipaddress.ip_network("64:ff9b::/96"),  # NAT64's well-known prefix (RFC 6052)
)
# NAT64's local-use prefix (RFC 8215): the operator picks where in it the IPv4 address sits, so none of it is sent to.
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: the last 32 bits of the prefixes above, 6to4's (2002::/16,
    bits 16-47), Teredo's server (bits 32-63) and client (the last 32 bits, inverted) for 2001::/32."""
    if any(address in network for network in _LAST_32_BITS):
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    return []


def is_refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether no request may be sent to `address` (a webhook delivery, a fetch): loopback, private, link-local,
    multicast, reserved, a cloud metadata address, or an IPv6 address that carries such an IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return True
        if address.ipv4_mapped is not None:  # the host's own IPv4 stack: that address alone decides
            return is_refused_address(address.ipv4_mapped)
        if any(is_refused_address(ipv4) for ipv4 in embedded_ipv4(address)):
            return True
    return (not address.is_global) or address.is_multicast or address in METADATA_ADDRESSES


def resolve_target(url: str, *, allow_private: bool, field: str = "webhook_url") -> str:
    """Check `url` and return the IP address to connect to (raises TargetRefused)."""
    check_url_syntax(url, field)
    noun = field.removesuffix("_url")
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise TargetRefused(f"{noun} host {host!r} does not resolve") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not allow_private:
        refused = [a for a in addresses if is_refused_address(a)]
        if refused:  # refuse if any answer is internal: the client could be steered to it
            raise TargetRefused(f"{noun} host {host!r} resolves to a non-public address ({refused[0]}); "
                                "set UPSCALER_WEBHOOK_ALLOW_PRIVATE=true to allow it")
    return str(addresses[0])


def pinned_url(url: str, address: str) -> str:
    """`url` with its host replaced by the checked address (the Host header and SNI keep the name)."""
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


@dataclass(frozen=True)
class Attempt:
    status: int | None  # the HTTP status, None when no answer came
    error: str | None  # why it failed, for the job's delivery record
    delivered: bool
    retryable: bool  # a refused target is not retried; a 500 or a timeout is


def deliver(url: str, *, message_id: str, body: str, key: bytes, allow_private: bool,
            timeout: float) -> Attempt:
    """One delivery attempt: sign, connect to the checked address, never follow a redirect."""
    try:
        address = resolve_target(url, allow_private=allow_private)
    except TargetRefused as exc:
        return Attempt(None, str(exc), False, retryable="does not resolve" in str(exc))
    timestamp = int(time.time())
    payload = body.encode()
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "host": urlsplit(url).netloc.rpartition("@")[2],
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, message_id, timestamp, payload),
    }
    hostname = urlsplit(url).hostname
    try:
        with httpx.Client(follow_redirects=False, trust_env=False, timeout=timeout) as client:
            response = client.post(pinned_url(url, address), content=payload, headers=headers,
                                   extensions={"sni_hostname": hostname})
    except httpx.TimeoutException:
        return Attempt(None, "timed out", False, True)
    except httpx.HTTPError as exc:
        return Attempt(None, f"{type(exc).__name__}: could not connect or send", False, True)
    if 200 <= response.status_code < 300:
        return Attempt(response.status_code, None, True, False)
    if 300 <= response.status_code < 400:
        return Attempt(response.status_code, "redirect not followed", False, True)
    return Attempt(response.status_code, f"receiver answered {response.status_code}", False, True)


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Delay before attempt `attempt + 1` (attempt counts from 1): base, 2*base, 4*base, ... capped."""
    return min(cap, base * (2 ** (attempt - 1)))
