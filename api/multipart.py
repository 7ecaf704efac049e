"""A submission's multipart form, read with python-multipart's parser into memory.

Starlette's `request.form()` drives the same parser (python_multipart.MultipartParser) but wraps each part in its
own objects: a SpooledTemporaryFile and an UploadFile for a file, header lists, a FormData; and the parser walks a
part's headers in Python. A submission has at most one file, the image, which the API reads into memory anyway
(the job store keeps its bytes), and a few short fields. Here the parts are kept as bytes and strings, with
Starlette's limits and its decoding (the form's charset, else UTF-8; latin-1 for bytes that do not decode) and
the same 400s; a small body in the plain shape clients send is split at its boundaries with bytes operations
and fed to the same callbacks, anything else goes through python-multipart. A small submission's form costs well
under half the CPU it costs through Starlette (bench/RESULTS.md, the API's submit path). tests/api/test_multipart.py
holds both paths to Starlette's answers over a corpus of bodies.
"""
from __future__ import annotations

import codecs
import functools
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import TOKEN_CHARS, MultipartParser, MultipartState, parse_options_header
from starlette.requests import Request


class MultipartError(Exception):
    """A malformed or over-limit form: answered 400 with this message (Starlette's words)."""


class FileTooLarge(Exception):
    """The file part grew past `max_file_bytes`: the caller answers 413."""


@dataclass
class Form:
    """The parts in order: a text part's value is a str, a file part's (one with a filename) its bytes."""
    parts: list[tuple[str, str | bytes]] = field(default_factory=list)

    def get(self, name: str) -> str | bytes | None:
        """The value of the last part called `name` (as Starlette's FormData.get)."""
        return dict(self.parts).get(name)


class _Reader:
    """python-multipart's callbacks: one part at a time, its headers, then its bytes."""

    def __init__(self, charset: str, *, max_files: int, max_fields: int, max_field_bytes: int, max_file_bytes: int):
        self.charset = charset
        self.max_files, self.max_fields = max_files, max_fields
        self.max_field_bytes, self.max_file_bytes = max_field_bytes, max_file_bytes
        self.form = Form()
        self.files = self.fields = 0
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.name = ""
        self.is_file = False
        self.data = bytearray()

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished}

    def on_part_begin(self) -> None:
        self.disposition = b""
        self.data = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = options_of(self.disposition)
        if b"name" not in options:
            raise MultipartError('The Content-Disposition header field "name" must be provided.')
        self.name = decode(options[b"name"], self.charset)
        self.is_file = b"filename" in options
        # counted as each part's headers end, as Starlette counts them
        if self.is_file:
            self.files += 1
            if self.files > self.max_files:
                raise MultipartError(f"Too many files. Maximum number of files is {self.max_files}.")
        else:
            self.fields += 1
            if self.fields > self.max_fields:
                raise MultipartError(f"Too many fields. Maximum number of fields is {self.max_fields}.")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.is_file:
            if len(self.data) + end - start > self.max_file_bytes:
                raise FileTooLarge()
        elif len(self.data) + end - start > self.max_field_bytes:
            raise MultipartError(f"Part exceeded maximum size of {int(self.max_field_bytes / 1024)}KB.")
        self.data += data[start:end]

    def on_part_end(self) -> None:
        self.form.parts.append((self.name, bytes(self.data) if self.is_file else decode(self.data, self.charset)))


CACHED_HEADER_BYTES = 256


