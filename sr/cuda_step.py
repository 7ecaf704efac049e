"""The training step captured once as a CUDA graph and replayed, so per-step kernel-launch overhead vanishes
(CUDA only; the CPU keeps `sr.train.train_stage`).

What is captured: the forward of the net on the lr_son, the L1 loss, the backward and Adam's update (capturable,
its learning rate a device tensor). What stays outside: drawing the hr_father and making its lr_son (their random
choices come from CPU generators, as in the core, so a job draws the same fathers as on the CPU path); they are
copied into the graph's static input buffers each step (a stage's crops all have one shape). The first
WARMUP_STEPS steps run eagerly on a side stream (they are real training steps, the warm-up CUDA graphs need),
then the graph is captured and replayed.

`train_stage_graphed` is `sr.train.train_stage` with that step: the same test, policy, stop rule, hooks and
checkpoints. `sr.zssr` trains a fresh stage on CUDA with it when `config.cuda_graph` is on (the default); a resumed
stage runs the eager loop (the checkpoint holds Adam's state in the eager form, sr/checkpoint.py). Measured on an
H200 (bench/RESULTS.md): the paper preset's step 384 -> 1247 steps/s.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sr.config import ZSSRConfig
from sr.model import ZSSRNet, autocast_for, prepare_input
from sr.resize import Degradation
from sr.train import (ReconstructionTest, StageHooks, TrainingRun, after_step, checkpoint_when_due, next_sample,
                      train_stage)

WARMUP_STEPS = 3  # eager steps on a side stream before capture (the documented recipe: lazy inits happen there)


class GraphedTrainingStep:
    """One training step (forward, L1, backward, Adam) on static buffers, captured after WARMUP_STEPS eager steps."""

    def __init__(self, net: ZSSRNet, config: ZSSRConfig, learning_rate: float, sample_shape: torch.Size,
                 son_shape: torch.Size | None = None):
        device = next(net.parameters()).device
        if device.type != "cuda":
            raise ValueError("a graphed training step needs the net on a CUDA device")
        self.net = net
        self.config = config
        self.device = device
        # capturable: Adam's step count and bias corrections stay on the device; lr as a tensor the graph reads
        self.learning_rate = torch.tensor(learning_rate, dtype=torch.float32, device=device)
        self.optimizer = torch.optim.Adam(net.parameters(), lr=self.learning_rate, capturable=True)
        self.static_father = torch.zeros(sample_shape, device=device)
        self.static_son = torch.zeros(son_shape or sample_shape, device=device)
        self.static_loss: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.steps = 0

    def set_learning_rate(self, learning_rate: float) -> None:
        self.learning_rate.fill_(learning_rate)  # in place: the captured graph reads this tensor
        # sr.train.after_step writes a drop into the groups as a float; before capture Adam reads the group's lr,
        # so the group must hold the tensor again
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate

    def _forward_backward_update(self) -> torch.Tensor:
        with autocast_for(self.config, self.device):
            prediction = self.net(prepare_input(self.static_son, self.config))
        loss = F.l1_loss(prediction, self.static_father)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def __call__(self, hr_father: torch.Tensor, lr_son_up: torch.Tensor) -> torch.Tensor:
        """One step on this father/son pair -> the loss (a device tensor, overwritten by the next replay)."""
        self.static_father.copy_(hr_father)
        self.static_son.copy_(lr_son_up)
        if self.graph is None and self.steps < WARMUP_STEPS:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=True)
                self.static_loss = self._forward_backward_update()
            torch.cuda.current_stream(self.device).wait_stream(side)
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()
        self.steps += 1
        return self.static_loss

    def _capture(self) -> None:
        # Gradients set to None before capture: the captured backward allocates them from the graph's pool and each
        # replay writes them anew (no accumulation across steps). Capture records kernels without running them.
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: only this thread's unsafe calls break the capture (a worker's other threads never use CUDA)
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.static_loss = self._forward_backward_update()


def train_stage_for(run: TrainingRun, config: ZSSRConfig):
    """The loop that trains this stage: graphed on CUDA for a fresh stage when config.cuda_graph, else eager."""
    device = next(run.net.parameters()).device
    if config.cuda_graph and device.type == "cuda" and run.iteration == 0:
        return train_stage_graphed
    return train_stage


def train_stage_graphed(run: TrainingRun, test: ReconstructionTest, sf: tuple[float, float],
                        degradation: Degradation, config: ZSSRConfig, hooks: StageHooks) -> TrainingRun:
    """`sr.train.train_stage` with the graphed step (a fresh run only: the step owns Adam's state, so a
    checkpointed optimizer cannot be resumed into it)."""
    if run.iteration:
        raise ValueError("a graphed stage starts at step 0 (resume runs the eager loop)")
    net = run.net
    net.train()
    step: GraphedTrainingStep | None = None
    learning_rate = run.policy.learning_rate
    while run.iteration < config.max_iters and not run.finished:
        hr_father, lr_son_up = next_sample(run, sf, degradation, config, hooks)
        if step is None:
            step = GraphedTrainingStep(net, config, learning_rate, hr_father.shape, lr_son_up.shape)
            run.optimizer = step.optimizer  # what a checkpoint saves
        if run.policy.learning_rate != learning_rate:
            # after_step sets the drop on the optimizer's groups as a float; the graph reads the step's tensor
            learning_rate = run.policy.learning_rate
            step.set_learning_rate(learning_rate)
        loss = step(hr_father, lr_son_up)
        run.finished = after_step(run, test, config)
        run.iteration += 1
        hooks.on_step(run.iteration, loss, run.policy.learning_rate)
        checkpoint_when_due(run, hooks)
    run.finished = True
    return run
