"""The client's pure parts: the event-stream parser, Retry-After, the retry decision, what submit sends."""
from __future__ import annotations

import email.utils
import io
import time

import httpx
from PIL import Image

from zssr_client._plans import EventParser, Options, image_part, retry_after_seconds, retry_delay, submit_request


def test_event_parser_follows_the_server_sent_events_rules():
    parser = EventParser()
    lines = ["retry: 1000", "event: status", "id: queued-0-ab", "data: {\"a\":", "data: 1}", "", ": ping", "",
             "data:no space", ""]
    events = [event for event in map(parser.feed, lines) if event]
    assert events == [("status", '{"a":\n1}'), ("message", "no space")]
    assert parser.last_id == "queued-0-ab"


def test_retry_after_takes_seconds_or_an_http_date():
    assert retry_after_seconds("5") == 5.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after_seconds(later) <= 30
    assert retry_after_seconds(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0


def answer(status: int, code: str = "x", retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    return httpx.Response(status, json={"error": {"code": code, "message": "m"}}, headers=headers)


def test_what_is_retried_and_after_how_long():
    options = Options(max_retries=3, backoff_seconds=1, backoff_max_seconds=3, max_retry_after_seconds=60)
    assert retry_delay(answer(429, retry_after="7"), 0, options) == 7
    assert retry_delay(answer(503), 2, options) == 3  # no Retry-After: the capped backoff (1, 2, 4 -> 3)
    assert retry_delay(answer(503, retry_after="7"), 3, options) is None  # the retries are spent
    assert retry_delay(answer(429, retry_after="61"), 0, options) is None  # longer than the client waits
    assert retry_delay(answer(409, "idempotency_key_in_use", "1"), 0, options) == 1
    for status, code in ((409, "job_finished"), (422, "invalid_parameters"), (500, "internal_error"), (404, "x")):
        assert retry_delay(answer(status, code), 0, options) is None
    lost = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    assert 0.5 <= retry_delay(lost, 0, options) <= 1 and 1 <= retry_delay(lost, 1, options) <= 2


def test_submit_sends_multipart_or_json_with_a_fresh_idempotency_key_each_call():
    first = submit_request(b"png", None, {"scale": 2.5, "preset": None, "crop": (1, 2, 30, 40)})
    second = submit_request(b"png", None, {})
    assert first.files == {"image": ("image", b"png", "application/octet-stream")}
    assert first.data == {"scale": "2.5", "crop": "1,2,30,40"}  # None = the API's default: not sent
    by_url = submit_request(None, "https://example.com/a.png", {"seed": 3})
    assert by_url.json == {"image_url": "https://example.com/a.png", "seed": 3} and by_url.files is None
    keys = {send.headers["Idempotency-Key"] for send in (first, second, by_url)}
    assert len(keys) == 3


def test_image_part_saves_a_pil_image_as_png_losslessly():
    image = Image.new("I;16", (5, 4), 40000)
    name, data, content_type = image_part(image)
    back = Image.open(io.BytesIO(data))
    assert (name, content_type, back.format, back.size, back.getpixel((0, 0))) == \
        ("image.png", "image/png", "PNG", (5, 4), 40000)
