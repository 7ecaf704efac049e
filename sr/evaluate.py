"""The evaluation protocol of super-resolution papers, as reusable functions (docs/algorithm.md, the evaluation protocol).

A high-resolution photo is cropped to a multiple of the scale and downscaled with Pillow's antialiased bicubic
(within 0.01 dB of MATLAB's `imresize` on Set14); the low-resolution result is upscaled back by bicubic and by
ZSSR, and each is compared with the cropped original on the Y channel, `ceil(scale)` pixels shaved at each border.
Used by `python -m sr evaluate` and bench/quality.py.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from statistics import mean
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

import sr
from sr.errors import InvalidInput
from sr.images import MIN_SIDE
from sr.metrics import psnr, ssim
from sr.progress import Progress

BICUBIC = "bicubic"
_GREY_MODES = ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass(frozen=True)
class EvalRow:
    image: str  # a name for the photo (its file name)
    method: str  # "bicubic", or the ZSSR run's label: its preset, with "+config" when a config overrode it
    hr_size: tuple[int, int]  # the cropped original (width, height): also the output's size
    lr_size: tuple[int, int]  # the degraded input (width, height)
    psnr: float  # dB, Y channel, shaved
    ssim: float
    wall_seconds: float  # the upscale alone (degrading and scoring excluded)
    cpu_seconds: float  # process CPU time of the upscale, all threads together
    info: dict = field(default_factory=dict)  # the result's image.info["sr"] (train steps, fallback, ...)


@dataclass(frozen=True)
class MethodSummary:
    method: str
    images: int
    mean_psnr: float
    mean_ssim: float
    mean_gain: float  # mean PSNR gain over bicubic on the same images, dB (0 for bicubic itself)
    min_gain: float
    mean_wall_seconds: float
    mean_cpu_seconds: float


def parse_scale(scale: float | tuple[float, float]) -> tuple[float, float]:
    """(sx, sy) from a number or a pair; InvalidInput unless both are finite and above 1."""
    sx, sy = (scale, scale) if isinstance(scale, (int, float)) else tuple(scale)
    if not all(math.isfinite(s) and s > 1 for s in (sx, sy)):
        raise InvalidInput(f"the scale must be above 1 on both axes, got {sx:g},{sy:g}")
    return float(sx), float(sy)


def shave_for(scale: float | tuple[float, float]) -> int:
    """The border papers shave before measuring: the scale, rounded up for non-integer ones."""
    return math.ceil(max(parse_scale(scale)))


def prepare_hr(image: Image.Image) -> Image.Image:
    """The original as the protocol measures it: EXIF orientation applied, 8-bit RGB or grey, alpha dropped."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGB", "L"):
        return image
    if image.mode.startswith("I"):  # 16- or 32-bit grey, on the 8-bit scale
        samples = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255)
        return Image.fromarray(np.rint(samples).astype(np.uint8))
    return image.convert("L" if image.mode in _GREY_MODES else "RGB")


def degrade(hr: Image.Image, scale: float | tuple[float, float]) -> tuple[Image.Image, Image.Image]:
    """(hr cropped so that the scale maps the input onto it exactly, the low-resolution input made from it)."""
    sx, sy = parse_scale(scale)
    hr = prepare_hr(hr)
    lr_size = (math.floor(hr.width / sx), math.floor(hr.height / sy))
    if min(lr_size) < MIN_SIDE:
        raise InvalidInput(f"a {hr.width}x{hr.height} image is too small to evaluate at x{sx:g},{sy:g}: its "
                           f"low-resolution input would be {lr_size[0]}x{lr_size[1]} pixels")
    hr_size = (round(lr_size[0] * sx), round(lr_size[1] * sy))  # what upscale makes of lr_size (docs/http-api.md, `scale`)
    hr_cropped = hr.crop((0, 0, *hr_size))  # top-left, as MATLAB's modcrop
    lr = hr_cropped.resize(lr_size, Image.Resampling.BICUBIC)  # antialiased when reducing
    return hr_cropped, lr


def run_method(hr: Image.Image, lr: Image.Image, scale: float | tuple[float, float], *, name: str,
               method: str, preset: str = "balanced", config=None, label: str | None = None, seed: int | None = 0,
               device: str | None = None, progress: Callable[[Progress], None] | None = None) -> EvalRow:
    """Upscale `lr` with one method, time it and score it against `hr`."""
    sx, sy = parse_scale(scale)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    result = sr.upscale(lr, (sx, sy), method=method, preset=preset, config=config, device=device, seed=seed,
                        progress=progress)
    wall_seconds, cpu_seconds = time.perf_counter() - wall_start, time.process_time() - cpu_start
    if result.size != hr.size:
        raise RuntimeError(f"{method} made a {result.size} image from {lr.size} at x{sx:g},{sy:g}; "
                           f"expected {hr.size}")
    shave = shave_for((sx, sy))
    return EvalRow(image=name, method=label or method, hr_size=hr.size, lr_size=lr.size,
                   psnr=psnr(hr, result, shave), ssim=ssim(hr, result, shave), wall_seconds=wall_seconds,
                   cpu_seconds=cpu_seconds, info=dict(result.info.get("sr") or {}))


