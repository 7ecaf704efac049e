"""Writes the hostile-input corpus into tests/hostile/corpus/ (deterministic; the files are committed).

  python tests/hostile/make_corpus.py          # rewrite every file
  python tests/hostile/make_corpus.py --check  # exit 1 if a committed file differs from what this writes

Each file is small: broken, disguised, hostile or merely unusual images. What the API must answer for
each is in tests/hostile/cases.py.
"""
from __future__ import annotations

import argparse
import io
import struct
import sys
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

CORPUS = Path(__file__).resolve().parent / "corpus"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_from_rows(width: int, height: int, bit_depth: int, color_type: int, rows: list[bytes],
                  extra: list[bytes] = ()) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\0" + row for row in rows)  # filter type 0 on every row
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + b"".join(extra) + chunk(b"IDAT", zlib.compress(raw, 9)) \
        + chunk(b"IEND", b"")


def save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def pattern(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A deterministic picture with edges and gradients (noise would make the files large)."""
    image = Image.new("RGB", (width, height), (30, 60, 90))
    draw = ImageDraw.Draw(image)
    for i in range(0, max(width, height), 6):
        draw.line([(i, 0), (0, i)], fill=(i * 7 % 256, i * 3 % 256, 200 - i % 200), width=2)
    draw.ellipse([width // 4, height // 4, 3 * width // 4, 3 * height // 4], outline=(250, 240, 10), width=3)
    return image.convert(mode) if mode != "RGB" else image


def tiff_with_size(width: int, height: int) -> bytes:
    """A 1x1 TIFF whose width and length tags claim another size."""
    data = bytearray(save(Image.new("L", (1, 1)), "TIFF"))
    endian = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack(endian + "I", data[4:8])[0]
    count = struct.unpack(endian + "H", data[offset:offset + 2])[0]
    for i in range(count):
        entry = offset + 2 + 12 * i
        tag, kind = struct.unpack(endian + "HH", data[entry:entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            value = width if tag == 256 else height
            data[entry + 2:entry + 12] = struct.pack(endian + "HII", 4, 1, value)  # LONG
    return bytes(data)


def jpeg_with_size(width: int, height: int) -> bytes:
    """A tiny JPEG whose frame header (SOF0) claims another size."""
    data = bytearray(save(pattern(8, 8), "JPEG", quality=50))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_with_size(width: int, height: int) -> bytes:
    """A GIF whose logical screen and image descriptor claim another size, with one tiny LZW block."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return header + descriptor + b"\x02\x02\x44\x01\x00" + b"\x3b"


def bmp_with_size(width: int, height: int) -> bytes:
    data = bytearray(save(Image.new("RGB", (2, 2)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def ztxt_bomb() -> bytes:
    """A valid 8x8 PNG carrying a compressed text chunk that inflates to 64 MB."""
    text = zlib.compress(b"\0" * (64 * 1024 * 1024), 9)
    rows = [bytes(8 * 3)] * 8
    return png_from_rows(8, 8, 8, 2, rows, [chunk(b"zTXt", b"Comment\0\0" + text)])


def zip_bytes() -> bytes:
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("payload.html", date_time=(2020, 1, 1, 0, 0, 0))
        archive.writestr(info, "<script>alert(document.cookie)</script>")
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return save(pattern(40, 20), "JPEG", quality=80, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [pattern(24, 16).rotate(angle) for angle in (0, 90, 180)]
    return save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def apng() -> bytes:
    frames = [pattern(24, 16), pattern(24, 16).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return save(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)


def files() -> dict[str, bytes]:
    good_png = save(pattern(64, 48), "PNG")
    good_jpeg = save(pattern(64, 48), "JPEG", quality=85)
    gray16 = Image.frombytes("I;16", (32, 24), b"".join(struct.pack("<H", (x * 2000 + y * 900) % 65536)
                                                        for y in range(24) for x in range(32)))
    rgb16_rows = [b"".join(struct.pack(">HHH", x * 4000, y * 2500, 65535 - x * 1000) for x in range(16))
                  for y in range(12)]
    return {
        # --- not images, with image names (the multipart part says image/png or image/jpeg)
        "text.png": b"this is plain text, not a picture\n" * 20,
        "zero-bytes.png": b"",
        "html.png": b"<!doctype html><html><body><script>alert(1)</script></body></html>",
        "svg.png": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="4000" height="4000">'
                   b'<rect width="100%" height="100%" fill="red"/></svg>',
        "svg-billion-laughs.png": b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                                  b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
                                  b'<svg xmlns="http://www.w3.org/2000/svg"><text>&lol2;</text></svg>',
        "pdf.png": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
        "elf.jpg": b"\x7fELF\x02\x01\x01" + bytes(57) + b"\x00" * 64,
        "zip.png": zip_bytes(),
        "ico.png": save(pattern(32, 32), "ICO"),  # an image Pillow reads, in a format the API does not take
        "random-bytes.jpg": bytes((i * 73 + 41) % 256 for i in range(4096)),
        # --- broken images
        "truncated.png": good_png[: len(good_png) * 6 // 10],
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "truncated.webp": save(pattern(64, 48), "WEBP", quality=80)[:200],
        "header-only.png": PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 48, 8, 2, 0, 0, 0)),
        "bad-crc.png": good_png[:29] + b"\0\0\0\0" + good_png[33:],  # IHDR's CRC zeroed
        "signature-only.png": PNG_SIGNATURE,
        # --- decompression bombs: a huge declared size in a tiny file
        "bomb-100000x100000.png": png_from_rows(100_000, 100_000, 8, 2, []),
        "bomb-65000x65000.jpg": jpeg_with_size(65_000, 65_000),
        "bomb-65535x65535.gif": gif_with_size(65_535, 65_535),
        "bomb-50000x50000.bmp": bmp_with_size(50_000, 50_000),
        "bomb-70000x70000.tif": tiff_with_size(70_000, 70_000),
        "ztxt-bomb.png": ztxt_bomb(),
        # --- odd but valid images
        "1x1.png": save(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"),
        "3x5000.png": save(pattern(3, 5000), "PNG"),
        "animated.gif": animated_gif(),
        "animated.png": apng(),
        "cmyk.jpg": save(pattern(40, 30, "CMYK"), "JPEG", quality=85),
        "palette.png": save(pattern(40, 30).quantize(16), "PNG"),
        "palette-transparent.png": save(pattern(40, 30).quantize(16), "PNG", transparency=0),
        "gray16.png": save(gray16, "PNG"),
        "rgb16.png": png_from_rows(16, 12, 16, 2, rgb16_rows),
        "rgba.png": save(pattern(40, 30, "RGBA"), "PNG"),
        "la.png": save(pattern(40, 30, "LA"), "PNG"),
        "bilevel.png": save(pattern(40, 30, "1"), "PNG"),
        "float.tif": save(pattern(20, 10, "L").convert("F"), "TIFF"),
        "exif-rotated.jpg": exif_rotated_jpeg(),
        "flat-3000x3000.png": save(Image.new("L", (3000, 3000), 128), "PNG"),
        # --- polyglots: valid images that are also something else
        "polyglot-png-html.png": good_png + b"<html><script>alert(document.domain)</script></html>",
        "polyglot-jpeg-zip.jpg": good_jpeg + zip_bytes(),
        "polyglot-gif-js.gif": save(pattern(16, 16), "GIF") + b"*/=1;alert(1);/*",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="write or check the hostile-input corpus")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    wanted = files()
    if args.check:
        stale = [name for name, data in wanted.items()
                 if not (CORPUS / name).is_file() or (CORPUS / name).read_bytes() != data]
        print("\n".join(stale) or "corpus up to date", file=sys.stderr)
        return 1 if stale else 0
    CORPUS.mkdir(exist_ok=True)
    for name, data in wanted.items():
        (CORPUS / name).write_bytes(data)
    print(f"wrote {len(wanted)} files to {CORPUS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
