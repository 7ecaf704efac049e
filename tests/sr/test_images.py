"""sr.images: every mode goes to tensors and back unchanged, with its bit depth, alpha and ICC profile."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from sr.errors import InvalidInput
from sr.images import MIN_SIDE, from_tensor, to_tensor

RNG = np.random.default_rng(7)
SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _random_image(mode: str, size=(9, 7)) -> Image.Image:
    width, height = size
    planes = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    pixels = RNG.integers(0, 256, (height, width, planes), dtype=np.uint8)
    return Image.fromarray(pixels[:, :, 0] if planes == 1 else pixels, mode)


def _png_round_trip(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_eight_bit_modes_round_trip_with_their_pixels_mode_and_profile(mode):
    image = _random_image(mode)
    image.info["icc_profile"] = SRGB_PROFILE
    color, alpha, meta = to_tensor(image)
    assert color.dtype == torch.float32 and color.shape == (1, meta.channels, 7, 9)
    assert 0.0 <= color.min() and color.max() <= 1.0
    assert (alpha is not None) == (mode in ("RGBA", "LA"))
    back = from_tensor(color, alpha, meta)
    assert back.mode == mode and back.size == image.size
    assert np.array_equal(np.asarray(back), np.asarray(image))
    saved = _png_round_trip(back)
    assert saved.mode == mode and saved.info.get("icc_profile") == SRGB_PROFILE


def test_sixteen_bit_grey_keeps_values_finer_than_eight_bits():
    samples = (np.arange(8 * 6, dtype=np.uint16).reshape(6, 8) * 1337 + 1).astype(np.uint16)  # odd, not x257
    image = _png_round_trip(Image.fromarray(samples))
    assert image.mode == "I;16"
    color, alpha, meta = to_tensor(image)
    assert alpha is None and meta.bit_depth == 16 and color.shape == (1, 1, 6, 8)
    assert torch.allclose(color[0, 0], torch.from_numpy(samples.astype(np.float32) / 65535))
    back = _png_round_trip(from_tensor(color, alpha, meta))
    assert back.mode == "I;16" and np.array_equal(np.asarray(back), samples)


def test_big_endian_sixteen_bit_grey_reads_the_same_values():
    samples = RNG.integers(0, 65536, (5, 6), dtype=np.uint16)
    image = Image.frombytes("I;16B", (6, 5), samples.astype(">u2").tobytes())
    color, _, meta = to_tensor(image)
    assert meta.mode == "I;16"
    assert np.array_equal(np.rint(color[0, 0].numpy() * 65535).astype(np.uint16), samples)


def test_thirty_two_bit_integer_grey_is_clipped_to_sixteen_bits():
    samples = np.array([[-5, 0, 300, 65535, 70000]] * 4, dtype=np.int32)
    color, alpha, meta = to_tensor(Image.fromarray(samples))
    assert meta.source_mode == "I" and meta.mode == "I;16"
    back = from_tensor(color, alpha, meta)
    assert back.mode == "I;16"
    assert np.asarray(back)[0].tolist() == [0, 0, 300, 65535, 65535]


def test_float_images_are_refused_with_a_clear_message():
    with pytest.raises(InvalidInput, match="mode F"):
        to_tensor(Image.new("F", (8, 8), 0.5))


def test_palette_images_come_back_as_rgb_and_transparent_palette_as_rgba():
    rgb = _random_image("RGB", (12, 10))
    palette = rgb.quantize(colors=16)
    color, alpha, meta = to_tensor(palette)
    assert alpha is None and meta.mode == "RGB" and meta.source_mode == "P"
    assert np.array_equal(np.asarray(from_tensor(color, alpha, meta)), np.asarray(palette.convert("RGB")))

    palette.info["transparency"] = 3
    color, alpha, meta = to_tensor(palette)
    assert meta.mode == "RGBA" and alpha is not None
    expected_alpha = np.where(np.asarray(palette) == 3, 0, 255)
    assert np.array_equal(np.asarray(from_tensor(color, alpha, meta))[:, :, 3], expected_alpha)


def test_bilevel_comes_back_grey_and_cmyk_as_rgb_without_its_cmyk_profile():
    color, _, meta = to_tensor(Image.new("1", (6, 6), 1))
    assert meta.mode == "L" and torch.all(color == 1.0)
    cmyk = Image.new("CMYK", (6, 6), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.info["icc_profile"] = b"a CMYK profile"
    color, _, meta = to_tensor(cmyk)
    assert meta.mode == "RGB" and meta.icc_profile is None
    assert from_tensor(color, None, meta).getpixel((0, 0)) == (255, 0, 0)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (8, 4), (0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0))  # stored top-left
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    color, _, meta = to_tensor(Image.open(io.BytesIO(buffer.getvalue())))
    assert color.shape == (1, 3, 8, 4)  # displayed as 4 wide, 8 high
    shown = from_tensor(color, None, meta)
    assert shown.getpixel((3, 0)) == (255, 0, 0)  # the stored top-left is now top-right
    assert shown.getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize("size", [(MIN_SIDE - 1, 50), (50, 1), (3, 3)])
def test_an_image_with_a_side_under_four_pixels_is_refused(size):
    with pytest.raises(InvalidInput, match=f"{size[0]}x{size[1]} pixels.*at least {MIN_SIDE}"):
        to_tensor(Image.new("RGB", size))


def test_the_smallest_accepted_image_round_trips():
    image = _random_image("RGB", (MIN_SIDE, MIN_SIDE))
    color, alpha, meta = to_tensor(image)
    assert np.array_equal(np.asarray(from_tensor(color, alpha, meta)), np.asarray(image))


def test_from_tensor_clamps_and_rounds():
    meta = to_tensor(Image.new("L", (4, 4)))[2]
    values = torch.tensor([-0.5, 0.1 / 255, 0.6 / 255, 1.7]).reshape(1, 1, 1, 4).expand(1, 1, 4, 4)
    assert np.asarray(from_tensor(values, None, meta))[0].tolist() == [0, 0, 1, 255]


def test_from_tensor_refuses_wrong_shapes_missing_alpha_and_nan():
    _, _, rgba_meta = to_tensor(_random_image("RGBA"))
    with pytest.raises(ValueError, match="alpha"):
        from_tensor(torch.zeros(1, 3, 7, 9), None, rgba_meta)
    with pytest.raises(ValueError, match=r"\[1,3,H,W\]"):
        from_tensor(torch.zeros(1, 1, 7, 9), torch.zeros(1, 1, 7, 9), rgba_meta)
    with pytest.raises(ValueError, match="alpha is 8x7"):
        from_tensor(torch.zeros(1, 3, 7, 9), torch.zeros(1, 1, 7, 8), rgba_meta)
    with pytest.raises(ValueError, match="NaN"):
        from_tensor(torch.full((1, 3, 7, 9), float("nan")), torch.zeros(1, 1, 7, 9), rgba_meta)
