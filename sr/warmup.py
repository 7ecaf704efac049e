"""Warm a device up before its first job: one tiny ZSSR job per config.

The first CUDA work of a process pays for the context, the cuBLAS and cuDNN handles and loading every kernel it
uses (CUDA loads a kernel's module on its first launch); measured on an H200 (bench/RESULTS.md) the first paper
job of a process took 8.7 s where the jobs after it took 1.0-2.5 s. A long-lived worker pays that once, but a
user's first job after every start or restart should not: `warm_up` runs a job of WARM_UP_STEPS steps on a
small image for each config, so training (eager steps, the CUDA-graph capture and its replay), the
reconstruction test and the tiled, self-ensembled inference with back-projection have each run once with the
job's own precision and memory format.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import numpy as np
from PIL import Image

from sr.config import PRESETS, ZSSRConfig
from sr.cuda_step import WARMUP_STEPS
from sr.zssr import upscale

# pixels: crops and tiles of the presets' own sizes or smaller; 2.7 s for the three presets on the 2-core VM, about
# 0.1 s each on an H200 once CUDA is up (the first pays its start-up: 5-6 s)
WARM_UP_SIDE = 96
WARM_UP_STEPS = WARMUP_STEPS + 5  # past the graph's eager warm-up steps, so the captured step is replayed too


def warm_up(device: str | None = None, configs: Mapping[str, ZSSRConfig] | None = None) -> dict[str, float]:
    """Run one tiny x2 ZSSR job per config (default: every preset) on `device`; seconds each took, by name.

    The jobs keep each config's architecture, precision and memory format and cap only its steps; the
    self-check is off so that the inference runs even though a net this briefly trained loses to cubic."""
    image = warm_up_image(WARM_UP_SIDE)
    seconds = {}
    for name, config in (configs if configs is not None else PRESETS).items():
        brief = dataclasses.replace(config, max_iters=WARM_UP_STEPS, self_check=False, checkpoint_every=0)
        started = time.perf_counter()
        upscale(image, 2, config=brief, device=device, seed=0)  # returns a CPU image: the device work is done
        seconds[name] = time.perf_counter() - started
    return seconds


def warm_up_image(side: int) -> Image.Image:
    """A side x side RGB image with edges and texture (a flat one would train nothing worth the name)."""
    rows, cols = np.mgrid[0:side, 0:side]
    pattern = np.stack([(rows * 7) % 256, (cols * 5) % 256, ((rows + cols) * 3) % 256], axis=-1)
    return Image.fromarray(pattern.astype(np.uint8), "RGB")
