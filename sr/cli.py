"""`python -m sr upscale` and `python -m sr evaluate` (README, "The core: `sr` from Python and the command line").

Exit codes: 0 success; 2 bad input (a missing or unreadable file, a bad scale, bad JSON, an unknown config field,
an image too small), with one line `error: ...` on stderr and no traceback; 1 an unexpected failure, also one
line; 130 interrupted (Ctrl-C). The progress bar and notes go to stderr; `evaluate`'s table goes to stdout.

Output format: from OUT's extension (.png, .jpg/.jpeg, .webp, .tif/.tiff), the ICC profile carried. JPEG has
no alpha and no 16 bits: an image with alpha is composited onto white, 16-bit grey is written as 8-bit, and a
note says so. WebP has no 16 bits either (8-bit, with a note); PNG and TIFF keep everything.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

import sr
from sr.errors import InvalidInput
from sr.evaluate import EvalRow, evaluate, format_table, summarize
from sr.progress import Progress

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
_LOSSY_QUALITY = 95
_WHITE = (255, 255, 255)


class UsageError(Exception):
    """Bad input found by the command line itself (argument, file, JSON): becomes `error: ...` and exit 2."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints the usage and exits 2 on a bad argument; we want the same one-line error as elsewhere."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return args.run(args)
    except (UsageError, InvalidInput) as exc:
        _say(f"error: {exc}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # the command line prints one line, never a traceback, even for our own bugs
        _say(f"error: {type(exc).__name__}: {exc}")
        return EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m sr", description="ZSSR super-resolution of one image, or its evaluation.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    upscale = commands.add_parser("upscale", help="upscale IN and write OUT (format from OUT's extension)")
    upscale.add_argument("input", metavar="IN", type=Path)
    upscale.add_argument("output", metavar="OUT", type=Path)
    upscale.add_argument("--method", choices=("zssr", "bicubic"), default="zssr")
    upscale.add_argument("--preset", choices=("fast", "balanced", "paper"), default="balanced")
    upscale.add_argument("--kernel", default="bicubic", metavar="bicubic | estimate | FILE.npy",
                         help="how the input was downscaled: bicubic (default), estimate (KernelGAN, x2/x4), "
                              "or a 2-D kernel saved with numpy.save")
    upscale.add_argument("--denoise", choices=("off", "auto"), default="off",
                         help="auto: train to remove the noise level estimated in the image")
    _add_common_options(upscale)
    upscale.set_defaults(run=run_upscale)

    evaluate_command = commands.add_parser(
        "evaluate", help="degrade each image by the scale, upscale it back, print PSNR/SSIM against bicubic")
    evaluate_command.add_argument("inputs", metavar="IMAGE_OR_DIR", type=Path, nargs="+")
    evaluate_command.add_argument("--preset", choices=("fast", "balanced", "paper"), nargs="+", default=["balanced"],
                                  help="one or more presets, each evaluated on every image")
    _add_common_options(evaluate_command)
    evaluate_command.set_defaults(run=run_evaluate)
    return parser


def _add_common_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--scale", type=_scale, default=(2.0, 2.0), metavar="S | SX,SY",
                         help="scale factor, or per-axis factors 'sx,sy' (default 2)")
    command.add_argument("--config", type=Path, metavar="FILE.json",
                         help="a JSON object of ZSSRConfig fields that override the preset")
    command.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    command.add_argument("--seed", type=int)
    command.add_argument("--quiet", action="store_true", help="no progress bar")


