"""A training run's whole state as bytes (torch.save), and back; bytes of another run are refused.

The state: the stage, the net, the optimizer, the policy's history, the step, the generators' states, the father
pool's bank state (the bank is warped again from it, not stored), and the outputs of finished gradual-SR stages.
Its fingerprint covers what the run depends on: the format, the config (but the inference tile memory and the
thread count), the input's pixels, the scale, the kernel and the seed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import torch

from sr.config import ZSSRConfig, fingerprint_fields
from sr.errors import InvalidInput
from sr.policy import PolicyState
from sr.train import TrainingRun

FORMAT = "sr-zssr-checkpoint/1"


def fingerprint(config: ZSSRConfig, lr_image: torch.Tensor, sf: tuple[float, float], kernel: torch.Tensor | None,
                seed: int) -> str:
    digest = hashlib.sha256()
    digest.update(FORMAT.encode())
    digest.update(json.dumps(fingerprint_fields(config), sort_keys=True, default=list).encode())
    digest.update(json.dumps([list(lr_image.shape), list(sf), seed]).encode())
    digest.update(lr_image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    if kernel is not None:
        digest.update(kernel.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_state(run: TrainingRun, *, fingerprint_hex: str, stage: int, stage_outputs: list[torch.Tensor],
               steps_before: int) -> bytes:
    state = {
        "format": FORMAT,
        "fingerprint": fingerprint_hex,
        "stage": stage,
        "steps_before": steps_before,  # training steps of the finished stages
        "iteration": run.iteration,
        "finished": run.finished,
        "net": {name: value.detach().cpu() for name, value in run.net.state_dict().items()},
        "optimizer": eager_optimizer_state(run.optimizer),
        "policy": dataclasses.asdict(run.policy),
        "generator": run.generator.get_state(),
        "pool": run.pool.state_dict(),
        "stage_outputs": [output.detach().cpu() for output in stage_outputs],
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_state(data: bytes, fingerprint_hex: str) -> dict:
    """The saved state; InvalidInput when the bytes are not a checkpoint of this very run."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable bytes: the caller starts over
        raise InvalidInput(f"the checkpoint cannot be read ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InvalidInput("the checkpoint is not a ZSSR training state of this version")
    if state.get("fingerprint") != fingerprint_hex:
        raise InvalidInput("the checkpoint belongs to another image, config, scale, kernel or seed")
    return state


def restore_run(run: TrainingRun, state: dict) -> TrainingRun:
    """`run` (freshly built for the saved stage) with the saved net, optimizer, policy, generators and step."""
    run.net.load_state_dict(state["net"])
    run.optimizer.load_state_dict(state["optimizer"])
    policy = state["policy"]
    run.policy = PolicyState(**{key: tuple(value) if isinstance(value, list) else value for key, value in policy.items()})
    run.generator.set_state(state["generator"])
    run.pool.load_state_dict(state["pool"])
    run.iteration = int(state["iteration"])
    run.finished = bool(state["finished"])
    return run


def eager_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state on the CPU, as an eager Adam holds it. A CUDA-graph step's Adam (sr/cuda_step.py) is
    `capturable`, with its learning rate a device tensor; a resume runs the eager loop, on any device, so the
    checkpoint keeps a plain float and capturable off (its step counts then load onto the CPU, where eager Adam
    keeps them)."""
    state = _to_cpu(optimizer.state_dict())  # new dicts and lists: the live optimizer is left as it is
    for group in state["param_groups"]:
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
        if group.get("capturable"):
            group["capturable"] = False
    return state


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item) for item in value]
    return value
