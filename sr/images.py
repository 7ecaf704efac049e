"""Pillow images to the core's tensors and back, keeping what makes the output the same kind of image.

The core works on float32 tensors in [0, 1]: the colour as [1, C, H, W] (C = 3 for colour, 1 for grey) and the
alpha, when there is one, as [1, 1, H, W], upscaled on its own. `ImageMeta` remembers what `from_tensor` needs to
give the image back as it came in: the mode, 8 or 16 bits, and the ICC profile.

Mode decisions (what goes in -> what comes back):
- RGB, RGBA, L, LA: as they are.
- I;16 (16-bit grey, e.g. a 16-bit PNG) and its byte-order variants: kept at 16-bit precision (value / 65535),
  given back as I;16.
- I (32-bit integer grey, some TIFFs): read as 16-bit grey; values outside 0..65535 are clipped; given back as
  I;16, because nothing larger than 16 bits per sample is written by the formats we save (PNG cannot hold "I").
- P (palette), with or without transparency, and PA: converted to RGB or RGBA (a palette cannot hold the new
  colours an upscale makes), given back as RGB or RGBA.
- 1 (bilevel): read as L, given back as L (an upscale has grey edges).
- RGBa and La (premultiplied alpha): read as RGBA and LA.
- CMYK, YCbCr, LAB, HSV: converted to RGB, given back as RGB; their ICC profile is dropped, since it describes
  the original colour space and would mislabel the RGB result.
- F (32-bit float): refused with InvalidInput; its value range is not defined, so any mapping to [0, 1] would
  be a guess. Convert it to 16-bit first.
EXIF orientation is applied first (`ImageOps.exif_transpose`), so the tensors are the image as it is seen.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from sr.errors import InvalidInput

MIN_SIDE = 4  # the smallest side the core takes (worker.images.MIN_SIDE must match: the API refuses earlier)

_EIGHT_BIT_MAX = 255.0
_SIXTEEN_BIT_MAX = 65535.0
_SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_CONVERTED_TO_RGB_WITHOUT_PROFILE = ("CMYK", "YCbCr", "LAB", "HSV")


@dataclass(frozen=True)
class ImageMeta:
    mode: str  # the mode `from_tensor` gives back: "RGB", "RGBA", "L", "LA" or "I;16"
    bit_depth: int  # 8 or 16 bits per sample
    icc_profile: bytes | None  # carried to the output's image.info["icc_profile"]
    has_alpha: bool  # True for RGBA and LA: `from_tensor` then needs an alpha tensor
    source_mode: str  # the mode the image arrived in, before any conversion (for logs and result info)

    @property
    def channels(self) -> int:
        """Colour channels of the tensor: 3 for colour, 1 for grey."""
        return 3 if self.mode in ("RGB", "RGBA") else 1


def to_tensor(image: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None, ImageMeta]:
    """The image as (colour [1,C,H,W], alpha [1,1,H,W] or None, meta), float32 in [0, 1], EXIF orientation applied."""
    source_mode = image.mode
    icc_profile = image.info.get("icc_profile") or None
    image = ImageOps.exif_transpose(image)
    _check_size(image)
    image, icc_profile = _normalize_mode(image, icc_profile)
    if image.mode == "I;16":
        grey = np.asarray(image, dtype=np.float32) / _SIXTEEN_BIT_MAX  # [H,W]
        meta = ImageMeta("I;16", 16, icc_profile, False, source_mode)
        return _planes_to_tensor(grey[:, :, None]), None, meta
    pixels = np.asarray(image, dtype=np.float32) / _EIGHT_BIT_MAX  # [H,W] or [H,W,C]
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    has_alpha = image.mode in ("RGBA", "LA")
    meta = ImageMeta(image.mode, 8, icc_profile, has_alpha, source_mode)
    if has_alpha:
        return _planes_to_tensor(pixels[:, :, :-1]), _planes_to_tensor(pixels[:, :, -1:]), meta
    return _planes_to_tensor(pixels), None, meta


def from_tensor(color: torch.Tensor, alpha: torch.Tensor | None, meta: ImageMeta) -> Image.Image:
    """The image `meta` describes, from tensors in [0, 1] (clamped, rounded); its ICC profile in image.info."""
    colour_planes = _tensor_to_planes(color, meta.channels, "colour")
    if meta.has_alpha:
        if alpha is None:
            raise ValueError(f"a {meta.mode} image needs its alpha tensor")
        alpha_planes = _tensor_to_planes(alpha, 1, "alpha")
        if alpha_planes.shape[:2] != colour_planes.shape[:2]:
            raise ValueError(f"alpha is {alpha_planes.shape[1]}x{alpha_planes.shape[0]} but the colour is "
                             f"{colour_planes.shape[1]}x{colour_planes.shape[0]}")
        colour_planes = np.concatenate([colour_planes, alpha_planes], axis=2)
    if meta.bit_depth == 16:
        samples = np.rint(colour_planes[:, :, 0] * _SIXTEEN_BIT_MAX).astype(np.uint16)  # [H,W]
        result = Image.fromarray(samples)  # uint16 [H,W] -> mode I;16
    else:
        samples = np.rint(colour_planes * _EIGHT_BIT_MAX).astype(np.uint8)  # [H,W,C]
        result = Image.fromarray(samples[:, :, 0] if samples.shape[2] == 1 else samples)
    if result.mode != meta.mode:  # e.g. a uint8 [H,W,2] array is read as LA already; anything else is a bug
        raise ValueError(f"built a {result.mode} image for a {meta.mode} one")
    if meta.icc_profile:
        result.info["icc_profile"] = meta.icc_profile
    return result


def _check_size(image: Image.Image) -> None:
    width, height = image.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InvalidInput(f"the image is {width}x{height} pixels; each side must be at least {MIN_SIDE} pixels")


def _normalize_mode(image: Image.Image, icc_profile: bytes | None) -> tuple[Image.Image, bytes | None]:
    """One of RGB, RGBA, L, LA, I;16, with the ICC profile that still describes it (see the module docstring)."""
    mode = image.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        return image, icc_profile
    if mode in _SIXTEEN_BIT_GREY_MODES:
        return _as_sixteen_bit_grey(image), icc_profile
    if mode in ("P", "PA"):
        keeps_alpha = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if keeps_alpha else "RGB"), icc_profile
    if mode == "1":
        return image.convert("L"), icc_profile
    if mode in ("RGBa", "La"):
        return image.convert(mode.upper()), icc_profile
    if mode in _CONVERTED_TO_RGB_WITHOUT_PROFILE:
        return image.convert("RGB"), None
    if mode == "F":
        raise InvalidInput("32-bit float images (mode F) are not supported, since their value range is not "
                           "defined; convert the image to 16-bit first")
    raise InvalidInput(f"images of mode {mode} are not supported; use RGB, RGBA, L, LA or 16-bit grey")


def _as_sixteen_bit_grey(image: Image.Image) -> Image.Image:
    """Any 16- or 32-bit integer grey as native I;16 (32-bit values clipped to 0..65535)."""
    samples = np.asarray(image)
    if samples.dtype.kind == "i" or samples.dtype.itemsize > 2:
        samples = np.clip(samples, 0, int(_SIXTEEN_BIT_MAX))
    return Image.fromarray(samples.astype(np.uint16))  # native byte order -> mode I;16


def _planes_to_tensor(planes: np.ndarray) -> torch.Tensor:
    """[H,W,C] float32 -> [1,C,H,W], contiguous (a copy: the array may be a read-only view of the image)."""
    return torch.from_numpy(np.ascontiguousarray(planes.transpose(2, 0, 1)))[None].clone()


def _tensor_to_planes(tensor: torch.Tensor, channels: int, what: str) -> np.ndarray:
    """[1,C,H,W] (any device, dtype, grad) -> [H,W,C] float32 clamped to [0, 1]."""
    if tensor.dim() != 4 or tensor.shape[0] != 1 or tensor.shape[1] != channels:
        raise ValueError(f"the {what} tensor must be [1,{channels},H,W], got {list(tensor.shape)}")
    planes = tensor.detach().to("cpu", torch.float32)[0]  # [C,H,W]
    if not torch.isfinite(planes).all():  # NaN would become an arbitrary byte: a bug upstream, never an image
        raise ValueError(f"the {what} tensor has NaN or infinite values")
    planes = planes.clamp(0.0, 1.0)
    return planes.permute(1, 2, 0).numpy()  # [H,W,C]
