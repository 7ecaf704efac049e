"""GPU speed (issue 6): training steps/s, seconds per job, MFU, peak memory, packing and torch.compile, per device.

On whatever device is there (`--device cuda|cpu`, default cuda when available), on scikit-image's astronaut
(512x512) at x2:
- steps/s of the core's eager training loop (`sr.train.train_stage`, as `sr.upscale` runs it on the CPU) for each
  preset, of a naive seed-style loop in the same run (batch 1, crops and sons cut on the host, `.item()` every
  step, no bfloat16, no channels_last), and their ratio; on CUDA also of the loop with the step replayed from a
  CUDA graph (`sr.cuda_step`, as `sr.upscale` trains a fresh stage there);
- model FLOP utilisation of the training step: convolution FLOPs counted analytically (forward, weight gradient,
  input gradient but for the first layer, plus the reconstruction test amortised over its interval) over the peak
  of the device (`--peak-tflops`, else NVIDIA's dense datasheet figure for an H100/H200; on a CPU only the achieved
  TFLOP/s unless --peak-tflops is given);
- peak memory: torch.cuda.max_memory_allocated per preset on CUDA; on the CPU the process's peak RSS (a high-water
  mark: it only grows from one line to the next);
- seconds per job: `sr.upscale` end to end (training + inference), split at the first inference report; on CUDA
  with the graphed step (the default) and with `cuda_graph=False`;
- the first two jobs of a fresh process (`--first-job-presets`), cold and after `sr.warm_up` (what a gpu-queue
  worker runs before it takes a job); the seconds-per-job table comes after `sr.warm_up` in this process;
- jobs/hour for `--pack-jobs` (16) jobs of 256x256 crops of six photos: `sr.packed.upscale_many` with K jobs at
  once against `sr.upscale` one at a time, and how far each packed result is from its one-at-a-time result;
- forward + backward of K nets: one grouped convolution per layer, vmap, per-slot convolutions ("streams"), and the
  K nets one after another;
- torch.compile of the net (forward and backward of the training step) on and off, compile time apart.
`--steps N` caps the measured training steps (and the jobs' max_iters, with the self-check off so the inference
being timed always runs) so a CPU run stays short: a capped job is not the preset's full job, and the tables say so.

`--targets` prints only issue 21's measures, one line each: --pack-jobs (16) jobs of 256x256 at `fast`, K
(--target-k, 8) packed through sr.packed's graphed step per packing and cuDNN benchmark mode, against one graphed
job at a time; the packed jobs' PSNR against their lone runs (the same crops downscaled by 2); the paper job
512x512 -> 1024x1024, warm, per variant of its step (cuDNN benchmark, steps per replay, channels_last, bfloat16)
with its MFU; then `SUMMARY gpu_pack K=8 graphed jobs_per_hour_ratio=R device=NAME` (the best packing) and
`SUMMARY gpu_paper seconds=S device=NAME` (the paper job as sr.upscale runs it by default). `--smoke` runs the same
code on tiny configs (seconds, on a CPU too); bench/gpu_check.sh runs it all on a lent GPU.

  python bench/gpu_speed.py                                      # on an H100: every figure, uncapped
  python bench/gpu_speed.py --targets                            # issue 21's lines (bench/gpu_check.sh)
  nice -n 10 python bench/gpu_speed.py --device cpu --threads 1 --targets --smoke
  nice -n 10 python bench/gpu_speed.py --device cpu --threads 1 --steps 20 --warmup 3 --e2e-presets fast,balanced \\
      --pack-side 96 --pack-steps 20 --compile-presets fast --first-job-presets ''  # the CPU run of bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402  (a dev extra: the photos)

import sr  # noqa: E402
from sr.packed import PACKINGS, StackedNets, upscale_many  # noqa: E402
from sr.model import autocast_for, build_net, prepare_input  # noqa: E402
from sr.resize import Degradation, cubic_resize, son_size  # noqa: E402
from sr.train import ReconstructionTest, StageHooks, train_stage  # noqa: E402
from sr.cuda_step import graph_options, train_stage_graphed  # noqa: E402
from sr.zssr import build_run  # noqa: E402
from sr.augment import FatherSource  # noqa: E402

SF = (2.0, 2.0)
PRESET_NAMES = ("paper", "balanced", "fast")
# NVIDIA datasheet peaks, dense (no sparsity), TFLOP/s: (bfloat16, TF32 - cuDNN's default for float32 convs, FP32)
PEAK_TFLOPS = {
    "H100 PCIe": (756.0, 378.0, 51.0),
    "H100": (989.4, 494.7, 66.9),  # SXM (also "H100 80GB HBM3")
    "H200": (989.4, 494.7, 66.9),
}
PACK_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--presets", default=",".join(PRESET_NAMES), help="presets for steps/s, naive and MFU")
    parser.add_argument("--steps", type=int, default=0, help="measured training steps (0 = the preset's max_iters)")
    parser.add_argument("--warmup", type=int, default=5, help="training steps before the clock starts")
    parser.add_argument("--e2e-presets", default=",".join(PRESET_NAMES), help="presets timed end to end ('' = none)")
    parser.add_argument("--first-job-presets", default="paper,fast",
                        help="presets whose first job of a fresh process is timed, cold and after sr.warm_up "
                             "('' = none)")
    parser.add_argument("--first-job-child", default="", help=argparse.SUPPRESS)  # a fresh process's part of it
    parser.add_argument("--child-warm-up", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pack-jobs", type=int, default=16)
    parser.add_argument("--pack-side", type=int, default=256)
    parser.add_argument("--pack-k", default="4,8,16", help="pack sizes to time ('' = no packing figures)")
    parser.add_argument("--pack-preset", default="fast", choices=PRESET_NAMES)
    parser.add_argument("--pack-steps", type=int, default=0, help="max_iters of each packed job (0 = the preset's)")
    parser.add_argument("--packing", default="grouped", choices=("grouped", "vmap"))
    parser.add_argument("--stack-k", default="4,8", help="K for the stacked-step comparison ('' = none)")
    parser.add_argument("--stack-preset", default="fast", choices=PRESET_NAMES)
    parser.add_argument("--compile-presets", default=",".join(PRESET_NAMES), help="'' = no torch.compile figures")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak for MFU (else a table)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--targets", action="store_true",
                        help="only issue 21's measures (graphed packing, the paper step's variants), one line each, "
                             "then the SUMMARY lines")
    parser.add_argument("--target-k", type=int, default=8, help="--targets: the pack size")
    parser.add_argument("--target-packings", default="grouped,streams", help="--targets: packings to time")
    parser.add_argument("--paper-variants", default="", help="--targets: the paper variants to time ('' = all)")
    parser.add_argument("--smoke", action="store_true",
                        help="--targets on tiny configs and images (a few seconds on a CPU): checks the code only")
    args = parser.parse_args()
    if args.smoke:
        args.pack_jobs, args.pack_side, args.target_k = min(args.pack_jobs, 4), min(args.pack_side, 24), 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    photo = Image.fromarray(data.astronaut())  # 512x512 RGB
    if args.first_job_child:
        print(json.dumps(first_jobs_of_this_process(args.first_job_child, photo, device, args)))
        return 0
    figures: dict = {"device": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "load_average_before": load_average(), "argv": sys.argv[1:]}
    print(f"device: {figures['device']}, torch {torch.__version__}, {figures['threads']} threads, "
          f"load average {figures['load_average_before']}")
    if args.targets:
        figures["targets"] = run_targets(device, args)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return 0
    figures["presets"] = [measure_preset(name, photo, device, args) for name in split(args.presets)]
    print_preset_table(figures["presets"], args)
    figures["first_jobs"] = [time_first_jobs(name, warm, args) for name in split(args.first_job_presets)
                             for warm in (False, True)]
    print_first_jobs(figures["first_jobs"])
    if split(args.e2e_presets):
        # as a worker does before its first job: the tables below time jobs, not the process's CUDA start-up
        figures["warm_up_seconds"] = sr.warm_up(device.type)
    # On CUDA each preset twice: as sr.upscale runs it (the training step replayed from a CUDA graph) and eager
    graph_settings = (True, False) if device.type == "cuda" else (True,)
    figures["end_to_end"] = [time_end_to_end(name, photo, device, args, graph) for name in split(args.e2e_presets)
                             for graph in graph_settings]
    print_end_to_end(figures["end_to_end"], args)
    if split(args.pack_k):
        figures["packing"] = time_packing(device, args)
        print_packing(figures["packing"], args)
    figures["stacked_step"] = [time_stacked_step(int(k), device, args) for k in split(args.stack_k)]
    print_stacked_step(figures["stacked_step"], args)
    figures["compile"] = [time_compile(name, photo, device, args) for name in split(args.compile_presets)]
    print_compile(figures["compile"])
    figures["load_average_after"] = load_average()
    print(f"load average after: {figures['load_average_after']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


# --- the core's training loop, timed ---

def training_config(name: str, steps: int, warmup: int) -> sr.ZSSRConfig:
    """The preset with max_iters = warmup + steps and the policy kept from stopping it (min_iters = max_iters)."""
    preset = sr.PRESETS[name]
    total = warmup + (steps or preset.max_iters)
    return dataclasses.replace(preset, max_iters=total, min_iters=total, checkpoint_every=0)


def measure_preset(name: str, photo: Image.Image, device: torch.device, args: argparse.Namespace) -> dict:
    config = training_config(name, args.steps, args.warmup)
    measured = config.max_iters - args.warmup
    reset_peak_memory(device)
    rate = core_steps_per_second(photo, config, device, args.warmup)
    memory = peak_memory_mib(device)
    graphed = graphed_steps_per_second(photo, config, device, args.warmup)
    naive = naive_steps_per_second(photo, config, device, args.warmup, measured)
    flops = training_step_flops(config, crop_of(photo, config), test_pixels(photo, config))
    peak, peak_source = device_peak_tflops(device, config, args.peak_tflops)
    result = {"preset": name, "measured_steps": measured, "crop": config.crop_size, "batch": config.batch_size,
              "steps_per_second": rate.wall, "naive_steps_per_second": naive.wall, "ratio": rate.wall / naive.wall,
              "steps_per_cpu_second": rate.cpu, "naive_steps_per_cpu_second": naive.cpu,
              "graphed_steps_per_second": graphed.wall if graphed else None,
              "cpu_ratio": rate.cpu / naive.cpu,
              "gflop_per_step": flops / 1e9, "achieved_tflops": flops * rate.wall / 1e12, "peak_tflops": peak,
              "peak_source": peak_source, "mfu": flops * rate.wall / (peak * 1e12) if peak else None,
              "peak_memory_mib": memory, "memory_kind": memory_kind(device)}
    graphed_text = f", CUDA graph {graphed.wall:.2f}" if graphed else ""
    print(f"  {name}: {rate.wall:.2f} steps/s (naive {naive.wall:.2f}{graphed_text}), per CPU-second {rate.cpu:.2f} "
          f"(naive {naive.cpu:.2f}), {flops / 1e9:.2f} GFLOP/step, {memory:.0f} MiB")
    return result


def graphed_steps_per_second(photo: Image.Image, config: sr.ZSSRConfig, device: torch.device,
                             warmup: int) -> Stamp | None:
    """The same loop with the step replayed from a CUDA graph (sr.cuda_step, what sr.upscale trains a fresh stage
    with on CUDA); None on a CPU. A failure is printed, not raised, so the run's other figures still come out."""
    if device.type != "cuda":
        return None
    try:
        return core_steps_per_second(photo, config, device, warmup, stage=train_stage_graphed)
    except Exception as error:  # noqa: BLE001 - the other figures of the run must still come out
        print(f"  CUDA-graph step failed: {type(error).__name__}: {error}")
        return None