def options_of(header: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """parse_options_header; a short header's answer is remembered, since a client sends the same few (the
    form's Content-Type, each field's Content-Disposition) with every submission, a few parses each time.
    The answer is shared: read it, never change it."""
    return _cached_options(header) if len(header) <= CACHED_HEADER_BYTES else parse_options_header(header)


@functools.lru_cache(maxsize=512)
def _cached_options(header: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    return parse_options_header(header)


def decode(raw: bytes | bytearray, charset: str) -> str:
    try:
        return raw.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return raw.decode("latin-1")


async def read_form(request: Request, *, max_files: int, max_fields: int, max_field_bytes: int,
                    max_file_bytes: int, small_body_bytes: int = 64 * 1024) -> Form:
    """The request's multipart body as a Form; MultipartError (answer 400) if it is malformed (a body without its
    closing boundary too) or over a part limit, FileTooLarge (answer 413) if a file part exceeds `max_file_bytes`.

    A body of at most `small_body_bytes` (by its Content-Length) is read whole and, when it has the plain shape
    that clients send, split at its boundaries (`plain_parts`); anything else goes through python-multipart."""
    _, params = options_of(request.headers.get("content-type", "").encode("latin-1"))
    if b"boundary" not in params:
        raise MultipartError("Missing boundary in multipart.")
    boundary = params[b"boundary"]
    charset = params.get(b"charset", b"utf-8")
    try:
        charset = codecs.lookup(charset.decode("latin-1")).name
    except LookupError:
        charset = "latin-1"
    reader = _Reader(charset, max_files=max_files, max_fields=max_fields, max_field_bytes=max_field_bytes,
                     max_file_bytes=max_file_bytes)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) <= small_body_bytes:
        parts = plain_parts(await request.body(), boundary)
        if parts is not None:
            for headers, data in parts:
                _replay(reader, headers, data)
            return reader.form
    parser = MultipartParser(boundary, reader.callbacks())
    try:
        async for chunk in request.stream():  # a body already read comes back from Starlette's cache
            parser.write(chunk)
        parser.finalize()
    except FormParserError:
        raise MultipartError("Invalid multipart data.") from None
    if parser.state != MultipartState.END:
        # python-multipart (and Starlette) hand back the parts that ended, silently dropping one cut short; a
        # body that stops before its closing delimiter was cut off or is malformed either way
        raise MultipartError(UNTERMINATED)
    return reader.form


UNTERMINATED = "Invalid multipart data: the body ends before its closing boundary."


# python-multipart's limits on a part's headers (MultipartParser's defaults): a body near them takes its path.
MAX_HEADER_COUNT = 8
MAX_HEADER_LINE = 4000  # under its 4,224 bytes per header


def plain_parts(body: bytes, boundary: bytes) -> list[tuple[list[tuple[bytes, bytes]], bytes]] | None:
    """(headers, data) per part of a body in the plain shape, which python-multipart parses to the same parts:
    "--B" CRLF, then parts each of header lines ("Name: value", a token name, no CR or LF inside), an empty
    line and data, separated by CRLF "--B" CRLF, and CRLF "--B--" with at most a CRLF after it. None for any
    other body (a preamble, a boundary followed by anything else, an odd header line), whatever it holds: the
    caller then hands it to python-multipart, which decides."""
    delimiter = b"\r\n--" + boundary
    pieces = (b"\r\n" + body).split(delimiter)
    if len(pieces) < 3 or pieces[0] or pieces[-1] not in (b"--", b"--\r\n"):
        return None
    parts = []
    for piece in pieces[1:-1]:
        if not piece.startswith(b"\r\n"):
            return None
        head, blank, data = piece[2:].partition(b"\r\n\r\n")
        if not blank or not head:
            return None
        lines = head.split(b"\r\n")
        if len(lines) > MAX_HEADER_COUNT:
            return None
        headers = []
        for line in lines:
            name, colon, value = line.partition(b":")
            if (not colon or not name or name.translate(None, TOKEN_CHARS) or len(line) > MAX_HEADER_LINE
                    or b"\r" in value or b"\n" in value):
                return None
            headers.append((name, value.lstrip(b" ")))  # python-multipart skips the spaces before a value
        parts.append((headers, data))
    return parts


def _replay(reader: _Reader, headers: list[tuple[bytes, bytes]], data: bytes) -> None:
    """Call the reader's callbacks as python-multipart calls them for such a part."""
    reader.on_part_begin()
    for name, value in headers:
        reader.on_header_field(name, 0, len(name))
        reader.on_header_value(value, 0, len(value))
        reader.on_header_end()
    reader.on_headers_finished()
    reader.on_part_data(data, 0, len(data))
    reader.on_part_end()
