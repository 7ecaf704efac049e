"""Warm a device up before its first job: one tiny ZSSR job per config.

The first CUDA work of a process pays for the context, the cuBLAS and cuDNN handles and loading every kernel it
uses (CUDA loads a kernel's module on its first launch): the first job of a process takes several times as long
as the next (bench/RESULTS.md, GPU). A long-lived worker pays that once, but a
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

# pixels: crops and tiles of the presets' own sizes or smaller, so the warm-up costs little beside a job (its
# seconds per device: bench/RESULTS.md)
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