def core_steps_per_second(photo: Image.Image, config: sr.ZSSRConfig, device: torch.device, warmup: int,
                          net_wrapper=None, stage=train_stage) -> Stamp:
    """Steps per second (wall, CPU) of sr.train.train_stage over steps warmup+1 .. max_iters (device synced)."""
    lr_image = sr.images.to_tensor(photo)[0].to(device)
    generator = torch.Generator().manual_seed(0)
    net = build_net(lr_image.shape[1], config, device, generator)
    run = build_run(net, lr_image, [FatherSource(lr_image, 1.0)], SF, Degradation(), config, generator)
    if net_wrapper is not None:
        run.net = net_wrapper(net)
    test = ReconstructionTest(lr_image, SF, Degradation(), config, torch.Generator().manual_seed(0))
    marks: dict[int, Stamp] = {}

    def on_step(step: int, loss: torch.Tensor, learning_rate: float) -> None:
        if step in (warmup, config.max_iters):
            synchronize(device)
            marks[step] = Stamp.now()

    stage(run, test, SF, Degradation(), config, StageHooks(on_step=on_step))
    return per_second(config.max_iters - warmup, marks[config.max_iters].since(marks[warmup]))


def per_second(count: float, elapsed: Stamp) -> Stamp:
    return Stamp(count / elapsed.wall, count / max(elapsed.cpu, 1e-9))