def zssr_label(preset: str, config) -> str:
    return preset if config is None else f"{preset}+config"


def evaluate(hr: Image.Image, scale: float | tuple[float, float] = 2.0, *, preset: str = "balanced", config=None,
             seed: int | None = 0, device: str | None = None, name: str = "image", with_bicubic: bool = True,
             progress: Callable[[Progress], None] | None = None) -> list[EvalRow]:
    """Degrade `hr`, then the bicubic row (unless `with_bicubic` is False) and the ZSSR row for `preset`/`config`."""
    hr_cropped, lr = degrade(hr, scale)
    rows = []
    if with_bicubic:
        rows.append(run_method(hr_cropped, lr, scale, name=name, method=BICUBIC, seed=seed, device=device))
    rows.append(run_method(hr_cropped, lr, scale, name=name, method="zssr", preset=preset, config=config,
                           label=zssr_label(preset, config), seed=seed, device=device, progress=progress))
    return rows


def summarize(rows: list[EvalRow]) -> list[MethodSummary]:
    """One summary per method, in the order they first appear; gains against the bicubic row of the same image."""
    bicubic_psnr = {row.image: row.psnr for row in rows if row.method == BICUBIC}
    summaries = []
    for method in dict.fromkeys(row.method for row in rows):
        of_method = [row for row in rows if row.method == method]
        gains = [row.psnr - bicubic_psnr[row.image] for row in of_method if row.image in bicubic_psnr]
        summaries.append(MethodSummary(
            method=method, images=len(of_method), mean_psnr=mean(row.psnr for row in of_method),
            mean_ssim=mean(row.ssim for row in of_method),
            mean_gain=mean(gains) if gains else math.nan, min_gain=min(gains) if gains else math.nan,
            mean_wall_seconds=mean(row.wall_seconds for row in of_method),
            mean_cpu_seconds=mean(row.cpu_seconds for row in of_method)))
    return summaries


def format_table(rows: list[EvalRow]) -> str:
    """A markdown table: one line per image, bicubic and each ZSSR run side by side, then the means."""
    methods = [method for method in dict.fromkeys(row.method for row in rows) if method != BICUBIC]
    by_key = {(row.image, row.method): row for row in rows}
    header = ["image", "size (LR -> HR)", "bicubic PSNR/SSIM"]
    for method in methods:
        header += [f"{method} PSNR/SSIM", f"{method} gain dB", f"{method} blend", f"{method} s (wall/CPU)"]
    lines = [_markdown_row(header), _markdown_row(["---"] * len(header))]
    for image in dict.fromkeys(row.image for row in rows):
        any_row = next(row for row in rows if row.image == image)
        bicubic = by_key.get((image, BICUBIC))
        cells = [image, f"{_size(any_row.lr_size)} -> {_size(any_row.hr_size)}", _scores(bicubic)]
        for method in methods:
            row = by_key.get((image, method))
            gain = row.psnr - bicubic.psnr if row and bicubic else math.nan
            cells += [_scores(row), f"{gain:+.2f}" + _fallback_mark(row), _blend(row),
                      f"{row.wall_seconds:.1f} / {row.cpu_seconds:.1f}" if row else "-"]
        lines.append(_markdown_row(cells))
    summaries = {summary.method: summary for summary in summarize(rows)}
    images = len(dict.fromkeys(row.image for row in rows))
    mean_cells = ["**mean**", f"{images} images", _mean_scores(summaries.get(BICUBIC))]
    for method in methods:
        summary = summaries[method]
        mean_cells += [_mean_scores(summary), f"{summary.mean_gain:+.2f} (min {summary.min_gain:+.2f})", "",
                       f"{summary.mean_wall_seconds:.1f} / {summary.mean_cpu_seconds:.1f}"]
    lines.append(_markdown_row(mean_cells))
    return "\n".join(lines)


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _scores(row: EvalRow | None) -> str:
    return f"{row.psnr:.2f} / {row.ssim:.4f}" if row else "-"


def _mean_scores(summary: MethodSummary | None) -> str:
    return f"{summary.mean_psnr:.2f} / {summary.mean_ssim:.4f}" if summary else "-"


def _blend(row: EvalRow | None) -> str:
    """The self-check's weight of the net in the output (1.00 = the net as it is), '-' where there was none."""
    blend = ((row.info.get("self_check") or {}).get("blend")) if row else None
    return f"{blend:.2f}" if blend is not None else "-"


def _fallback_mark(row: EvalRow | None) -> str:
    """A '*' where the core fell back toward bicubic (its self-check found the trained net no better)."""
    return " *" if row and row.info.get("fallback") else ""
