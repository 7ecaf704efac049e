"""Upload validation and output encoding (jobs.images), on images built here."""
from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from jobs.images import ImageRejected, decode_for_sr, encode, inspect_image, output_size

LIMIT = 4096 * 4096


def saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header declaring a huge image, with almost no data behind it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data, code", [
    (b"", "empty_image"),
    (b"hello, this is text with a .png name", "unsupported_image"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "unsupported_image"),
    (saved(Image.effect_noise((64, 64), 60).convert("RGB"), "PNG")[:600], "corrupt_image"),
    (saved(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG")[:1500], "corrupt_image"),
])
def test_non_images_and_broken_images_are_refused(data, code):
    with pytest.raises(ImageRejected) as caught:
        inspect_image(data, LIMIT)
    assert caught.value.code == code and caught.value.status == 415


def test_a_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageRejected) as caught:
        inspect_image(bomb_png(100_000, 100_000), LIMIT)
    assert caught.value.code == "image_too_large" and caught.value.status == 422


@pytest.mark.parametrize("image, fmt, mode", [
    (Image.new("P", (8, 6)), "PNG", "P"),
    (Image.new("I;16", (8, 6)), "PNG", "I;16"),
    (Image.new("CMYK", (8, 6)), "JPEG", "CMYK"),
    (Image.new("LA", (8, 6)), "PNG", "LA"),
    (Image.new("RGB", (8, 6)), "WEBP", "RGB"),
    (Image.new("RGB", (8, 6)), "BMP", "RGB"),
    (Image.new("RGB", (8, 6)), "TIFF", "RGB"),
])
def test_supported_formats_and_modes_are_accepted_and_normalized(image, fmt, mode):
    data = saved(image, fmt)
    info = inspect_image(data, LIMIT)
    assert (info.width, info.height, info.mode) == (8, 6, mode)
    assert decode_for_sr(data, LIMIT).mode in ("RGB", "RGBA", "L", "LA", "I;16")


def test_an_animated_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (5, 4), color) for color in ("red", "green", "blue")]
    data = saved(frames[0], "GIF", save_all=True, append_images=frames[1:])
    info = inspect_image(data, LIMIT)
    assert info.frames == 3 and (info.width, info.height) == (5, 4)


def test_exif_orientation_is_applied_to_the_reported_size():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    data = saved(Image.new("RGB", (30, 20)), "JPEG", exif=exif)
    assert (inspect_image(data, LIMIT).width, inspect_image(data, LIMIT).height) == (20, 30)
    assert decode_for_sr(data, LIMIT).size == (20, 30)


@pytest.mark.parametrize("fmt, mode, expected", [("png", "RGBA", "RGBA"), ("jpeg", "RGBA", "RGB"),
                                                 ("webp", "RGB", "RGB"), ("jpeg", "I;16", "L"),
                                                 ("png", "I;16", "I;16")])
def test_encode_writes_the_requested_format(fmt, mode, expected):
    data = encode(Image.new(mode, (6, 4)), fmt)
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
        assert decoded.mode == expected and decoded.size == (6, 4)


def test_output_size_rounds_like_the_core():
    assert output_size(33, 21, 2.5) == (82, 52)  # round half to even, as Python's round
    assert output_size(10, 10, 1.05) == (10, 10)