def naive_steps_per_second(photo: Image.Image, config: sr.ZSSRConfig, device: torch.device, warmup: int,
                           steps: int) -> Stamp:
    """The seed-style loop: batch 1, a random dihedral crop and its son cut on the host (NumPy + CPU resize) and
    copied to the device each step, float32, contiguous memory, Adam, `loss.item()` every step."""
    image = np.asarray(photo, dtype=np.float32) / 255  # [H,W,C] on the host
    naive_config = dataclasses.replace(config, precision="float32", channels_last=False)
    net = build_net(image.shape[2], naive_config, device, torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    rng = np.random.default_rng(0)
    side = min(config.crop_size, *image.shape[:2])
    started = Stamp.now()
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            started = Stamp.now()
        top, left = rng.integers(image.shape[0] - side + 1), rng.integers(image.shape[1] - side + 1)
        crop = np.rot90(image[top:top + side, left:left + side], rng.integers(4))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        hr_father = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None]
        lr_son_up = cubic_resize(cubic_resize(hr_father, son_size(side, side, SF)), (side, side))
        hr_father, lr_son_up = hr_father.to(device), lr_son_up.to(device)
        loss = F.l1_loss(net(lr_son_up), hr_father)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the seed's per-step host sync (it logged every loss)
    synchronize(device)
    return per_second(steps, Stamp.now().since(started))


# --- FLOPs and peaks ---

def crop_of(photo: Image.Image, config: sr.ZSSRConfig) -> int:
    return min(config.crop_size, *photo.size)


def test_pixels(photo: Image.Image, config: sr.ZSSRConfig) -> int:
    width, height = photo.size
    if config.test_crop <= 0:
        return width * height
    return min(config.test_crop, height) * min(config.test_crop, width)


def conv_flops_per_pixel(config: sr.ZSSRConfig, channels: int = 3) -> list[int]:
    """Multiply-adds x 2 of each 3x3 layer per output pixel."""
    sizes = [channels] + [config.width] * (config.depth - 1) + [channels]
    return [2 * 9 * fan_in * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:])]


def training_step_flops(config: sr.ZSSRConfig, crop: int, test_pixel_count: int) -> float:
    """Convolution FLOPs of one training step: forward, weight gradient, input gradient (not for the first layer,
    whose input needs none), plus one reconstruction-test forward every run_test_every steps."""
    per_pixel = conv_flops_per_pixel(config)
    pixels = crop * crop * config.batch_size
    train = pixels * (2 * sum(per_pixel) + sum(per_pixel[1:]))
    return train + test_pixel_count * sum(per_pixel) / config.run_test_every


def device_peak_tflops(device: torch.device, config: sr.ZSSRConfig, given: float) -> tuple[float | None, str]:
    if given:
        return given, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (bf16, tf32, fp32) in PEAK_TFLOPS.items():
            if key in name:
                if config.precision == "bfloat16":
                    return bf16, f"{key} bf16 datasheet"
                if torch.backends.cudnn.allow_tf32:
                    return tf32, f"{key} TF32 datasheet (cuDNN allows TF32)"
                return fp32, f"{key} FP32 datasheet"
        return None, f"unknown GPU {name!r}: pass --peak-tflops"
    # A measured matmul "ceiling" on a shared CPU swings with the neighbours' load (it once read below what the
    # training step itself reached): no peak is made up here.
    return None, "CPU: pass --peak-tflops for MFU"


