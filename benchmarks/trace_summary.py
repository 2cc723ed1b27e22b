"""Where a profiled training step spends the GPU's time: a summary of a torch.profiler trace.

    python benchmarks/trace_summary.py results/trace/bench_train_trace.json.gz --steps 3

Reads the Chrome trace that bench_train writes (gzipped or not) and prints how busy the GPU
was over the profiled steps (the union of its kernels, copies and fills), the longest stretches
it sat idle and the CPU operator that was running when each began (a host sync, Python work,
the data), the host-device synchronisations and device-to-host copies, and kernel time by
kind (matmul/conv, attention, normalisation, elementwise, optimizer, Triton-compiled). These
point at the waste to fix first. bench_train prints this after its profile. A trace without
GPU activity (a CPU run) has nothing to summarise and says so.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from itertools import pairwise
from pathlib import Path

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
SYNC_CALLS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize")
# First match wins: attention kernels also contain "gemm" in some libraries' names.
KINDS = [
    ("attention", r"flash|fmha|attention|sdpa|cudnn_generated_fort_native_sdpa"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("compiled (Triton)", r"^triton_"),
    # before matmul/conv: cuDNN's own batch norm kernels are named cudnn::bn_...
    ("normalisation", r"batch_norm|batchnorm|bn_|welford|layer_norm"),
    ("matmul/conv", r"gemm|cutlass|xmma|conv|implicit|cudnn|sm\d+_|wgrad|dgrad|fprop"),
    ("elementwise/reduction", r"elementwise|vectorized|unrolled|reduce|copy|fill|index"),
]


def read_trace(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            return json.load(f)["traceEvents"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"error: {path}: not a readable Chrome trace ({error})") from None


def _merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def kind_of(kernel: str) -> str:
    name = kernel.lower()
    return next((kind for kind, pattern in KINDS if re.search(pattern, name)), "other")


def summarize(events: list[dict], steps: int = 1, gaps: int = 5) -> dict | None:
    """GPU busy fraction, idle gaps, syncs and kernel time by kind; None without GPU work."""
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    gpu = [e for e in complete if e.get("cat") in GPU_CATEGORIES]
    if not gpu:
        return None
    busy = _merged([(e["ts"], e["ts"] + e["dur"]) for e in gpu])
    window = busy[-1][1] - busy[0][0]
    busy_us = sum(end - start for start, end in busy)
    cpu_ops = sorted((e for e in complete if e.get("cat") == "cpu_op"), key=lambda e: e["ts"])

    def running_at(t: float) -> str:  # the innermost CPU operator around t
        around = [e for e in cpu_ops if e["ts"] <= t <= e["ts"] + e["dur"]]
        return min(around, key=lambda e: e["dur"])["name"] if around else "(no operator)"

    idle = sorted(((after[0] - before[1], before[1]) for before, after in pairwise(busy)),
                  reverse=True)[:gaps]
    kernels = [e for e in gpu if e.get("cat") == "kernel"]
    by_kind: dict[str, float] = {}
    by_name: dict[str, float] = {}
    for e in kernels:
        by_kind[kind_of(e["name"])] = by_kind.get(kind_of(e["name"]), 0.0) + e["dur"]
        by_name[e["name"]] = by_name.get(e["name"], 0.0) + e["dur"]
    kernel_us = sum(by_kind.values()) or 1.0
    return {
        "steps": steps,
        "gpu_window_ms_per_step": window / 1e3 / steps,
        "gpu_busy_fraction": busy_us / window,
        "kernels_per_step": len(kernels) / steps,
        "syncs_per_step": sum(e["name"] in SYNC_CALLS for e in complete) / steps,
        "device_to_host_copies_per_step": sum(
            e.get("cat") == "gpu_memcpy" and "DtoH" in e["name"] for e in gpu) / steps,
        "longest_idle": [{"ms": gap / 1e3, "cpu_op": running_at(start)} for gap, start in idle],
        "kernel_time_by_kind": {kind: us / kernel_us for kind, us in
                                sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": name[:100], "ms_per_step": us / 1e3 / steps}
                        for name, us in sorted(by_name.items(), key=lambda kv: -kv[1])[:8]],
    }


def print_summary(summary: dict | None) -> None:
    if summary is None:
        print("trace summary: no GPU kernels in this trace (a CPU run); nothing to summarise")
        return
    s = summary
    print(f"GPU busy {100 * s['gpu_busy_fraction']:.1f}% of {s['gpu_window_ms_per_step']:.1f} "
          f"ms per step; {s['kernels_per_step']:.0f} kernels, {s['syncs_per_step']:.1f} "
          f"syncs and {s['device_to_host_copies_per_step']:.1f} device-to-host copies per step")
    print("kernel time by kind: " + ", ".join(
        f"{kind} {100 * share:.1f}%" for kind, share in s["kernel_time_by_kind"].items()))
    print("longest idle stretches: " + ", ".join(
        f"{gap['ms']:.2f} ms (CPU in {gap['cpu_op']})" for gap in s["longest_idle"]))
    for kernel in s["top_kernels"]:
        print(f"  {kernel['ms_per_step']:8.2f} ms/step  {kernel['name']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path, help="a torch.profiler Chrome trace (.json[.gz])")
    parser.add_argument("--steps", type=int, default=1, help="training steps it covers")
    args = parser.parse_args()
    if args.steps < 1:
        print(f"error: --steps {args.steps}: expected at least 1", file=sys.stderr)
        return 2
    print_summary(summarize(read_trace(args.trace), args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
