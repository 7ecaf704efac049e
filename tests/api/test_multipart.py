"""api/multipart.py gives the parts, and the errors, Starlette's request.form() gives (the parser the API used
before), over a corpus of bodies: what clients send, hostile shapes, and seeded random mutations of both; except that
a body without its closing boundary, of which Starlette keeps the parts that ended, is refused."""
from __future__ import annotations

import asyncio
import random

import httpx
import pytest
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from python_multipart.multipart import MultipartParser, MultipartState

from api.multipart import UNTERMINATED, FileTooLarge, MultipartError, plain_parts, read_form

B = b"b0undary-7f3a"
LIMITS = {"max_files": 1, "max_fields": 16}
FIELD_BYTES = 64 * 1024


def part(name: bytes, data: bytes, *, filename: bytes | None = None, extra: bytes = b"") -> bytes:
    disposition = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    return disposition + b"\r\n" + extra + b"\r\n" + data


def body(*parts: bytes, boundary: bytes = B, end: bytes = b"--\r\n") -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary + end


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4 + b"\r\n--b0undary-7f3" + b"\r\n-" + b"\r\n"  # near-boundaries
IMAGE = part(b"image", PNG, filename=b"in.png", extra=b"Content-Type: image/png\r\n")


def client_bodies() -> list[tuple[str, bytes]]:
    """Bodies as httpx encodes them (what the README's curl and the Python clients send)."""
    bodies = []
    for fields in ({"method": "bicubic", "scale": "2"}, {}, {"preset": "fast", "seed": "7", "webhook_url": "https://x/y"},
                   {"scale": "2", "note": "é ü 中文"}, {"empty": ""}):
        request = httpx.Request("POST", "http://x/", data=fields, files={"image": ("in.png", PNG, "image/png")})
        bodies.append((request.headers["content-type"], request.read()))
    return bodies


PLAIN = [
    body(IMAGE),
    body(part(b"method", b"bicubic"), part(b"scale", b"2"), IMAGE),
    body(IMAGE, part(b"scale", b"2"), end=b"--"),
    body(part(b"scale", b""), IMAGE),
    body(part(b"name", b"caf\xc3\xa9"), IMAGE),  # UTF-8
    body(part(b"name", b"caf\xe9"), IMAGE),  # not UTF-8: latin-1, as Starlette decodes it
    body(part(b"image", b"not a file")),  # a text part called image
    body(IMAGE, part(b"image", b"a later text part")),
    body(part(b"a", b"1", extra=b"X-Other:   spaced   \r\ncontent-disposition: form-data; name=\"b\"\r\n")),
    body(part(b"a", b"1", extra=b"Content-Type:text/plain\r\n")),  # no space after the colon
    body(part(b"\xc3\xa9", b"1"), IMAGE),  # a UTF-8 field name
    body(part(b"x", b"\t tab and trailing   "), IMAGE),
    body(part(b"big", b"v" * FIELD_BYTES), IMAGE),  # a field at its limit
]

OVER_LIMITS = [  # plain in shape, refused by the limits or for a missing name
    body(IMAGE, IMAGE),  # two files
    body(*[part(b"f%d" % i, b"1") for i in range(17)]),  # 17 fields
    body(part(b"big", b"v" * (FIELD_BYTES + 1))),  # a field over its limit
    body(b'Content-Disposition: form-data; filename="a.png"\r\n\r\nx'),  # no name
    body(b"Content-Type: text/plain\r\n\r\nx"),  # no Content-Disposition at all
]

MALFORMED = [  # not the plain shape: python-multipart's path
    body(b"\r\nno headers"),
    body(part(b"a", b"1", extra=b"Bad Header: x\r\n")),  # a space in a header name
    body(part(b"a", b"1", extra=b": empty name\r\n")),
    body(part(b"a", b"1", extra=b"NoColon\r\n")),
    body(part(b"a", b"1", extra=b"".join(b"X-%d: v\r\n" % i for i in range(8)))),  # 9 headers
    body(part(b"a", b"1", extra=b"X-Long: " + b"v" * 5000 + b"\r\n")),
    body(part(b"a", b"1", extra=b"X-Cr: a\rb\r\n")),
    body(part(b"a", b"1", extra=b"X-Lf: a\nb\r\n")),
    b"preamble\r\n" + body(IMAGE),
    b"\r\n\r\n" + body(IMAGE),  # leading newlines (python-multipart skips them)
    body(IMAGE, end=b"--\r\nepilogue"),
    body(IMAGE, end=b""),  # no closing boundary
    body(IMAGE)[:-30],  # cut short
    body(IMAGE).replace(b"\r\n", b"\n"),  # LF line endings
    body(IMAGE).replace(b"--" + B + b"\r\n", b"--" + B + b"  \r\n", 1),  # padding after a boundary
    b"--" + B + b"--\r\n",  # no parts
    b"",
    b"--nope\r\n\r\n",
    b"\x00" * 300,
    body(part(b"a", b"x\r\n--" + B + b"x\r\n")),  # the delimiter followed by neither CRLF nor --
]