# --- whole jobs ---

def job_config(name: str, steps: int) -> sr.ZSSRConfig:
    """The preset; with a step cap, also without the self-check: a net trained a few steps may lose to cubic, and
    the fallback would skip the very inference being timed."""
    preset = sr.PRESETS[name]
    return dataclasses.replace(preset, max_iters=min(steps, preset.max_iters), self_check=False) if steps else preset


def time_end_to_end(name: str, photo: Image.Image, device: torch.device, args: argparse.Namespace,
                    cuda_graph: bool = True) -> dict:
    config = dataclasses.replace(job_config(name, args.steps), cuda_graph=cuda_graph)
    figures = {"preset": name, **timed_upscale(photo, config, device)}
    print(f"  {name} end to end{' (CUDA graph)' if figures['cuda_graph'] else ''}: {figures['seconds']:.2f} s, "
          f"{figures['cpu_seconds']:.2f} CPU-s ({figures['train_steps']} steps)")
    return figures


def timed_upscale(photo: Image.Image, config: sr.ZSSRConfig, device: torch.device) -> dict:
    """sr.upscale of the photo at x2, timed in all and up to its first inference report (the training)."""
    marks: dict[str, Stamp] = {}

    def on_progress(progress: sr.Progress) -> None:
        if progress.phase == "inference" and "inference" not in marks:
            synchronize(device)
            marks["inference"] = Stamp.now()

    reset_peak_memory(device)
    started = Stamp.now()
    result = sr.upscale(photo, 2, config=config, device=device.type, seed=0, progress=on_progress)
    ended = Stamp.now()
    total, training = ended.since(started), marks.get("inference", ended).since(started)
    return {"cuda_graph": any(stage["cuda_graph"] for stage in result.info["sr"]["stage_details"]),
            "max_iters": config.max_iters, "train_steps": result.info["sr"]["train_steps"],
            "seconds": total.wall, "train_seconds": training.wall, "inference_seconds": total.wall - training.wall,
            "cpu_seconds": total.cpu, "train_cpu_seconds": training.cpu,
            "output": list(result.size), "fallback": result.info["sr"]["fallback"],
            "self_check": config.self_check, "peak_memory_mib": peak_memory_mib(device)}


def time_first_jobs(name: str, warm: bool, args: argparse.Namespace) -> dict:
    """The first two jobs of a fresh process (this script again, with --first-job-child), with or without
    sr.warm_up before them, as a gpu-queue worker runs it before it takes a job."""
    command = [sys.executable, __file__, "--device", args.device, "--steps", str(args.steps),
               "--first-job-child", name, *(["--child-warm-up"] if warm else []),
               *(["--threads", str(args.threads)] if args.threads else [])]
    child = subprocess.run(command, capture_output=True, text=True, check=True)
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"  {name}, a fresh process{' after sr.warm_up' if warm else ''}: "
          f"first job {figures['first_seconds']:.2f} s, second {figures['second_seconds']:.2f} s")
    return figures


def first_jobs_of_this_process(name: str, photo: Image.Image, device: torch.device, args: argparse.Namespace) -> dict:
    warm_up_seconds = sum(sr.warm_up(device.type).values()) if args.child_warm_up else None
    config = job_config(name, args.steps)
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        result = sr.upscale(photo, 2, config=config, device=device.type, seed=0)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return {"preset": name, "warm_up": args.child_warm_up, "warm_up_seconds": warm_up_seconds,
            "first_seconds": seconds[0], "second_seconds": seconds[1],
            "train_steps": result.info["sr"]["train_steps"]}


