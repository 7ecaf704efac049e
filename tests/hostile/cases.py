"""The hostile-input corpus: every file of tests/hostile/corpus/ and every hostile request, with the answer
the API must give (docs/http-api.md, "Status and error codes").

A case is sent to `POST /v1/jobs` (or to the route it names) by tests/hostile/test_corpus.py, under the
limits in LIMITS. An accepted case (202) names the status its job must end in.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
LIMITS = {"max_upload_bytes": 256 * 1024, "webhook_allow_private": False, "rate_limit_per_second": 0}
MULTIPART = "multipart/form-data; boundary=hostile-boundary"


# Webhook targets: every IPv6 form that carries an IPv4 address, each carrying a non-public one (a black-box probe's
# NAT64 target was accepted, and its deliveries left through the default route).
EMBEDDED_NON_PUBLIC = {
    "NAT64 64:ff9b::/96 (127.0.0.1)": "64:ff9b::7f00:1",
    "NAT64 64:ff9b::/96 (169.254.169.254)": "64:ff9b::a9fe:a9fe",
    "NAT64 64:ff9b::/96 (10.0.0.1)": "64:ff9b::a00:1",
    "NAT64 local-use 64:ff9b:1::/48": "64:ff9b:1::808:808",
    "6to4 2002::/16 (127.0.0.1)": "2002:7f00:1::1",
    "6to4 2002::/16 (192.168.1.1)": "2002:c0a8:101::",
    "Teredo 2001::/32 (client 127.0.0.1, inverted)": "2001:0:808:808:0:0:80ff:fffe",
    "Teredo 2001::/32 (server 10.1.1.1)": "2001:0:a01:101:0:0:f7f7:f7f7",
    "IPv4-mapped ::ffff:0:0/96 (127.0.0.1)": "::ffff:7f00:1",
    "IPv4-mapped ::ffff:0:0/96 (100.100.100.200)": "::ffff:6464:64c8",
    "IPv4-compatible ::/96 (127.0.0.1)": "::7f00:1",
    "IPv4-compatible ::/96 (172.16.0.1)": "::ac10:1",
    "IPv4-translated ::ffff:0:0:0/96 (127.0.0.1)": "::ffff:0:7f00:1",
    "IPv4-translated ::ffff:0:0:0/96 (192.168.0.1)": "::ffff:0:c0a8:1",
}


@dataclass(frozen=True)
class Case:
    id: str
    status: int  # the HTTP status the API must answer
    code: str | None = None  # the error code (None for an accepted job)
    file: str | None = None  # a file of the corpus, sent as the multipart part `image`
    part_type: str | None = "image/png"  # the part's Content-Type (None: no Content-Type header)
    fields: dict[str, str] = field(default_factory=lambda: {"method": "bicubic"})
    json: object = None  # a JSON body instead of multipart (any JSON value)
    content: bytes | None = None  # a raw body instead
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False  # send `content` without Content-Length
    method: str = "POST"
    path: str = "/v1/jobs"
    final: str | None = None  # an accepted job must end in this status

    def request(self) -> dict:
        """Keyword arguments for an httpx/TestClient request."""
        if self.json is not None:
            return {"json": self.json, "headers": self.headers}
        if self.content is not None:
            content = self.content
            if self.chunked:
                content = (self.content[i:i + 65536] for i in range(0, len(self.content), 65536))
            return {"content": content, "headers": self.headers}
        if self.file is not None:
            data = (CORPUS / self.file).read_bytes()
            part = (self.file, data) if self.part_type is None else (self.file, data, self.part_type)
            return {"files": {"image": part}, "data": self.fields}
        return {"data": self.fields, "headers": self.headers}


def b64(name: str) -> str:
    return base64.b64encode((CORPUS / name).read_bytes()).decode()


def _file_cases() -> list[Case]:
    not_images = ["text.png", "html.png", "svg.png", "svg-billion-laughs.png", "pdf.png", "elf.jpg", "zip.png",
                  "ico.png", "random-bytes.jpg", "header-only.png", "bad-crc.png", "signature-only.png",
                  "truncated.webp", "ztxt-bomb.png"]
    cases = [Case(f"file:{name}", 415, "unsupported_image", file=name) for name in not_images]
    cases += [
        Case("file:zero-bytes.png", 415, "empty_image", file="zero-bytes.png"),
        Case("file:truncated.png", 415, "corrupt_image", file="truncated.png"),
        Case("file:truncated.jpg", 415, "corrupt_image", file="truncated.jpg", part_type="image/jpeg"),
    ]
    bombs = ["bomb-100000x100000.png", "bomb-65000x65000.jpg", "bomb-65535x65535.gif", "bomb-50000x50000.bmp",
             "bomb-70000x70000.tif"]
    cases += [Case(f"file:{name}", 422, "image_too_large", file=name) for name in bombs]
    cases += [Case(f"file:{name} (a side under 4 pixels)", 422, "image_too_small", file=name)
              for name in ("1x1.png", "3x5000.png")]
    valid = ["animated.gif", "animated.png", "cmyk.jpg", "palette.png",
             "palette-transparent.png", "gray16.png", "rgb16.png", "rgba.png", "la.png", "bilevel.png", "float.tif",
             "exif-rotated.jpg", "polyglot-png-html.png", "polyglot-jpeg-zip.jpg", "polyglot-gif-js.gif"]
    cases += [Case(f"file:{name}", 202, file=name, final="succeeded") for name in valid]
    cases.append(Case("file:flat-3000x3000.png scale 2 (output over the pixel limit)", 422, "output_too_large",
                      file="flat-3000x3000.png", fields={"method": "bicubic", "scale": "2"}))
    return cases


def _parameter_cases() -> list[Case]:
    bad = {"scale": ["0", "-1", "NaN", "100", "abc", "inf", "", "1", "8.0000001", "1e309"],
           "preset": ["ultra", ""], "method": ["magic", "ZSSR"], "kernel": ["gaussian"], "denoise": ["strong"],
           "output_format": ["gif", "png;rm -rf /"], "seed": ["-1", str(2 ** 64), "1.5"],
           "webhook_url": ["file:///etc/passwd", "http://169.254.169.254/latest/meta-data/", "http://localhost/x",
                           "http://[::1]/x", "http://0x7f.1/x", "http://2130706433/x", "gopher://example.com/",
                           "http://user:pass@example.com/x"],
           "unknown_field": ["1"]}
    cases = []
    for name, values in bad.items():
        for value in values:
            code = "webhook_url_refused" if name == "webhook_url" else "invalid_parameters"
            cases.append(Case(f"field:{name}={value!r}", 422, code, file="rgba.png",
                              fields={"method": "bicubic", name: value}))
    cases += [Case(f"field:webhook_url embeds a non-public IPv4 address: {form}", 422, "webhook_url_refused",
                   file="rgba.png", fields={"method": "bicubic", "webhook_url": f"http://[{address}]/hook"})
              for form, address in EMBEDDED_NON_PUBLIC.items()]
    # KernelGAN estimates kernels for x2 and x4 only: another scale is refused at submission, not failed later.
    for scale in ("3", "2.5", "8"):
        cases.append(Case(f"field:kernel='estimate' with zssr at scale {scale}", 422, "invalid_parameters",
                          file="rgba.png", fields={"method": "zssr", "kernel": "estimate", "scale": scale}))
    return cases


def _request_cases() -> list[Case]:
    over = LIMITS["max_upload_bytes"] + 200 * 1024
    return [
        # content types: the part's declared type is not trusted either way (the bytes decide)
        Case("part type image/gif on a PNG", 202, file="rgba.png", part_type="image/gif", final="succeeded"),
        Case("part without a content type", 202, file="rgba.png", part_type=None, final="succeeded"),
        Case("part typed text/html", 202, file="rgba.png", part_type="text/html", final="succeeded"),
        Case("body typed text/plain", 415, "unsupported_media_type", content=b"hello",
             headers={"content-type": "text/plain"}),
        Case("body with no content type", 415, "unsupported_media_type", content=b"\x89PNG"),
        Case("urlencoded form", 415, "unsupported_media_type", fields={"scale": "2"}),
        Case("raw PNG body typed image/png", 415, "unsupported_media_type",
             content=(CORPUS / "rgba.png").read_bytes(), headers={"content-type": "image/png"}),
        Case("multipart without a boundary", 400, "bad_request", content=b"--x\r\n",
             headers={"content-type": "multipart/form-data"}),
        Case("multipart with a garbage body", 400, "bad_request", content=b"--nope\r\n\r\n",
             headers={"content-type": MULTIPART}),
        Case("multipart without the image part", 422, "missing_image", content=(
            b'--hostile-boundary\r\nContent-Disposition: form-data; name="scale"\r\n\r\n2\r\n--hostile-boundary--\r\n'),
            headers={"content-type": MULTIPART}),
        Case("multipart without its closing boundary", 400, "bad_request", content=(
            b'--hostile-boundary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + (CORPUS / "rgba.png").read_bytes()),
            headers={"content-type": MULTIPART}),
        Case("multipart cut inside its closing boundary", 400, "bad_request", content=(
            b'--hostile-boundary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + (CORPUS / "rgba.png").read_bytes() + b"\r\n--hostile-bou"),
            headers={"content-type": MULTIPART}),
        Case("two image parts", 400, "bad_request", content=b"".join(
            b'--hostile-boundary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + (CORPUS / "rgba.png").read_bytes() + b"\r\n" for _ in range(2))
            + b"--hostile-boundary--\r\n", headers={"content-type": MULTIPART}),
        # bodies over the limit, declared and not
        Case("multipart body over the limit, with Content-Length", 413, "payload_too_large",
             content=b"\0" * over, headers={"content-type": MULTIPART}),
        Case("multipart body over the limit, chunked", 413, "payload_too_large", content=b"\0" * over,
             headers={"content-type": MULTIPART}, chunked=True),
        Case("JSON body over the limit, with Content-Length", 413, "payload_too_large",
             content=b'{"image_base64": "' + b"A" * (over * 2) + b'"}', headers={"content-type": "application/json"}),
        Case("JSON body over the limit, chunked", 413, "payload_too_large",
             content=b'{"image_base64": "' + b"A" * (over * 2) + b'"}', headers={"content-type": "application/json"},
             chunked=True),
        Case("a Content-Length that is not a number", 413, "payload_too_large", content=b"{}",
             headers={"content-type": "application/json", "content-length": "12abc"}),
        # JSON
        Case("JSON: malformed base64", 422, "invalid_base64", json={"image_base64": "%%%not*base64%%%"}),
        Case("JSON: base64 of a non-image", 415, "unsupported_image",
             json={"image_base64": base64.b64encode(b"<svg/>").decode()}),
        Case("JSON: base64 of a decompression bomb", 422, "image_too_large",
             json={"image_base64": b64("bomb-100000x100000.png"), "method": "bicubic"}),
        Case("JSON: a data: URL", 202, json={"image_base64": "data:image/png;base64," + b64("rgba.png"),
                                             "method": "bicubic"}, final="succeeded"),
        Case("JSON: image_base64 is a number", 422, "invalid_parameters", json={"image_base64": 12}),
        Case("JSON: no image", 422, "invalid_parameters", json={"scale": 2}),
        Case("JSON: an array", 422, "invalid_json", json=[1, 2, 3]),
        Case("JSON: a string", 422, "invalid_json", json="image"),
        Case("JSON: broken", 422, "invalid_json", content=b'{"image_base64": ',
             headers={"content-type": "application/json"}),
        Case("JSON: nested 50,000 deep", 422, "invalid_json", content=b"[" * 50_000 + b"]" * 50_000,
             headers={"content-type": "application/json"}),
        Case("JSON: not UTF-8", 422, "invalid_json", content=b'{"image_base64": "\xff\xfe"}',
             headers={"content-type": "application/json"}),
        Case("JSON: NaN scale", 422, "invalid_parameters",
             content=b'{"image_base64": "' + b64("rgba.png").encode() + b'", "scale": NaN}',
             headers={"content-type": "application/json"}),
        Case("JSON: scale 1e400", 422, "invalid_parameters",
             content=b'{"image_base64": "' + b64("rgba.png").encode() + b'", "scale": 1e400}',
             headers={"content-type": "application/json"}),
        Case("JSON: unknown preset", 422, "invalid_parameters",
             json={"image_base64": b64("rgba.png"), "preset": "ultra"}),
        Case("JSON: unknown method", 422, "invalid_parameters", json={"image_base64": b64("rgba.png"),
                                                                        "method": "waifu2x"}),
        Case("JSON: 200 unknown keys", 422, "invalid_parameters",
             json={"image_base64": b64("rgba.png"), **{f"k{i}": i for i in range(200)}}),
        # other routes
        Case("list: limit=-1", 422, "invalid_parameters", method="GET", path="/v1/jobs?limit=-1"),
        Case("list: limit=abc", 422, "invalid_parameters", method="GET", path="/v1/jobs?limit=abc"),
        Case("list: status=bogus", 422, "invalid_parameters", method="GET", path="/v1/jobs?status=bogus"),
        Case("read: a 5,000-character id", 404, "job_not_found", method="GET", path="/v1/jobs/" + "a" * 5000),
        Case("read: a path-traversing id", 404, "not_found", method="GET", path="/v1/jobs/..%2F..%2Fetc%2Fpasswd"),
        Case("read: an id with a NUL", 404, "job_not_found", method="GET", path="/v1/jobs/abc%00def"),
        Case("cancel: an unknown id", 404, "job_not_found", path="/v1/jobs/" + "0" * 32 + "/cancel"),
        Case("result: an unknown id", 404, "job_not_found", method="GET", path="/v1/jobs/" + "f" * 32 + "/result"),
        Case("DELETE a job", 405, "method_not_allowed", method="DELETE", path="/v1/jobs/" + "0" * 32),
    ]


CASES: list[Case] = _file_cases() + _parameter_cases() + _request_cases()


def case_ids() -> list[str]:
    return [case.id for case in CASES]


__all__ = ["CASES", "Case", "LIMITS", "case_ids", "json"]
