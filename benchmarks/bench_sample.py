"""Sampling speed: Python eager against the C++ sampler (TorchScript, AOTInductor), side by side.

    python benchmarks/bench_sample.py                      # SAGAN 32 px, 10 classes, CPU
    python benchmarks/bench_sample.py --resolution 128 --num-classes 1000 --device cuda

Each path is timed on the same generator (the registry's SAGAN, random weights) and the same
inputs already on the device: one forward pass of `batch` images, after warm-up, repetitions
interleaved across paths so that a busy machine slows them alike; the median is reported.
The C++ paths run in this process through the pybind11 module (cpp/build, built by `make cpp`).

Goals: on a CPU, C++ AOTInductor >= 1.5x Python eager at batch 64. On a GPU the table adds
eager bf16 and a CUDA graph of it, and a package compiled for batches up to the largest timed
(export's max_batch: a bound that can let its kernels index in 32 bits); goal >= 3x eager fp32
at batch 256, and the achieved fraction of the GPU's bf16 matmul rate measured in the same run.
Prints a table and writes JSON with the machine's description.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _machine import (
    RESULTS,
    bf16_matmul_flops,
    cpu_model,
    describe,
    keep_if_interrupted,
    print_table,
    run_main,
    synchronize,
    write_json,
)
from torch.utils.flop_counter import FlopCounterMode

from sagan_plugin.errors import first_line
from sagan_plugin.export import CHECK_BATCHES, FORMATS, export_module, fold_spectral_norm
from sagan_plugin.registry import get_model
from sagan_plugin.sample import class_labels

REPO = Path(__file__).resolve().parents[1]
GOALS = {"cpu": ("C++ AOTInductor", 64, 1.5), "cuda": ("CUDA graph bf16", 256, 3.0)}
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_generators(resolution: int, num_classes: int, device: torch.device):
    """(eager generator with spectral norm, folded copy rebuilt from its state dict)."""
    family = get_model("sagan")
    torch.manual_seed(0)
    eager = family.build(resolution, num_classes)[0]
    folded = family.build(resolution, num_classes)[0]
    folded.load_state_dict(eager.state_dict())
    with torch.no_grad():
        eager.attention.gamma.fill_(0.5)  # random weights, but attention must count
        folded.attention.gamma.fill_(0.5)
    return eager.to(device).eval(), fold_spectral_norm(folded.to(device))


def cpp_module(build: Path | None = None):
    """The pybind11 module: from `build` as it is (a GPU machine has no .venv for `make cpp`
    to use, and no network for it to install one), else built by `make cpp` first."""
    if build is None:
        subprocess.run(["make", "-s", "cpp"], cwd=REPO, check=True)
        build = REPO / "cpp" / "build"
    sys.path.insert(0, str(build.resolve()))
    import sagan_sample_ext

    return sagan_sample_ext


def gflops_per_image(netG: torch.nn.Module, device: torch.device) -> float:
    z = torch.randn(2, netG.nz, device=device, dtype=next(netG.parameters()).dtype)
    y = class_labels(2, None, netG.num_classes).to(device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        netG(z, y)
    return counter.get_total_flops() / 2 / 1e9


def cuda_graph(netG: torch.nn.Module, batch: int, device: torch.device) -> Forward:
    """Replay of one captured bf16 forward at a fixed batch size (inputs copied in)."""
    z = torch.zeros(batch, netG.nz, device=device, dtype=torch.bfloat16)
    y = torch.zeros(batch, dtype=torch.int64, device=device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode():
        with torch.cuda.stream(stream):
            for _ in range(3):
                netG(z, y)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = netG(z, y)

    def replay(z_in: torch.Tensor, y_in: torch.Tensor) -> torch.Tensor:
        z.copy_(z_in)
        y.copy_(y_in)
        graph.replay()
        return out

    return replay


def at_any_batch(forward: Forward) -> Callable[[int], Forward]:
    """A path that calls the same forward at every batch size."""
    return lambda batch: forward


def failing_path(why: str) -> Callable[[int], Forward]:
    """A path that could not be built: every batch size reports it failed, and why."""
    def make(batch: int) -> Forward:
        raise RuntimeError(why)
    return make


def time_paths(paths: dict[str, Callable[[int], Forward]], batch: int, netG, device,
               budget_s: float) -> tuple[dict[str, float], dict[str, str]]:
    """images/s of each path at this batch: median of interleaved, synchronised calls; and
    the paths that failed (out of memory, a graph that would not capture), with why."""
    z = torch.randn(batch, netG.nz, generator=torch.Generator().manual_seed(batch)).to(device)
    y = class_labels(batch, None, netG.num_classes).to(device)

    def timed(forward: Forward) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            forward(z, y)
        synchronize(device)
        return time.perf_counter() - start

    forwards, warm, failed = {}, {}, {}
    for name, make in paths.items():
        try:
            forward = make(batch)
            warm[name] = min(timed(forward) for _ in range(2))
            forwards[name] = forward
        except Exception as error:  # the other paths' figures still count
            failed[name] = first_line(error)
            print(f"{name} at batch {batch}: FAILED: {failed[name]}", file=sys.stderr)
    if not forwards:
        return {}, failed
    reps = max(3, min(30, int(budget_s / sum(warm.values()))))
    times: dict[str, list[float]] = {name: [] for name in forwards}
    for _ in range(reps):
        for name, forward in forwards.items():
            times[name].append(timed(forward))
    return {name: batch / statistics.median(t) for name, t in times.items()}, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32, choices=(32, 64, 128))
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--batches", default="1,16,64,256")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds per batch size")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cpp-build", type=Path, default=None,
                        help="an existing CMake build folder (skips `make cpp`)")
    args = parser.parse_args()
    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    ext = cpp_module(args.cpp_build)
    eager, folded = build_generators(args.resolution, args.num_classes, device)
    provenance = {"model": "sagan", "step": 0, "ema": False}
    gflops = gflops_per_image(folded, device)  # the same arithmetic as eager, minus sigma
    goal_path, goal_batch, goal_ratio = GOALS[device.type]
    rates: dict[int, dict[str, float]] = {}
    failures: dict[str, str] = {}

    def report() -> dict | None:
        if not rates:
            return None
        done = [b for b in batches if b in rates]
        result = {"machine": describe(device), "resolution": args.resolution,
                  "num_classes": args.num_classes, "gflops_per_image": gflops,
                  "images_per_s": {str(b): rates[b] for b in done},
                  "gflops_per_s": {str(b): {n: r * gflops for n, r in rates[b].items()}
                                   for b in done}, "failed": failures}
        if goal_batch in rates:
            at_goal = rates[goal_batch]
            ratio = at_goal[goal_path] / at_goal["Python eager"] \
                if goal_path in at_goal and "Python eager" in at_goal else None
            result["goal"] = {"path": goal_path, "batch": goal_batch, "target": goal_ratio,
                              "ratio_to_eager": ratio,
                              "met": ratio is not None and ratio >= goal_ratio}
        return result

    json_path = args.json or RESULTS / f"bench_sample_{device.type}.json"
    keep_if_interrupted(json_path, report)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths: dict[str, Callable[[int], Forward]] = {"Python eager": at_any_batch(eager)}
        exports = [("torchscript", None, "C++ TorchScript"), ("aoti", None, "C++ AOTInductor")]
        if device.type == "cuda":  # only Triton's kernels pick their index width from the bound
            largest = max(*batches, *CHECK_BATCHES)
            exports.append(("aoti", largest, f"C++ AOTInductor max_batch={largest}"))
        for i, (fmt, max_batch, name) in enumerate(exports):
            try:
                artefact = export_module(eager, folded, fmt, f"{tmp}/G{i}{FORMATS[fmt]}",
                                         provenance, max_batch=max_batch)
                paths[name] = at_any_batch(ext.Generator(str(artefact), device.type).forward)
            except Exception as error:  # a compile error, a failed check: the rest goes on
                print(f"{name}: export FAILED: {first_line(error)}", file=sys.stderr)
                paths[name] = failing_path(f"export failed: {first_line(error)}")
        export_s = time.perf_counter() - start
        print(f"exported in {export_s:.0f} s", file=sys.stderr)
        if device.type == "cuda":
            bf16 = folded.to(torch.bfloat16)
            paths["eager bf16"] = at_any_batch(lambda z, y: bf16(z.to(torch.bfloat16), y))
            paths["CUDA graph bf16"] = lambda b: cuda_graph(bf16, b, device)
        # The goal's batch first: a stage stopped early by the suite keeps what matters most.
        for b in sorted(batches, key=lambda b: b != goal_batch):
            rates[b], failed = time_paths(paths, b, eager, device, args.budget)
            failures.update({f"{name}, batch {b}": why for name, why in failed.items()})
            print(f"batch {b}: {time.perf_counter() - start:.0f} s", file=sys.stderr)

    names = list(paths)
    print(f"SAGAN G {args.resolution} px, {args.num_classes} classes, {gflops:.2f} GFLOP/image, "
          f"{device.type}, {torch.get_num_threads()} threads ({cpu_model()}); "
          f"export {export_s:.0f} s; images/s:")
    print_table(["batch", *names], [[b, *(f"{rates[b][n]:.1f}" if n in rates[b] else "failed"
                                         for n in names)] for b in batches])
    result = report()
    if "goal" in result:
        ratio = result["goal"]["ratio_to_eager"]
        print(f"{goal_path} / Python eager at batch {goal_batch}: " +
              (f"{ratio:.2f}x (goal {goal_ratio}x: {'met' if ratio >= goal_ratio else 'NOT met'})"
               if ratio is not None else "a path failed"))
    if device.type == "cuda" and any(rates.values()):
        peak = bf16_matmul_flops(device) / 1e12
        best = max(r for b in batches for r in rates[b].values()) * gflops / 1e3
        result["bf16_matmul_tflops"] = peak
        result["best_fraction_of_bf16_rate"] = best / peak
        print(f"bf16 matmul {peak:.0f} TFLOP/s; best path reaches {best:.1f} TFLOP/s "
              f"({100 * best / peak:.1f}%)")
    write_json(json_path, result)
    if failures:  # the JSON holds the others; the exit status tells the suite
        print(f"failed: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
