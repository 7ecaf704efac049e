"""Safe image decoding and encoding, shared by the API (validation before a job is accepted) and the worker.

Accepted formats: PNG, JPEG, WebP, GIF, BMP, TIFF. Animated images (GIF, APNG, WebP) use their first frame.
The declared size is checked against the pixel limit before any pixel is decoded (decompression bombs),
then the whole image is decoded, so a truncated or corrupt file is refused up front and not inside a job.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
MIN_SIDE = 4  # the sr core refuses images (or regions) with a side under 4 pixels: refused before a job exists
OUTPUT_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}
# Modes the sr core takes as they are; everything else is converted first (see `normalize_mode`).
SR_MODES = ("RGB", "RGBA", "L", "LA", "I;16")
_SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees


class ImageRejected(ValueError):
    """The bytes are not an image we accept; `code` is the API error code and `status` its HTTP status."""

    def __init__(self, code: str, message: str, status: int = 415):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class ImageInfo:
    width: int  # after the EXIF orientation is applied
    height: int
    mode: str
    format: str
    frames: int


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header only (no pixel decoded): refuse what is not a supported image or declares too many pixels."""
    if not data:
        raise ImageRejected("empty_image", "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ImageRejected("unsupported_image",
                                "not a supported image; send PNG, JPEG, WebP, GIF, BMP or TIFF") from None
        raise ImageRejected("image_too_large", "the image declares more pixels than allowed", 422) from None
    except Exception:  # Pillow raises many types on hostile headers; all mean the same thing here
        raise ImageRejected("unsupported_image", "the image header cannot be read") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected("unsupported_image", "the image has no pixels")
    if width * height > max_pixels:
        raise ImageRejected("image_too_large",
                            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}", 422)
    return image


def inspect_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Validate `data` completely (decode every pixel of the first frame); raise ImageRejected if not acceptable."""
    return check_pixels(open_image(data, max_pixels))


def check_pixels(image: Image.Image) -> ImageInfo:
    """Decode every pixel of an opened image's first frame (a truncated or corrupt file is refused here)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except Exception:
        raise ImageRejected("corrupt_image", f"the {image.format} image is truncated or corrupt") from None
    width, height = image.size
    if _orientation(image) in _SWAPPED_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(width, height, image.mode, image.format, getattr(image, "n_frames", 1))


def decode_for_sr(data: bytes, max_pixels: int, crop: dict[str, int] | None = None) -> Image.Image:
    """Decode an accepted upload into an image the sr core takes: first frame, EXIF-oriented, a supported mode.

    `crop` ({"x", "y", "width", "height"}, in the oriented image's pixels) keeps only that region."""
    image = open_image(data, max_pixels)
    try:
        image.load()
    except MemoryError:
        raise
    except Exception:  # the stored input no longer decodes (it was checked at submission): say so, no traceback
        raise ImageRejected("corrupt_image", f"the {image.format} image is truncated or corrupt") from None
    image = ImageOps.exif_transpose(image)
    if crop:
        image = crop_region(image, crop)
    return normalize_mode(image)


def crop_region(image: Image.Image, crop: dict[str, int]) -> Image.Image:
    """The region, checked again here: the API checked it against the same image, but a job record is only data."""
    left, top, width, height = crop["x"], crop["y"], crop["width"], crop["height"]
    if left < 0 or top < 0 or width < 1 or height < 1 or left + width > image.width or top + height > image.height:
        raise ImageRejected("invalid_crop", f"the region {left},{top},{width},{height} is not inside the "
                                            f"{image.width}x{image.height} image", 422)
    return image.crop((left, top, left + width, top + height))  # keeps image.info (the ICC profile)


def normalize_mode(image: Image.Image) -> Image.Image:
    """Convert modes sr does not take: palette and CMYK to RGB(A), bilevel to L, 16-bit variants to I;16."""
    mode = image.mode
    if mode in SR_MODES:
        return image
    if mode == "P" or mode == "PA":
        return image.convert("RGBA" if ("transparency" in image.info or mode == "PA") else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I;16") or mode == "I":
        return image.convert("I;16")  # 32-bit integer gray (some TIFFs) is clipped to 16 bits
    if mode == "F":
        return image.convert("L")
    if mode == "RGBa" or mode == "La":
        return image.convert(mode.upper())
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def output_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The size sr.upscale makes: `(round(w * scale), round(h * scale))` (docs/http-api.md, `scale`)."""
    return round(width * scale), round(height * scale)


def encode(image: Image.Image, output_format: str) -> bytes:
    """Encode the result; JPEG has no alpha and no 16 bits, so those are flattened for it."""
    pil_format, _ = OUTPUT_FORMATS[output_format]
    if pil_format == "JPEG":
        if image.mode == "I;16":
            image = image.point(lambda v: v / 257).convert("L")
        elif image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
    elif pil_format == "WEBP" and image.mode == "I;16":
        image = image.point(lambda v: v / 257).convert("L")
    buffer = io.BytesIO()
    options = {"quality": 95} if pil_format in ("JPEG", "WEBP") else {}
    if image.info.get("icc_profile"):
        options["icc_profile"] = image.info["icc_profile"]
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block is not worth refusing the image over
        return 1
