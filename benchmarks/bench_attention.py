"""The attention layer, forward + backward: this project's (scaled_dot_product_attention) against
the host's (torch_mimicry.modules.layers.SelfAttention: explicit bmm and softmax).

    python benchmarks/bench_attention.py                 # CPU, batch 4
    python benchmarks/bench_attention.py --device cuda   # GPU, batch 64, every SDPA kernel

Feature maps as in SAGAN 128 px: 32x32 with C=256 (G's attention) and 64x64 with C=128 (the
"feat64" variant). Each row runs in a fresh subprocess, so its peak memory is its own: on GPU
torch.cuda.max_memory_allocated above what the inputs and weights hold. On CPU it is not
measured: torch keeps no allocation statistics there, and the process's resident
set is dominated by lazily loaded kernels and the allocator's caching. Times are medians.
On GPU the table also runs our layer under each SDPA kernel alone (flash, efficient, cudnn,
math) and names the one PyTorch's dispatcher picks (auto).

Rows "ours+pad" are our layer with query and key zero-padded to the value's width (q.k
unchanged; SelfAttention(pad_query_key=True), what train.sdpa_backend=flash trains with) so
that FlashAttention, which needs equal widths, can run. If it wins under auto, it should become
the layer's default.

Goals: at 64x64 on GPU, ours (bf16) >= 2x faster and >= 4x less peak memory than the host's
(fp32, its own precision); on CPU ours not slower than the host's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import torch
from _machine import (
    RESULTS,
    describe,
    keep_if_interrupted,
    last_error_line,
    median_seconds,
    print_table,
    run_main,
    synchronize,
    write_json,
)

CASES = [(256, 32), (128, 64)]  # (channels, feature-map side)
BACKENDS = ("flash", "efficient", "cudnn", "math")


def _layer(impl: str, channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if impl == "host":
        from sagan_plugin.host import torch_mimicry  # the host, after its compatibility shim

        layer = importlib.import_module(
            f"{torch_mimicry.__name__}.modules.layers").SelfAttention(channels)
    else:
        from sagan_plugin.nets import SelfAttention

        layer = SelfAttention(channels, pad_query_key=impl == "ours+pad")
    with torch.no_grad():
        layer.gamma.fill_(0.5)
    return layer


def _kernel_choice(query, key, value) -> str:
    """The kernel PyTorch's dispatcher picks for these inputs."""
    from torch.nn.attention import SDPBackend

    try:
        return SDPBackend(torch._fused_sdp_choice(query, key, value, scale=1.0)).name.lower()
    except Exception as error:  # a private API: report rather than fail
        return f"unknown ({type(error).__name__})"


def run_case(spec: dict) -> dict:
    """One row, in this process: peak memory of a call after the first (which sets up the
    libraries' workspaces), then the median time."""
    from sagan_plugin.precision import SDPA_BACKENDS, step_context

    device = torch.device(spec["device"])
    channels, side, batch = spec["channels"], spec["side"], spec["batch"]
    layer = _layer(spec["impl"], channels).to(device)
    x = torch.randn(batch, channels, side, side, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    backend = spec.get("backend", "auto")

    def step() -> None:
        with step_context(device, spec["precision"], backend):
            out = layer(x)
        out.backward(grad)
        x.grad = None
        layer.zero_grad(set_to_none=True)

    result = dict(spec)
    if backend != "auto" and backend not in SDPA_BACKENDS:
        raise ValueError(backend)
    try:
        synchronize(device)
        if device.type == "cuda":
            step()  # once first: a library's one-time workspace (cuBLAS, cuDNN) is no layer's
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            step()
            synchronize(device)
            result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        result["ms"] = 1000 * median_seconds(step, device, spec["repeats"])
    except RuntimeError as error:  # a kernel that does not take these shapes
        result["error"] = str(error).splitlines()[0][:80]
    if spec["impl"] != "host" and backend == "auto":  # the layer's own inputs, strides and all
        with torch.no_grad(), step_context(device, spec["precision"]):
            result["kernel"] = _kernel_choice(*layer.attention_inputs(x))
    return result


def _in_subprocess(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True)
    if done.returncode:
        return {**spec, "error": last_error_line(done)[:80]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _find(rows: list[dict], side: int, impl: str, precision: str) -> dict:
    """The row measured under the dispatcher's own choice; {} when it was not reached."""
    return next((r for r in rows if r["side"] == side and r["impl"] == impl
                 and r["precision"] == precision and r.get("backend", "auto") == "auto"), {})


def ratios(rows: list[dict]) -> list[dict]:
    """Ours against the host's fp32 at each feature-map size, where both were measured."""
    found = []
    for _, side in CASES:
        host = _find(rows, side, "host", "fp32")
        for impl in ("ours", "ours+pad"):
            for precision in ("fp32", "bf16"):
                ours = _find(rows, side, impl, precision)
                if "ms" in ours and "ms" in host:
                    memory = host["peak_mib"] / ours["peak_mib"] if "peak_mib" in ours \
                        and "peak_mib" in host else None
                    found.append({"side": side, "ours": f"{impl} {precision}",
                                  "speedup": host["ms"] / ours["ms"], "memory_ratio": memory})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="default: 64 on GPU, 4 on CPU")
    parser.add_argument("--repeats", type=int, default=None, help="default: 20 GPU, 5 CPU")
    parser.add_argument("--json", help="default: benchmarks/results/bench_attention_<device>.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(json.loads(args.child))))
        return

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.json = args.json or str(RESULTS / f"bench_attention_{device.type}.json")
    batch = args.batch or (64 if gpu else 4)
    repeats = args.repeats or (20 if gpu else 5)
    rows: list[dict] = []

    def report() -> dict | None:
        return {"benchmark": "attention", "machine": describe(device), "batch": batch,
                "rows": rows, "ratios": ratios(rows)} if rows else None

    keep_if_interrupted(args.json, report)
    for channels, side in CASES:
        common = {"device": args.device, "channels": channels, "side": side, "batch": batch,
                  "repeats": repeats}
        specs = [{"impl": impl, "precision": precision, **common}
                 for precision in ("fp32", "bf16") for impl in ("host", "ours", "ours+pad")]
        if gpu:
            # flash as train.sdpa_backend=flash runs it: on the padded layer
            specs += [{"impl": "ours+pad" if b == "flash" else "ours", "precision": "bf16",
                       "backend": b, **common} for b in BACKENDS]
        for spec in specs:
            rows.append(_in_subprocess(spec))

    table = []
    for r in rows:
        name = f"{r['impl']} {r['precision']}"
        if r["impl"] != "host":
            name += f" [{r.get('backend', 'auto')}" + \
                (f": {r['kernel']}]" if "kernel" in r else "]")
        table.append([f"{r['side']}x{r['side']} C={r['channels']}", name,
                      f"{r['ms']:.2f}" if "ms" in r else r.get("error", "?"),
                      f"{r['peak_mib']:.1f}" if "peak_mib" in r else "-"])
    print(f"attention forward+backward, batch {batch}, {describe(device)}")
    print_table(["feature map", "layer [SDPA kernel]", "ms", "peak MiB"], table)
    for g in ratios(rows):
        memory = f", {g['memory_ratio']:.2f}x less peak memory" if g["memory_ratio"] else ""
        print(f"{g['side']}x{g['side']}: {g['ours']} vs host fp32: "
              f"{g['speedup']:.2f}x as fast{memory}")
    print("goals: GPU 64x64 ours bf16 >= 2x faster and >= 4x less memory; CPU not slower")
    write_json(Path(args.json), report())


if __name__ == "__main__":
    run_main(main)