def mutants(count: int, seed: int = 7) -> list[bytes]:
    """Random edits of the plain bodies near their structure: bytes dropped, doubled, swapped for CR, LF, '-', ':'."""
    rng = random.Random(seed)
    sources = [b for b in PLAIN if len(b) < 5000]
    found = []
    for _ in range(count):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 3)):
            anchors = [i for i in range(len(data)) if data[i] in b"\r\n-:;\"="] or [0]
            at = min(len(data) - 1, max(0, rng.choice(anchors) + rng.randint(-2, 2)))
            edit = rng.randrange(3)
            if edit == 0:
                del data[at]
            elif edit == 1:
                data[at:at] = data[at:at + 1]
            else:
                data[at] = rng.choice(b"\r\n-:;\" x")
        found.append(bytes(data))
    return found


def request_for(data: bytes, content_type: str) -> Request:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}

    headers = [(b"content-type", content_type.encode("latin-1")), (b"content-length", str(len(data)).encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}, receive)


def starlettes(data: bytes, content_type: str) -> tuple:
    async def parse() -> tuple:
        try:
            async with request_for(data, content_type).form(**LIMITS, max_part_size=FIELD_BYTES) as form:
                items = [(k, await v.read() if isinstance(v, UploadFile) else v) for k, v in form.multi_items()]
                return ("ok", items, form.get("image") if not isinstance(form.get("image"), UploadFile) else "file")
        except MultiPartException as exc:
            return ("error", exc.message)

    return asyncio.run(parse())


def ours(data: bytes, content_type: str, small_body_bytes: int) -> tuple:
    async def parse() -> tuple:
        try:
            form = await read_form(request_for(data, content_type), **LIMITS, max_field_bytes=FIELD_BYTES,
                                   max_file_bytes=10 ** 9, small_body_bytes=small_body_bytes)
        except MultipartError as exc:
            return ("error", str(exc))
        image = form.get("image")
        return ("ok", form.parts, "file" if isinstance(image, bytes) else image)

    return asyncio.run(parse())


CONTENT_TYPE = "multipart/form-data; boundary=" + B.decode()
CORPUS = ([(f"client {i}", ct, b) for i, (ct, b) in enumerate(client_bodies())]
          + [(f"plain {i}", CONTENT_TYPE, b) for i, b in enumerate(PLAIN)]
          + [(f"over a limit {i}", CONTENT_TYPE, b) for i, b in enumerate(OVER_LIMITS)]
          + [(f"malformed {i}", CONTENT_TYPE, b) for i, b in enumerate(MALFORMED)]
          + [(f"mutant {i}", CONTENT_TYPE, b) for i, b in enumerate(mutants(300))]
          + [("latin-1 charset", CONTENT_TYPE + "; charset=latin-1", PLAIN[4]),
             ("unknown charset", CONTENT_TYPE + "; charset=x-nonesuch", PLAIN[4]),
             ("quoted boundary", f'multipart/form-data; boundary="{B.decode()}"', PLAIN[1])])


def expected(data: bytes, content_type: str) -> tuple:
    """Starlette's answer, or the refusal of a body that python-multipart never saw close."""
    answer = starlettes(data, content_type)
    if answer[0] == "ok":
        parser = MultipartParser(content_type.partition("boundary=")[2].strip('"').partition(";")[0], {})
        parser.write(data)
        if parser.state != MultipartState.END:
            return ("error", UNTERMINATED)
    return answer


@pytest.mark.parametrize("small_body_bytes", [64 * 1024, 0], ids=["whole body", "streamed"])
def test_every_body_gives_starlettes_parts_or_its_error(small_body_bytes):
    differing = [name for name, content_type, data in CORPUS
                 if ours(data, content_type, small_body_bytes) != expected(data, content_type)]
    assert not differing


@pytest.mark.parametrize("data", [body(IMAGE, end=b""), body(IMAGE)[:-30], body(IMAGE)[:-3], b""],
                         ids=["no closing boundary", "cut inside the image", "cut inside the boundary", "empty"])
def test_a_body_without_its_closing_boundary_is_refused_where_starlette_kept_what_ended(data):
    assert starlettes(data, CONTENT_TYPE)[0] == "ok"
    assert ours(data, CONTENT_TYPE, 64 * 1024) == ("error", UNTERMINATED)


def test_the_plain_shape_is_split_directly_and_anything_else_is_left_to_python_multipart():
    for content_type, data in client_bodies():
        assert plain_parts(data, content_type.partition("boundary=")[2].encode()) is not None
    assert all(plain_parts(data, B) is not None for data in PLAIN + OVER_LIMITS)
    assert all(plain_parts(data, B) is None for data in MALFORMED)
    mutated = mutants(300)
    assert 0 < sum(plain_parts(data, B) is None for data in mutated) < len(mutated)  # both paths see mutants


def test_a_file_over_its_limit_is_refused_while_the_body_is_read():
    async def parse() -> None:
        await read_form(request_for(PLAIN[0], CONTENT_TYPE), **LIMITS, max_field_bytes=FIELD_BYTES,
                        max_file_bytes=len(PNG) - 1)

    with pytest.raises(FileTooLarge):
        asyncio.run(parse())


def test_the_missing_boundary_is_starlettes_error():
    assert ours(b"--x\r\n", "multipart/form-data", 1024) == starlettes(b"--x\r\n", "multipart/form-data")
