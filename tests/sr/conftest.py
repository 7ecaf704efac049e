"""Tiny configs and images for the sr tests: each ZSSR run takes well under a second on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import sr

# channels_last and bfloat16 off: with crops this small, oneDNN's per-shape set-up costs more than the steps.
TINY = {"max_iters": 20, "min_iters": 20, "crop_size": 16, "width": 8, "depth": 3, "run_test_every": 5,
        "back_projection_iters": [1], "output_flip": False, "channels_last": False, "precision": "float32",
        "batch_size": 1, "test_crop": 0, "augment_pool_size": 16, "inference_memory_mb": 16,
        "self_check_probe_steps": 10, "self_check_probe_crop": 16}


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    torch.set_num_threads(1)  # the machine is shared; tiny nets gain nothing from more


@pytest.fixture
def tiny_config() -> sr.ZSSRConfig:
    return sr.config_for("fast", TINY)


def tiny(**overrides) -> sr.ZSSRConfig:
    return sr.config_for("fast", {**TINY, **overrides})


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A 40x32 crop of scikit-image's astronaut (RGB)."""
    return Image.fromarray(skimage.data.astronaut()).crop((200, 80, 240, 112))


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


@pytest.fixture(scope="session")
def photo_tensor(photo) -> torch.Tensor:
    return torch.from_numpy(as_array(photo) / 255).permute(2, 0, 1)[None].float().contiguous()


@pytest.fixture
def no_tf32():
    """float32 convolutions in float32: TF32 (cuDNN's default) rounds to 10 bits, and a grouped or a graphed
    convolution may take another algorithm than the plain one, so the comparison would measure TF32, not us."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
