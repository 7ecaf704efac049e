"""The client is a distribution of its own that needs httpx only: nothing of the service, no torch, no Pillow."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys


def test_it_declares_httpx_as_its_only_dependency():
    assert importlib.metadata.requires("zssr-upscaler-client") == ["httpx>=0.27"]


def test_importing_it_loads_nothing_of_ours_and_no_heavy_library(tmp_path):
    probe = ("import sys, zssr_client, zssr_client.__main__; "
             "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                cwd=tmp_path).stdout.split())
    assert "httpx" in loaded
    assert not loaded & {"api", "worker", "sr", "jobs", "tests", "torch", "numpy", "PIL", "fastapi", "redis", "celery"}
