"""The self-check on held-out data (sr/holdout.py, sr.zssr.scale_held_out_check): the figures, the probe that never
trains on the image at its own scale, and what upscale reports."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import sr
from sr.augment import FatherSource, dihedral
from sr.holdout import HeldOutData, held_out_figures, probe_config
from sr.model import build_net
from sr.resize import Degradation
from sr.zssr import build_run, scale_held_out_check, self_check_blend
from tests.sr.conftest import tiny


def overfit_case():
    """A rebuild that is exact on the pixels it trained on and overshoots elsewhere: a net that memorised."""
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 64, 64, generator=generator)
    son_up = target + 0.05 * torch.randn(1, 3, 64, 64, generator=generator)  # cubic's rebuild: off by noise
    seen = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    seen[..., :, :52] = True  # the columns the net trained on
    # the memorised net: the target itself where it trained; elsewhere cubic's error doubled
    rebuild = torch.where(seen, target, son_up + (son_up - target))
    return target, son_up, seen, rebuild


def test_a_net_that_overfits_is_blended_toward_cubic_on_held_out_data_not_on_its_training_data():
    target, son_up, seen, rebuild = overfit_case()
    unseen = ~seen.expand_as(target)
    held_out = HeldOutData(target[unseen].reshape(1, 3, 64, -1), son_up[unseen].reshape(1, 3, 64, -1))
    figures = held_out_figures(lambda _: rebuild[unseen].reshape(1, 3, 64, -1), held_out)
    assert figures.net_mse > figures.cubic_mse and figures.gain_db < 0
    # least squares on the held-out data: cubic + w * (cubic - target) is best at w = 0: plain cubic
    assert figures.weight == pytest.approx(0.0, abs=1e-6) and figures.blend == 0.0
    # the reference's test reads the whole image, mostly training data: it keeps the net
    assert self_check_blend(rebuild, son_up, target) == 1.0


def test_the_held_out_weight_is_the_least_squares_blend():
    target, son_up, _, _ = overfit_case()
    data = HeldOutData(target, son_up)
    # overshooting by half of the target's distance from cubic: w = 1 / 1.5 blends it exactly onto the target
    figures = held_out_figures(lambda s: s + 1.5 * (target - s), data)
    assert figures.weight == pytest.approx(2 / 3, abs=1e-6) and figures.blend == 0.67
    exact = held_out_figures(lambda s: target, data)
    assert exact.weight == pytest.approx(1.0) and exact.blend == 1.0 and exact.net_mse == 0.0
    assert held_out_figures(lambda s: s, data).blend == 0.0  # no change from cubic: nothing to weigh


def test_the_probe_never_trains_on_the_image_at_its_own_scale():
    # Half of the reference's fathers are the image at its own scale (as-is crops and their dihedral transforms):
    # the probe's pool must draw none of them, only affine fathers downscaled to at most the probe scale.
    image = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    config = tiny(augment_pool_size=8, self_check_probe_steps=10, self_check_probe_crop=0)
    probe = probe_config(config)
    assert probe.max_iters == 10 and probe.augment_min_scale == pytest.approx(0.5 * 0.6) and probe.crop_size == 16
    net = build_net(1, probe, torch.device("cpu"), torch.Generator().manual_seed(0))
    run = build_run(net, image, [FatherSource(image, 1.0)], (2.0, 2.0), Degradation(), probe,
                    torch.Generator().manual_seed(0), max_scale=probe.self_check_probe_scale)
    windows = image.unfold(2, 16, 1).unfold(3, 16, 1)[0, 0]  # every 16x16 window of the image [25,25,16,16]
    at_own_scale = {tuple(dihedral(windows[i, j][None, None], k).flatten().tolist())
                    for i in range(25) for j in range(25) for k in range(8)}
    fathers = [run.pool.sample(1) for _ in range(40)]
    assert all(tuple(father.flatten().tolist()) not in at_own_scale for father in fathers)
    # the same pool with the reference's probabilities does draw them: the test can fail
    reference = build_run(net, image, [FatherSource(image, 1.0)], (2.0, 2.0), Degradation(), config,
                          torch.Generator().manual_seed(0))
    assert any(tuple(reference.pool.sample(1).flatten().tolist()) in at_own_scale for _ in range(40))


def test_the_scale_held_out_check_is_deterministic_in_its_seed(photo_tensor):
    config = tiny(self_check_probe_steps=10)
    first = scale_held_out_check(photo_tensor, (2.0, 2.0), Degradation(), config, seed=3)
    assert first == scale_held_out_check(photo_tensor, (2.0, 2.0), Degradation(), config, seed=3)
    assert first != scale_held_out_check(photo_tensor, (2.0, 2.0), Degradation(), config, seed=4)
    assert 0.0 <= first.weight <= 1.0 and first.cubic_mse > 0


def test_upscale_reports_the_held_out_check_and_blends_by_its_weight(photo):
    result = sr.upscale(photo, 2, config=tiny(self_check_probe_steps=10), seed=0)
    info = result.info["sr"]
    check = info["self_check"]
    assert check["data"] == "held_out" and check["probe_steps"] == 10
    assert set(check) == {"data", "net_mse", "cubic_mse", "gain_db", "weight", "probe_steps", "blend", "decision"}
    expected = {1.0: None, 0.0: "cubic"}.get(check["blend"], f"blend {check['blend']:.2f}")
    assert info["fallback"] == expected
    assert check["decision"] == {None: "net", "cubic": "cubic"}.get(info["fallback"], "blend")
    assert info["train_steps"] == 20  # the main run's steps; the probe's are apart
    plain = sr.upscale(photo, 2, config=tiny(self_check_probe_steps=0), seed=0).info["sr"]["self_check"]
    assert plain["data"] == "training" and "probe_steps" not in plain


def test_a_probe_is_refused_a_scale_at_or_above_the_image():
    with pytest.raises(sr.InvalidInput, match="self_check_probe_scale"):
        tiny(self_check_probe_scale=1.0)
    with pytest.raises(sr.InvalidInput, match="self_check_probe_steps"):
        tiny(self_check_probe_steps=-1)
