"""sr.evaluate: the degradation of the protocol, the scoring of a method, the summary and the table."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

import sr
from sr.errors import InvalidInput
from sr.evaluate import (EvalRow, degrade, evaluate, format_table, parse_scale, prepare_hr, run_method, shave_for,
                         summarize)
from sr.metrics import psnr, ssim

# A tiny ZSSR run: a few steps of a small net (the sizes the service's tests use).
TINY = {"max_iters": 20, "min_iters": 20, "crop_size": 16, "width": 8, "depth": 3, "run_test_every": 10,
        "back_projection_iters": [1], "output_flip": False, "channels_last": False, "precision": "float32",
        "batch_size": 1, "test_crop": 0, "checkpoint_every": 0}
needs_core = pytest.mark.skipif(not hasattr(sr, "config_for"), reason="the ZSSR core has not landed yet")


def _photo(size=(41, 30)) -> Image.Image:
    """A smooth colour image with some structure (random noise has nothing a super-resolution can recover)."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    red = 128 + 100 * np.sin(x / 3.0)
    green = 128 + 100 * np.cos(y / 4.0)
    blue = 128 + 60 * np.sin((x + y) / 5.0)
    return Image.fromarray(np.stack([red, green, blue], axis=2).astype(np.uint8))


def test_degrade_crops_to_a_multiple_of_the_scale_and_downscales_with_pillow_bicubic():
    hr = _photo((41, 30))
    hr_cropped, lr = degrade(hr, 2)
    assert hr_cropped.size == (40, 30) and lr.size == (20, 15)
    assert np.array_equal(np.asarray(hr_cropped), np.asarray(hr)[:30, :40])  # the top-left crop
    expected = hr.crop((0, 0, 40, 30)).resize((20, 15), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(lr), np.asarray(expected))


@pytest.mark.parametrize(("scale", "hr_size", "lr_size"), [
    (1.5, (40, 30), (27, 20)),  # 41/1.5 -> 27, 27*1.5 = 40.5 -> 40 (round half to even, as upscale does)
    ((2.0, 3.0), (40, 30), (20, 10)),
    (4, (40, 28), (10, 7)),
])
def test_degrade_matches_the_size_upscale_makes_for_non_integer_and_per_axis_scales(scale, hr_size, lr_size):
    hr_cropped, lr = degrade(_photo((41, 30)), scale)
    assert hr_cropped.size == hr_size and lr.size == lr_size
    sx, sy = parse_scale(scale)
    assert (round(lr.width * sx), round(lr.height * sy)) == hr_cropped.size


def test_degrade_refuses_an_image_whose_input_would_be_under_four_pixels():
    with pytest.raises(InvalidInput, match="too small to evaluate at x4.*3x3 pixels"):
        degrade(_photo((15, 15)), 4)


def test_scales_and_shaves():
    assert parse_scale(2) == (2.0, 2.0) and parse_scale((2, 3.5)) == (2.0, 3.5)
    assert shave_for(2) == 2 and shave_for(2.5) == 3 and shave_for((2, 3)) == 3
    for bad in (1, 0.5, (2, 1), float("nan")):
        with pytest.raises(InvalidInput, match="above 1"):
            parse_scale(bad)


def test_prepare_hr_measures_eight_bit_colour_or_grey_without_alpha():
    assert prepare_hr(Image.new("RGBA", (8, 8), (10, 20, 30, 0))).getpixel((0, 0)) == (10, 20, 30)
    assert prepare_hr(Image.new("LA", (8, 8), (77, 0))).mode == "L"
    grey16 = Image.fromarray(np.full((8, 8), 257 * 200, np.uint16))
    assert prepare_hr(grey16).mode == "L" and prepare_hr(grey16).getpixel((0, 0)) == 200


def test_a_bicubic_row_scores_the_upscale_against_the_cropped_original():
    hr, lr = degrade(_photo((64, 48)), 2)
    row = run_method(hr, lr, 2, name="waves", method="bicubic")
    upscaled = sr.upscale(lr, 2, method="bicubic")
    assert row.image == "waves" and row.method == "bicubic"
    assert row.hr_size == (64, 48) and row.lr_size == (32, 24)
    assert row.psnr == pytest.approx(psnr(hr, upscaled, 2)) and row.ssim == pytest.approx(ssim(hr, upscaled, 2))
    assert 15 < row.psnr < 60 and row.wall_seconds >= 0 and row.cpu_seconds >= 0


def _row(image, method, value, seconds=1.0, fallback=None, blend=None):
    info = {"fallback": fallback} if fallback else {}
    if blend is not None:
        info["self_check"] = {"data": "held_out", "blend": blend}
    return EvalRow(image=image, method=method, hr_size=(64, 64), lr_size=(32, 32), psnr=value, ssim=value / 100,
                   wall_seconds=seconds, cpu_seconds=2 * seconds, info=info)


def test_summaries_give_the_mean_and_the_least_gain_over_bicubic_on_the_same_images():
    rows = [_row("a", "bicubic", 30.0), _row("a", "fast", 32.0, 10), _row("b", "bicubic", 20.0),
            _row("b", "fast", 20.5, 20)]
    bicubic, fast = summarize(rows)
    assert bicubic.method == "bicubic" and bicubic.mean_gain == 0.0 and bicubic.mean_psnr == 25.0
    assert fast.method == "fast" and fast.images == 2
    assert fast.mean_gain == pytest.approx(1.25) and fast.min_gain == pytest.approx(0.5)
    assert fast.mean_wall_seconds == 15 and fast.mean_cpu_seconds == 30


def test_the_table_has_a_line_per_image_the_gain_a_fallback_mark_the_blend_and_the_means():
    rows = [_row("a", "bicubic", 30.0), _row("a", "fast", 32.0, 10), _row("b", "bicubic", 20.0),
            _row("b", "fast", 19.5, 20, fallback="blend 0.40", blend=0.4)]
    lines = format_table(rows).splitlines()
    assert len(lines) == 2 + 2 + 1
    assert lines[2].startswith("| a | 32x32 -> 64x64 | 30.00 / 0.3000 | 32.00 / 0.3200 | +2.00 | - | 10.0 / 20.0 |")
    assert "| -0.50 * | 0.40 |" in lines[3]
    assert lines[4].startswith("| **mean** | 2 images | 25.00 / 0.2500 | 25.75 / 0.2575 | +0.75 (min -0.50) |")


@needs_core
def test_evaluate_runs_bicubic_and_a_tiny_zssr_on_the_same_degraded_image():
    config = sr.config_for("fast", TINY)
    rows = evaluate(_photo((48, 40)), 2, preset="fast", config=config, seed=0, device="cpu", name="waves")
    assert [row.method for row in rows] == ["bicubic", "fast+config"]
    assert all(row.hr_size == (48, 40) and row.lr_size == (24, 20) for row in rows)
    assert all(math.isfinite(row.psnr) and 0 < row.ssim <= 1 for row in rows)
    assert rows[1].info  # the core's account of the run (train steps, device, self-check)