def print_first_jobs(rows: list[dict]) -> None:
    if not rows:
        return
    print("\n| preset | fresh process | sr.warm_up (s) | first job (s) | second job (s) | training steps |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        warm_up = f"{r['warm_up_seconds']:.2f}" if r["warm_up"] else "-"
        print(f"| {r['preset']} | {'warmed up' if r['warm_up'] else 'cold'} | {warm_up} | {r['first_seconds']:.2f} "
              f"| {r['second_seconds']:.2f} | {r['train_steps']} |")


def pack_images(count: int, side: int) -> list[Image.Image]:
    """`count` side x side crops, taken in turn from six photos at spread positions."""
    images = []
    for index in range(count):
        photo = np.asarray(Image.fromarray(getattr(data, PACK_PHOTOS[index % len(PACK_PHOTOS)])()).convert("RGB"))
        height, width = photo.shape[:2]
        turn = index // len(PACK_PHOTOS)
        top = (turn * 37) % max(1, height - side + 1)
        left = (turn * 53) % max(1, width - side + 1)
        images.append(Image.fromarray(photo[top:top + side, left:left + side]))
    return images


def time_packing(device: torch.device, args: argparse.Namespace) -> dict:
    config = job_config(args.pack_preset, args.pack_steps)
    images = pack_images(args.pack_jobs, args.pack_side)
    seeds = list(range(len(images)))
    # One untimed job first: the first calls pay one-off set-up (allocator, oneDNN/cuDNN plans per shape)
    sr.upscale(images[0], 2, config=config, device=device.type, seed=0)
    reset_peak_memory(device)
    started = Stamp.now()
    alone = [sr.upscale(image, 2, config=config, device=device.type, seed=seed) for image, seed in zip(images, seeds)]
    base = Stamp.now().since(started)
    rows = [{"k": 1, "seconds": base.wall, "cpu_seconds": base.cpu, "jobs_per_hour": len(images) * 3600 / base.wall,
             "jobs_per_cpu_hour": len(images) * 3600 / base.cpu, "peak_memory_mib": peak_memory_mib(device)}]
    print(f"  one at a time: {base.wall:.1f} s, {base.cpu:.1f} CPU-s")
    for k in [int(k) for k in split(args.pack_k)]:
        reset_peak_memory(device)
        started = Stamp.now()
        packed = upscale_many(images, 2, config=config, device=device.type, seeds=seeds, pack_size=k,
                              packing=args.packing)
        elapsed = Stamp.now().since(started)
        differences = [np.abs(np.asarray(p, dtype=np.int16) - np.asarray(a, dtype=np.int16)) for p, a in
                       zip(packed, alone)]
        same_steps = all(p.info["sr"]["train_steps"] == a.info["sr"]["train_steps"] for p, a in zip(packed, alone))
        rows.append({"k": k, "seconds": elapsed.wall, "cpu_seconds": elapsed.cpu,
                     "jobs_per_hour": len(images) * 3600 / elapsed.wall,
                     "jobs_per_cpu_hour": len(images) * 3600 / elapsed.cpu, "speedup": base.wall / elapsed.wall,
                     "cpu_speedup": base.cpu / elapsed.cpu,
                     "max_pixel_difference": int(max(d.max() for d in differences)),
                     "pixels_differing": float(np.mean([(d > 0).mean() for d in differences])),
                     "same_train_steps": same_steps, "peak_memory_mib": peak_memory_mib(device)})
        print(f"  K={k}: {elapsed.wall:.1f} s, {elapsed.cpu:.1f} CPU-s")
    return {"preset": args.pack_preset, "max_iters": config.max_iters, "jobs": len(images), "side": args.pack_side,
            "packing": args.packing, "rows": rows}


# --- issue 21's targets: one line per measure, then the SUMMARY lines ---

# The paper step's variants: (name, config changes, sr.cuda_step.graph_options). None changes what a step
# computes but bfloat16, which must keep Set14's PSNR (bench/quality.py) to be kept.
PAPER_VARIANTS = (
    ("as sr.upscale runs it (TF32, channels_last)", {}, {}),
    ("cudnn.benchmark", {}, {"cudnn_benchmark": True}),
    ("8 steps per replay", {}, {"steps_per_replay": 8}),
    ("cudnn.benchmark + 8 steps per replay", {}, {"cudnn_benchmark": True, "steps_per_replay": 8}),
    ("contiguous (no channels_last)", {"channels_last": False}, {}),
    ("bf16 autocast", {"precision": "bfloat16"}, {}),
    ("bf16 + cudnn.benchmark + 8 steps per replay", {"precision": "bfloat16"},
     {"cudnn_benchmark": True, "steps_per_replay": 8}),
)
SMOKE = {"max_iters": 6, "min_iters": 6, "crop_size": 16, "width": 8, "depth": 3, "run_test_every": 3,
         "back_projection_iters": [1], "ensemble_size": 1, "test_crop": 0, "augment_pool_size": 8}


def run_targets(device: torch.device, args: argparse.Namespace) -> dict:
    """K packed and graphed jobs against one graphed job at a time, the packed jobs' quality in bfloat16, and the
    paper job 512x512 -> 1024x1024 warm with each variant of its step; --smoke: the same code on tiny configs."""
    name = device_name(device).replace(" ", "_")
    figures = {"device": device_name(device), "pack": time_graphed_packing(device, args)}
    best = max(figures["pack"]["rows"], key=lambda row: row["ratio"])
    figures["pack_quality"] = packed_quality(device, args, best["packing"], best["cudnn_benchmark"])
    figures["paper"] = [time_paper_variant(variant, device, args) for variant in PAPER_VARIANTS
                        if not args.paper_variants or variant[0] in split(args.paper_variants)]
    print(f"SUMMARY gpu_pack K={args.target_k} graphed jobs_per_hour_ratio={best['ratio']:.2f} device={name}")
    default = next((row for row in figures["paper"] if row["variant"] == PAPER_VARIANTS[0][0]), None)
    if default:
        print(f"SUMMARY gpu_paper seconds={default['seconds']:.2f} device={name}")
    return figures


def target_config(preset: str, args: argparse.Namespace) -> sr.ZSSRConfig:
    return sr.config_for(preset, SMOKE if args.smoke else {})


def time_graphed_packing(device: torch.device, args: argparse.Namespace) -> dict:
    """--pack-jobs jobs of --pack-side at x2 (fast preset): one at a time through sr.upscale's graphed step, then
    K at a time through sr.packed's graphed step, per packing and with cuDNN's benchmark mode off and on."""
    config = target_config("fast", args)
    images = pack_images(args.pack_jobs, args.pack_side)
    seeds = list(range(len(images)))
    k = args.target_k
    sr.upscale(images[0], 2, config=config, device=device.type, seed=0)  # untimed: the process's one-off set-up
    synchronize(device)
    started = time.perf_counter()
    alone = [sr.upscale(image, 2, config=config, device=device.type, seed=seed) for image, seed in zip(images, seeds)]
    synchronize(device)
    lone_seconds = time.perf_counter() - started
    lone_rate = len(images) * 3600 / lone_seconds
    graphed = all(stage["cuda_graph"] for r in alone for stage in r.info["sr"]["stage_details"])
    print(f"gpu_pack alone: {len(images)} jobs of {args.pack_side}x{args.pack_side} one at a time "
          f"(CUDA graph {graphed}): {lone_seconds:.2f} s, {lone_rate:.0f} jobs/hour")
    rows = []
    for packing in split(args.target_packings):
        for benchmark in (False, True):
            try:
                rows.append(time_one_packing(images, seeds, alone, lone_seconds, config, device, k, packing, benchmark))
            except Exception as error:  # noqa: BLE001 - the other variants' figures must still come out
                print(f"gpu_pack K={k} packing={packing} cudnn_benchmark={benchmark}: failed: "
                      f"{type(error).__name__}: {error}")
    return {"jobs": len(images), "side": args.pack_side, "k": k, "alone_seconds": lone_seconds,
            "alone_graphed": graphed, "rows": rows}


def time_one_packing(images: list[Image.Image], seeds: list[int], alone: list[Image.Image], lone_seconds: float,
                     config: sr.ZSSRConfig, device: torch.device, k: int, packing: str, benchmark: bool) -> dict:
    with graph_options(cudnn_benchmark=benchmark):
        # untimed: cuDNN's per-shape set-up (its timing runs, with benchmark on) is paid once per process
        upscale_many(images[:k], 2, config=dataclasses.replace(config, max_iters=8), device=device.type,
                     seeds=seeds[:k], pack_size=k, packing=packing)
        synchronize(device)
        started = time.perf_counter()
        packed = upscale_many(images, 2, config=config, device=device.type, seeds=seeds, pack_size=k, packing=packing)
        synchronize(device)
        seconds = time.perf_counter() - started
    differences = [np.abs(np.asarray(p, dtype=np.int16) - np.asarray(a, dtype=np.int16)) for p, a in
                   zip(packed, alone)]
    same_steps = sum(p.info["sr"]["train_steps"] == a.info["sr"]["train_steps"] for p, a in zip(packed, alone))
    graphed = all(stage["cuda_graph"] for r in packed for stage in r.info["sr"]["stage_details"])
    row = {"packing": packing, "cudnn_benchmark": benchmark, "seconds": seconds, "cuda_graph": graphed,
           "jobs_per_hour": len(images) * 3600 / seconds, "ratio": lone_seconds / seconds,
           "max_pixel_difference": int(max(d.max() for d in differences)),
           "pixels_differing": float(np.mean([(d > 0).mean() for d in differences])), "same_steps": same_steps}
    print(f"gpu_pack K={k} packing={packing} cudnn_benchmark={benchmark} (CUDA graph {graphed}): {seconds:.2f} s, "
          f"{row['jobs_per_hour']:.0f} jobs/hour, {row['ratio']:.2f}x one at a time; against each lone output: max "
          f"{row['max_pixel_difference']} levels, {100 * row['pixels_differing']:.2f}% of pixels differ, "
          f"{same_steps}/{len(images)} same step counts")
    return row


def packed_quality(device: torch.device, args: argparse.Namespace, packing: str, benchmark: bool) -> dict:
    """PSNR of each job, packed and alone: the --pack-side crops (held out: nothing was tuned on them) downscaled
    by 2 with Pillow's bicubic and upscaled back, fast preset (bfloat16), K at a time."""
    config = target_config("fast", args)
    highs = pack_images(args.pack_jobs, args.pack_side)
    lows = [hr.resize((hr.width // 2, hr.height // 2), Image.BICUBIC) for hr in highs]
    seeds = list(range(len(lows)))
    alone = [sr.upscale(lr, 2, config=config, device=device.type, seed=seed) for lr, seed in zip(lows, seeds)]
    with graph_options(cudnn_benchmark=benchmark):
        packed = upscale_many(lows, 2, config=config, device=device.type, seeds=seeds, pack_size=args.target_k,
                              packing=packing)
    lone_psnr = [sr.psnr(a, hr, shave=2) for a, hr in zip(alone, highs)]
    packed_psnr = [sr.psnr(p, hr, shave=2) for p, hr in zip(packed, highs)]
    deltas = [p - a for p, a in zip(packed_psnr, lone_psnr)]
    worst = int(np.argmax(np.abs(deltas)))
    print(f"gpu_pack_quality K={args.target_k} packing={packing} {config.precision}: {len(lows)} jobs "
          f"{lows[0].width}x{lows[0].height} -> x2, PSNR alone {np.mean(lone_psnr):.3f} dB, packed "
          f"{np.mean(packed_psnr):.3f} dB (mean), largest |packed - alone| {abs(deltas[worst]):.3f} dB (job {worst}: "
          f"{lone_psnr[worst]:.3f} -> {packed_psnr[worst]:.3f}), mean {np.mean(deltas):+.4f} dB")
    return {"packing": packing, "precision": config.precision, "psnr_alone": lone_psnr, "psnr_packed": packed_psnr,
            "max_abs_delta_db": abs(deltas[worst])}


def time_paper_variant(variant: tuple, device: torch.device, args: argparse.Namespace) -> dict:
    """The astronaut 512x512 -> 1024x1024 with the paper preset (self-check on), warm: an untimed short job of the
    same variant first (cuDNN's per-shape set-up); the training step's MFU from its counted FLOPs."""
    label, changes, options = variant
    config = dataclasses.replace(target_config("paper", args), **changes)
    photo = Image.fromarray(data.astronaut())
    if args.smoke:
        photo = photo.resize((32, 32), Image.BICUBIC)
    try:
        with graph_options(**options):
            sr.upscale(photo, 2, config=dataclasses.replace(config, max_iters=8), device=device.type, seed=0)
            figures = timed_upscale(photo, config, device)
    except Exception as error:  # noqa: BLE001 - the other variants' figures must still come out
        print(f"gpu_paper [{label}]: failed: {type(error).__name__}: {error}")
        return {"variant": label, "error": f"{type(error).__name__}: {error}", "seconds": float("nan")}
    flops = training_step_flops(config, crop_of(photo, config), test_pixels(photo, config))
    steps_per_second = figures["train_steps"] / figures["train_seconds"]
    peak, peak_source = device_peak_tflops(device, config, args.peak_tflops)
    achieved = flops * steps_per_second / 1e12
    mfu = f"{100 * achieved / peak:.1f}% of {peak:.0f} TFLOP/s ({peak_source})" if peak else peak_source
    print(f"gpu_paper [{label}]: {figures['seconds']:.2f} s ({figures['train_steps']} steps in "
          f"{figures['train_seconds']:.2f} s: {steps_per_second:.0f} steps/s; inference {figures['inference_seconds']:.2f}"
          f" s), CUDA graph {figures['cuda_graph']}, {flops / 1e9:.2f} GFLOP/step, {achieved:.1f} TFLOP/s, MFU {mfu}")
    return {"variant": label, "changes": changes, "options": options, **figures, "gflop_per_step": flops / 1e9,
            "steps_per_second": steps_per_second, "achieved_tflops": achieved,
            "mfu": achieved / peak if peak else None}


# --- grouped convolution against vmap ---

def time_stacked_step(count: int, device: torch.device, args: argparse.Namespace, steps: int = 20) -> dict:
    """Forward + backward of K nets of the preset's shape on K crops: one grouped convolution per layer, vmap over
    functional_call, and the K nets one after another (what packing replaces); milliseconds per step."""
    config = sr.PRESETS[args.stack_preset]
    nets = [build_net(3, config, device, torch.Generator().manual_seed(seed)) for seed in range(count)]
    sons = torch.rand(count, config.batch_size, 3, config.crop_size, config.crop_size,
                      generator=torch.Generator().manual_seed(0)).to(device)
    stacks = {}
    for packing in PACKINGS:
        stacks[packing] = StackedNets(nets[0], count, packing)
        for slot, net in enumerate(nets):
            stacks[packing].load(slot, net)

    def packed(packing: str) -> None:
        with autocast_for(config, device):
            stacks[packing].forward(sons, config.channels_last).sum().backward()

    def one_after_another() -> None:
        for net, son in zip(nets, sons):
            with autocast_for(config, device):
                net(prepare_input(son, config)).sum().backward()

    timings = {}
    steps_by_name = [(packing, lambda packing=packing: packed(packing)) for packing in PACKINGS]
    for name, step in (*steps_by_name, ("one after another", one_after_another)):
        for _ in range(3):
            step()
        synchronize(device)
        started = Stamp.now()
        for _ in range(steps):
            step()
        synchronize(device)
        elapsed = Stamp.now().since(started)
        timings[name] = {"ms_per_step": 1000 * elapsed.wall / steps, "cpu_ms_per_step": 1000 * elapsed.cpu / steps}
    print(f"  stacked step K={count}: " + ", ".join(f"{n} {t['ms_per_step']:.1f} ms" for n, t in timings.items()))
    return {"k": count, "preset": args.stack_preset, "timings": timings}


def print_stacked_step(rows: list[dict], args: argparse.Namespace) -> None:
    if not rows:
        return
    print(f"\nforward + backward of K {args.stack_preset}-preset nets on one crop each, ms per step (CPU ms):")
    print("| K | " + " | ".join(rows[0]["timings"]) + " |")
    print("| --- " * (len(rows[0]["timings"]) + 1) + "|")
    for r in rows:
        cells = [f"{t['ms_per_step']:.1f} ({t['cpu_ms_per_step']:.1f})" for t in r["timings"].values()]
        print(f"| {r['k']} | " + " | ".join(cells) + " |")


# --- torch.compile ---

def time_compile(name: str, photo: Image.Image, device: torch.device, args: argparse.Namespace) -> dict:
    config = training_config(name, args.steps, args.warmup)
    eager = core_steps_per_second(photo, config, device, args.warmup)
    torch._dynamo.reset()
    started = Stamp.now()
    compiled = core_steps_per_second(photo, config, device, args.warmup, net_wrapper=torch.compile)
    total = Stamp.now().since(started)
    measured_seconds = (config.max_iters - args.warmup) / compiled.wall
    # Eager again after: on a shared machine the load drifts; the mean of both brackets the compiled run
    eager_after = core_steps_per_second(photo, config, device, args.warmup)
    eager_wall, eager_cpu = (eager.wall + eager_after.wall) / 2, (eager.cpu + eager_after.cpu) / 2
    figures = {"preset": name, "measured_steps": config.max_iters - args.warmup, "eager_steps_per_second": eager_wall,
               "eager_before_and_after": [eager.wall, eager_after.wall], "compiled_steps_per_second": compiled.wall,
               "speedup": compiled.wall / eager_wall, "eager_steps_per_cpu_second": eager_cpu,
               "compiled_steps_per_cpu_second": compiled.cpu, "cpu_speedup": compiled.cpu / eager_cpu,
               "warmup_and_compile_seconds": total.wall - measured_seconds}
    print(f"  {name} compile: eager {eager.wall:.2f} / {eager_after.wall:.2f}, compiled {compiled.wall:.2f} steps/s; "
          f"per CPU-second eager {eager_cpu:.2f}, compiled {compiled.cpu:.2f}")
    return figures


# --- clocks ---

@dataclasses.dataclass(frozen=True)
class Stamp:
    """Wall-clock and process CPU seconds (all threads) at one moment. On a shared CPU the wall clock swings with
    other people's load; CPU seconds much less, so CPU figures are printed beside the wall ones."""

    wall: float
    cpu: float

    @staticmethod
    def now() -> Stamp:
        return Stamp(time.perf_counter(), time.process_time())

    def since(self, earlier: Stamp) -> Stamp:
        return Stamp(self.wall - earlier.wall, self.cpu - earlier.cpu)


# --- devices ---

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def memory_kind(device: torch.device) -> str:
    return "max_memory_allocated" if device.type == "cuda" else "process peak RSS (high-water mark)"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"CPU: {model}, {os.cpu_count()} cores"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# --- tables ---

def print_preset_table(rows: list[dict], args: argparse.Namespace) -> None:
    if not rows:
        return
    print("\n| preset | crop x batch | steps timed | steps/s | naive steps/s | ratio | CUDA-graph steps/s "
          "| per CPU-s: steps, naive, ratio | GFLOP/step | achieved TFLOP/s | MFU | peak | peak memory (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        graphed = f"{r['graphed_steps_per_second']:.2f}" if r["graphed_steps_per_second"] else "n/a"
        peak = f"{r['peak_tflops']:.3g} TFLOP/s ({r['peak_source']})" if r["peak_tflops"] else r["peak_source"]
        print(f"| {r['preset']} | {r['crop']} x {r['batch']} | {r['measured_steps']} | {r['steps_per_second']:.2f} "
              f"| {r['naive_steps_per_second']:.2f} | {r['ratio']:.2f}x | {graphed} | {r['steps_per_cpu_second']:.2f}, "
              f"{r['naive_steps_per_cpu_second']:.2f}, {r['cpu_ratio']:.2f}x | {r['gflop_per_step']:.2f} "
              f"| {r['achieved_tflops']:.4f} | {mfu} | {peak} | {r['peak_memory_mib']:.0f} |")
    if rows:
        print(f"(memory: {rows[0]['memory_kind']})")


def print_end_to_end(rows: list[dict], args: argparse.Namespace) -> None:
    if not rows:
        return
    print("\n| preset | training step | 512x512 -> | training steps (max_iters) | self-check (fallback) "
          "| seconds per job | training s | inference s | CPU-s (training) | peak memory (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        step = "CUDA graph" if r["cuda_graph"] else "eager"
        print(f"| {r['preset']} | {step} | {r['output'][0]}x{r['output'][1]} | {r['train_steps']} ({r['max_iters']}) "
              f"| {'on' if r['self_check'] else 'off'} ({r['fallback']}) | {r['seconds']:.2f} | {r['train_seconds']:.2f} | {r['inference_seconds']:.2f} "
              f"| {r['cpu_seconds']:.1f} ({r['train_cpu_seconds']:.1f}) "
              f"| {r['peak_memory_mib']:.0f} |")


def print_packing(figures: dict, args: argparse.Namespace) -> None:
    print(f"\n{figures['jobs']} jobs of {figures['side']}x{figures['side']} at x2, preset {figures['preset']} "
          f"(max_iters {figures['max_iters']}), packing {figures['packing']}:")
    print("| K | seconds | jobs/hour | vs one at a time | CPU-s | jobs/CPU-hour | vs one at a time (CPU) "
          "| max pixel difference | pixels differing | same steps | peak memory (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in figures["rows"]:
        if r["k"] == 1:
            print(f"| 1 (one at a time) | {r['seconds']:.1f} | {r['jobs_per_hour']:.0f} | 1.00x | {r['cpu_seconds']:.1f} "
                  f"| {r['jobs_per_cpu_hour']:.0f} | 1.00x | - | - | - | {r['peak_memory_mib']:.0f} |")
        else:
            print(f"| {r['k']} | {r['seconds']:.1f} | {r['jobs_per_hour']:.0f} | {r['speedup']:.2f}x "
                  f"| {r['cpu_seconds']:.1f} | {r['jobs_per_cpu_hour']:.0f} | {r['cpu_speedup']:.2f}x "
                  f"| {r['max_pixel_difference']} | {100 * r['pixels_differing']:.3f}% | {r['same_train_steps']} "
                  f"| {r['peak_memory_mib']:.0f} |")


def print_compile(rows: list[dict]) -> None:
    if not rows:
        return
    print("\n| preset | steps timed | eager steps/s (before / after) | torch.compile steps/s | speedup "
          "| per CPU-s: eager, compiled, speedup | warm-up + compile s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        before, after = r["eager_before_and_after"]
        print(f"| {r['preset']} | {r['measured_steps']} | {r['eager_steps_per_second']:.2f} ({before:.2f} / {after:.2f}) "
              f"| {r['compiled_steps_per_second']:.2f} | {r['speedup']:.2f}x | {r['eager_steps_per_cpu_second']:.2f}, "
              f"{r['compiled_steps_per_cpu_second']:.2f}, {r['cpu_speedup']:.2f}x "
              f"| {r['warmup_and_compile_seconds']:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
