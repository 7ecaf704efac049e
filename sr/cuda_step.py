"""The training step captured once as a CUDA graph and replayed, so per-step kernel-launch overhead vanishes
(CUDA only; the CPU keeps `sr.train.train_stage`).

What is captured: the forward of the net on the lr_son, the L1 loss, the backward and Adam's update (capturable,
its learning rate a device tensor). What stays outside: drawing the hr_father and making its lr_son (their random
choices come from CPU generators, as in the core, so a job draws the same fathers as on the CPU path); they are
copied into the graph's static input buffers each step (a stage's crops all have one shape). The first
WARMUP_STEPS steps run eagerly on a side stream (they are real training steps, the warm-up CUDA graphs need),
then the graph is captured and replayed. `GraphOptions` (set for a block with `graph_options(...)`) can put several
steps into one graph, run back to back between two moments the host must look, and turn on cuDNN's benchmark mode;
sr.packed captures its K-slot step with the same `CapturedStep`.

`train_stage_graphed` is `sr.train.train_stage` with that step: the same test, policy, stop rule, hooks and
checkpoints. `sr.zssr` trains a fresh stage on CUDA with it when `config.cuda_graph` is on (the default); a resumed
stage runs the eager loop (the checkpoint holds Adam's state in the eager form, sr/checkpoint.py). Figures:
bench/RESULTS.md (bench/gpu_speed.py).
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from sr.config import ZSSRConfig
from sr.model import ZSSRNet, autocast_for, prepare_input
from sr.resize import Degradation
from sr.train import (ReconstructionTest, StageHooks, TrainingRun, after_step, checkpoint_when_due, next_sample,
                      train_stage)

WARMUP_STEPS = 3  # eager steps on a side stream before capture (the documented recipe: lazy inits happen there)


class CapturedStep:
    """`step()` on static buffers, CUDA only: its first WARMUP_STEPS calls run eagerly on a side stream, the next
    one captures it as one CUDA graph, and every call from then on replays it. `step` returns the tensor the caller
    reads (overwritten by each replay); `zero_grad` sets the gradients of what it trains to None.

    Whatever a replay must see changed (inputs, learning rates, a pack's slot masks) has to be written in place
    into tensors the step reads, never rebound: the graph holds the addresses it was captured with."""

    def __init__(self, step: Callable[[], torch.Tensor], zero_grad: Callable[[], None], device: torch.device):
        if device.type != "cuda":
            raise ValueError("a graphed training step needs the net on a CUDA device")
        self.step, self.zero_grad, self.device = step, zero_grad, device
        self.output: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0
        self.captures = 0  # stays 1 however often a pack's slots are refilled

    def __call__(self) -> torch.Tensor:
        if self.graph is None and self.calls < WARMUP_STEPS:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.zero_grad()
                self.output = self.step()
            torch.cuda.current_stream(self.device).wait_stream(side)
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()
        self.calls += 1
        return self.output

    def _capture(self) -> None:
        # Gradients set to None before capture: the captured backward allocates them from the graph's pool and each
        # replay writes them anew (no accumulation across steps). Capture records kernels without running them.
        self.zero_grad()
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: only this thread's unsafe calls break the capture (a worker's other threads never use CUDA)
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.output = self.step()
        self.captures += 1


@dataclass(frozen=True)
class GraphOptions:
    """How the graphed steps run; none changes what a step computes, only how fast (cuDNN's algorithm choice may
    round differently)."""

    # Training steps captured in one graph, run back to back between two moments the host must look (a test, a
    # policy check, a checkpoint, the end): one replay then launches them all. 1 = one step per replay.
    steps_per_replay: int = 1
    # cuDNN times its algorithms for each new convolution shape (in the eager warm-up steps, before capture) and
    # keeps the fastest, instead of its heuristic pick.
    cudnn_benchmark: bool = False


_options: ContextVar[GraphOptions] = ContextVar("graph_options", default=GraphOptions())


def current_graph_options() -> GraphOptions:
    return _options.get()


@contextmanager
def graph_options(**changes: Any) -> Iterator[GraphOptions]:
    """The graphed steps (sr.upscale's and sr.packed's) run with these GraphOptions fields changed in this context."""
    options = replace(_options.get(), **changes)
    if options.steps_per_replay < 1:
        raise ValueError("steps_per_replay must be at least 1")
    token = _options.set(options)
    try:
        yield options
    finally:
        _options.reset(token)


@contextmanager
def cudnn_benchmark(on: bool) -> Iterator[None]:
    """torch.backends.cudnn.benchmark set for a stage or a pack (a process-wide switch), restored after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def steps_before_the_host_looks(iteration: int, config: ZSSRConfig, checkpoint_every: int, limit: int) -> int:
    """How many training steps from `iteration` on can run back to back (at most `limit`): up to and including the
    first after which the host must look (`sr.train.after_step` tests or checks the policy, a checkpoint is due, or
    it is the stage's last). Between two such steps nothing the host decides can change."""
    for count in range(1, limit + 1):
        done = iteration + count - 1  # the iteration after_step will see
        if (done % config.run_test_every == 0 or (done + 1) % config.learning_rate_policy_check_every == 0
                or done + 1 >= config.max_iters or (checkpoint_every and (done + 1) % checkpoint_every == 0)):
            return count
    return limit


class GraphedTrainingStep:
    """Training steps (forward, L1, backward, Adam) on static buffers: `steps` of them back to back in one graph,
    and one alone for the rest; each captured after WARMUP_STEPS eager runs. capture=False runs the same steps
    eagerly (on any device: what the CPU tests compare)."""

    def __init__(self, net: ZSSRNet, config: ZSSRConfig, learning_rate: float, sample_shape: torch.Size,
                 son_shape: torch.Size | None = None, *, steps: int = 1, capture: bool = True):
        device = next(net.parameters()).device
        if capture and device.type != "cuda":
            raise ValueError("a graphed training step needs the net on a CUDA device")
        self.net = net
        self.config = config
        self.device = device
        self.steps = steps
        self.capture = capture
        # capturable: Adam's step count and bias corrections stay on the device; lr as a tensor the graph reads
        self.learning_rate = torch.tensor(learning_rate, dtype=torch.float32, device=device)
        self.optimizer = torch.optim.Adam(net.parameters(), lr=self.learning_rate, capturable=capture)
        self.static_father = torch.zeros((steps, *sample_shape), device=device)
        self.static_son = torch.zeros((steps, *(son_shape or sample_shape)), device=device)
        self._runs: dict[int, Callable[[], torch.Tensor]] = {}  # steps back to back -> what runs them

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        """The first captured graph, once there is one."""
        return next((run.graph for run in self._runs.values() if isinstance(run, CapturedStep) and run.graph), None)

    def set_learning_rate(self, learning_rate: float) -> None:
        self.learning_rate.fill_(learning_rate)  # in place: the captured graph reads this tensor
        # sr.train.after_step writes a drop into the groups as a float; before capture Adam reads the group's lr,
        # so the group must hold the tensor again
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _steps(self, count: int) -> torch.Tensor:
        """`count` steps on the first `count` father/son pairs -> their losses [count]."""
        losses = []
        for index in range(count):
            if index:
                self._zero_grad()  # within one graph too: each backward allocates its gradients anew
            with autocast_for(self.config, self.device):
                prediction = self.net(prepare_input(self.static_son[index], self.config))
            loss = F.l1_loss(prediction, self.static_father[index])
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        return torch.stack(losses)

    def _run(self, count: int) -> Callable[[], torch.Tensor]:
        if count not in self._runs:
            if self.capture:
                self._runs[count] = CapturedStep(lambda: self._steps(count), self._zero_grad, self.device)
            else:
                self._runs[count] = lambda: (self._zero_grad(), self._steps(count))[1]
        return self._runs[count]

    def __call__(self, hr_father: torch.Tensor, lr_son_up: torch.Tensor) -> torch.Tensor:
        """One step on this father/son pair -> the loss (a device tensor)."""
        return self.run([(hr_father, lr_son_up)])[0]

    def run(self, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One step per (hr_father, lr_son_up), in order: `steps` at a time, the rest one by one -> losses [n]."""
        losses = []
        position = 0
        while position < len(samples):
            count = self.steps if len(samples) - position >= self.steps else 1
            for index, (hr_father, lr_son_up) in enumerate(samples[position:position + count]):
                self.static_father[index].copy_(hr_father)
                self.static_son[index].copy_(lr_son_up)
            losses.append(self._run(count)().clone())  # a copy: the next replay overwrites the graph's output
            position += count
        return torch.cat(losses)


def train_stage_for(run: TrainingRun, config: ZSSRConfig):
    """The loop that trains this stage: graphed on CUDA for a fresh stage when config.cuda_graph, else eager."""
    device = next(run.net.parameters()).device
    if config.cuda_graph and device.type == "cuda" and run.iteration == 0:
        return train_stage_graphed
    return train_stage


def train_stage_graphed(run: TrainingRun, test: ReconstructionTest, sf: tuple[float, float],
                        degradation: Degradation, config: ZSSRConfig, hooks: StageHooks, *,
                        capture: bool = True) -> TrainingRun:
    """`sr.train.train_stage` with the graphed step (a fresh run only: the step owns Adam's state, so a
    checkpointed optimizer cannot be resumed into it), run with the current GraphOptions. capture=False runs the
    very same loop without capturing (the CPU tests)."""
    if run.iteration:
        raise ValueError("a graphed stage starts at step 0 (resume runs the eager loop)")
    options = current_graph_options()
    net = run.net
    net.train()
    step: GraphedTrainingStep | None = None
    learning_rate = run.policy.learning_rate
    checkpoint_every = hooks.checkpoint_every if hooks.on_checkpoint else 0
    with cudnn_benchmark(options.cudnn_benchmark):
        while run.iteration < config.max_iters and not run.finished:
            count = steps_before_the_host_looks(run.iteration, config, checkpoint_every, options.steps_per_replay)
            # Drawn in the lone loop's order (father, son, father, ...), each after its should_stop
            samples = [next_sample(run, sf, degradation, config, hooks) for _ in range(count)]
            if step is None:
                step = GraphedTrainingStep(net, config, learning_rate, samples[0][0].shape, samples[0][1].shape,
                                           steps=options.steps_per_replay, capture=capture)
                run.optimizer = step.optimizer  # what a checkpoint saves
            if run.policy.learning_rate != learning_rate:
                # after_step sets the drop on the optimizer's groups as a float; the graph reads the step's tensor
                learning_rate = run.policy.learning_rate
                step.set_learning_rate(learning_rate)
            losses = step.run(samples)
            for loss in losses:  # after_step acts only after the last of them (steps_before_the_host_looks)
                run.finished = after_step(run, test, config)
                run.iteration += 1
                hooks.on_step(run.iteration, loss, run.policy.learning_rate)
                checkpoint_when_due(run, hooks)
    run.finished = True
    return run