def _scale(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        factors = [float(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a pair 'sx,sy'") from None
    if len(factors) not in (1, 2) or not all(math.isfinite(f) and f > 1 for f in factors):
        raise argparse.ArgumentTypeError(f"{text!r}: the scale must be one number or 'sx,sy', each above 1")
    return (factors[0], factors[-1])


def run_upscale(args: argparse.Namespace) -> int:
    output_format = _output_format(args.output)  # every check that can fail comes before the long run
    image = _open_image(args.input)
    config = _config(args.config, args.preset)
    kernel = _kernel(args.kernel)
    device = _device(args.device)
    bar = ProgressBar(enabled=not args.quiet)
    try:
        result = sr.upscale(image, args.scale, method=args.method, preset=args.preset, config=config, device=device,
                            seed=args.seed, progress=bar, kernel=kernel, denoise=args.denoise)
    finally:
        bar.close()
    for note in save_image(result, args.output, output_format):
        _say(f"note: {note}")
    _say(f"wrote {args.output} ({result.width}x{result.height} {result.mode}){_describe_run(result)}")
    for line in _describe_kernel(result):
        _say(line)
    return EXIT_OK


def _describe_kernel(result: Image.Image) -> list[str]:
    """The estimated kernel, cropped to its non-zero taps, as rows of numbers (empty when none was estimated)."""
    info = result.info.get("sr") or {}
    if info.get("kernel_source") != "estimate" or not info.get("kernel"):
        return []
    kernel = np.asarray(info["kernel"])
    rows, cols = np.nonzero(kernel > 1e-4)
    support = kernel[rows.min():rows.max() + 1, cols.min():cols.max() + 1] if rows.size else kernel
    lines = [f"estimated kernel ({kernel.shape[0]}x{kernel.shape[1]}, {info.get('kernel_estimation_seconds', 0):.1f} s;"
             f" taps above 1e-4 shown):"]
    lines += ["  " + " ".join(f"{value:.3f}" for value in row) for row in support]
    return lines


def _kernel(text: str) -> str | np.ndarray:
    """"bicubic", "estimate", or the 2-D array in a .npy file (checked by sr when it is used)."""
    if text in ("bicubic", "estimate"):
        return text
    path = Path(text)
    if path.suffix != ".npy":
        raise UsageError(f"--kernel must be bicubic, estimate or a .npy file, got {text!r}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the kernel file {text}: {exc}") from None


def run_evaluate(args: argparse.Namespace) -> int:
    paths = _image_paths(args.inputs)
    images = {path: _open_image(path) for path in paths}  # all checked before the first long run
    configs = {preset: _config(args.config, preset) for preset in args.preset}
    device = _device(args.device)
    rows: list[EvalRow] = []
    for path, image in images.items():
        for index, preset in enumerate(args.preset):
            bar = ProgressBar(label=f"{path.name} {preset} ", enabled=not args.quiet)
            try:
                rows += evaluate(image, args.scale, preset=preset, config=configs[preset], seed=args.seed,
                                 device=device, name=path.name, with_bicubic=index == 0, progress=bar)
            finally:
                bar.close()
    print(f"x{_format_scale(args.scale)}, Y channel PSNR (dB) / SSIM, {math.ceil(max(args.scale))} px shaved; "
          f"seconds are the upscale alone; * = fell back toward bicubic")
    print(format_table(rows))
    for summary in summarize(rows):
        if summary.method != "bicubic":
            print(f"{summary.method}: mean gain over bicubic {summary.mean_gain:+.2f} dB "
                  f"(min {summary.min_gain:+.2f}) on {summary.images} images, "
                  f"{summary.mean_wall_seconds:.1f} s per image")
    return EXIT_OK


class ProgressBar:
    """A tqdm bar on stderr per phase of `sr.upscale`, fed by its `progress` callback."""

    def __init__(self, label: str = "", enabled: bool = True):
        self.label, self.enabled = label, enabled
        self.bar: tqdm | None = None
        self.phase: str | None = None

    def __call__(self, progress: Progress) -> None:
        if not self.enabled:
            return
        if progress.phase != self.phase:
            self.close()
            self.phase = progress.phase
            self.bar = tqdm(total=progress.total_steps, desc=f"{self.label}{progress.phase}", unit="step",
                            file=sys.stderr, dynamic_ncols=True, leave=True)
        if progress.total_steps != self.bar.total:  # an upper bound that the core may revise
            self.bar.total = progress.total_steps
        if progress.step >= self.bar.n:
            self.bar.update(progress.step - self.bar.n)  # through update(), so tqdm's rate is right
        else:
            self.bar.n = progress.step
        postfix = {}
        if progress.loss is not None:
            postfix["loss"] = f"{progress.loss:.4g}"
        if progress.learning_rate is not None:
            postfix["lr"] = f"{progress.learning_rate:.1e}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def save_image(image: Image.Image, path: Path, output_format: str) -> list[str]:
    """Write `image` in `output_format` with its ICC profile, atomically (no half-written OUT on Ctrl-C).

    Returns notes on what the format could not hold."""
    image, notes = _fit_to_format(image, output_format)
    options: dict = {"quality": _LOSSY_QUALITY} if output_format in ("JPEG", "WEBP") else {}
    if image.info.get("icc_profile"):
        options["icc_profile"] = image.info["icc_profile"]
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            image.save(file, format=output_format, **options)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return notes


def _fit_to_format(image: Image.Image, output_format: str) -> tuple[Image.Image, list[str]]:
    notes = []
    icc_profile = image.info.get("icc_profile")
    if output_format in ("JPEG", "WEBP") and image.mode == "I;16":
        samples = np.rint(np.asarray(image, dtype=np.float64) / 257.0).astype(np.uint8)
        image = Image.fromarray(samples)
        notes.append(f"{output_format} has no 16-bit grey: written as 8-bit (PNG or TIFF keep 16 bits)")
    if output_format == "JPEG" and image.mode in ("RGBA", "LA"):
        background = Image.new("RGB" if image.mode == "RGBA" else "L", image.size,
                               _WHITE if image.mode == "RGBA" else 255)
        background.paste(image.convert(background.mode), mask=image.getchannel("A"))
        image = background
        notes.append("JPEG has no alpha: the image was composited onto white (PNG, WebP or TIFF keep alpha)")
    if icc_profile:
        image.info["icc_profile"] = icc_profile
    return image, notes


def _output_format(path: Path) -> str:
    output_format = OUTPUT_FORMATS.get(path.suffix.lower())
    if output_format is None:
        raise UsageError(f"{path}: cannot tell the output format from {path.suffix or 'no extension'!r}; "
                         f"use .png, .jpg, .webp or .tif")
    if not path.parent.is_dir():
        raise UsageError(f"{path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"{path}: the folder {path.parent} is not writable")
    return output_format


def _open_image(path: Path) -> Image.Image:
    """The decoded image (every pixel read now, so a truncated file fails here and not mid-run)."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # a local file: the user chose it
            image = Image.open(path)
            image.load()
    except UnidentifiedImageError:
        raise UsageError(f"{path}: not an image Pillow can read") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied") from None
    except Image.DecompressionBombError as exc:
        raise UsageError(f"{path}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UsageError(f"{path}: the image is truncated or corrupt ({exc})") from None
    return image


def _config(path: Path | None, preset: str):
    """The ZSSRConfig from `preset` and the JSON overrides in `path`, or None when there is no file."""
    if path is None:
        return None
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        overrides = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(overrides, dict):
        raise UsageError(f"{path}: the config must be a JSON object of ZSSRConfig fields")
    return sr.config_for(preset, overrides)


def _device(device: str | None) -> str | None:
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    return device


def _image_paths(inputs: list[Path]) -> list[Path]:
    paths = []
    for item in inputs:
        if item.is_dir():
            found = sorted(path for path in item.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"{item}: no images in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        elif item.exists():
            paths.append(item)
        else:
            raise UsageError(f"{item}: no such file or folder")
    return paths


def _describe_run(result: Image.Image) -> str:
    info = result.info.get("sr") or {}
    details = [f"{key} {info[key]}" for key in ("method", "preset", "train_steps", "device") if key in info]
    if isinstance(info.get("seconds"), (int, float)):
        details.append(f"{info['seconds']:.1f} s")
    if info.get("fallback"):
        details.append(f"fallback: {info['fallback']}")
    return f"; {', '.join(details)}" if details else ""


def _format_scale(scale: tuple[float, float]) -> str:
    return f"{scale[0]:g}" if scale[0] == scale[1] else f"{scale[0]:g},{scale[1]:g}"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
