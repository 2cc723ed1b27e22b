"""Multi-GPU training on paper: what DistributedDataParallel moves per SAGAN step, and what 4 and
8 GPUs would give with a measured single-GPU step time.

    python benchmarks/ddp_estimate.py                                   # step time assumed
    python benchmarks/ddp_estimate.py --train-json benchmarks/results/bench_train_cuda.json

One GPU cannot measure DDP, so this counts instead. Per training step (n_dis D steps, one G
step) each GPU all-reduces the fp32 gradients of D n_dis times and of G once (G's step freezes D
and calls it unwrapped, so no D gradient moves then), and DDP broadcasts rank 0's buffers
(batch-norm statistics, spectral-norm vectors) at every wrapped forward: G once per G step, D
twice per D step (real and fake passes). A ring all-reduce of S bytes over p GPUs takes
S * 2(p-1)/p / busbw seconds (nccl-tests' definition of bus bandwidth); a broadcast S / busbw.

The default bus bandwidth, 370 GB/s, is what NCCL's maintainers give for H100 NVLink with the
ring algorithm (NVIDIA/nccl-tests issue 212; H200 has the same NVLink 4); DDP's 25 MB buckets
reach less than that, so the times here are a lower bound on communication. The step time
comes from --train-json, the fastest of this project's rows in bench_train's table (a step at
its per-GPU batch), or else is assumed: the counted FLOPs at --assume-mfu of --peak-tflops
(the 30% MFU goal, an H200's 989 dense bf16 TFLOP/s), a global-batch step on one GPU. Then:
weak scaling (that batch on every GPU; communication not overlapped with the backward pass,
a worst case) and strong scaling of the paper's global batch 256: at the per-GPU batch that
bench_train's batch scan measured (its fastest eager variant, also the single-GPU reference),
else with compute assumed to shrink in proportion to the batch (a best case: small batches use a
GPU less well). The table's last column says which.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _machine import RESULTS, describe, print_table, write_json
from torch import nn

BYTES_FP32 = 4


def build_nets(resolution: int, width: int, num_classes: int) -> tuple[nn.Module, nn.Module]:
    from sagan_plugin.nets import DISCRIMINATORS, GENERATORS

    return (GENERATORS[resolution](num_classes=num_classes, ngf=width),
            DISCRIMINATORS[resolution](num_classes=num_classes, ndf=width))


def count_tensors(netG: nn.Module, netD: nn.Module) -> dict[str, int]:
    """Parameter and buffer element counts of G and D."""
    return {f"{kind}_{name}": sum(t.numel() for t in getattr(net, kind)())
            for name, net in (("G", netG), ("D", netD)) for kind in ("parameters", "buffers")}


def bytes_per_step(counts: dict[str, int], n_dis: int) -> dict[str, int]:
    """What one training step all-reduces (gradients) and broadcasts (buffers), in bytes."""
    return {"all_reduce": BYTES_FP32 * (n_dis * counts["parameters_D"] + counts["parameters_G"]),
            "broadcast": BYTES_FP32 * (counts["buffers_G"] + 2 * n_dis * counts["buffers_D"])}


def ring_factor(gpus: int) -> float:
    """The share of an all-reduced buffer each GPU sends in a ring: 2(p-1)/p."""
    return 2 * (gpus - 1) / gpus


def communication_seconds(volume: dict[str, int], gpus: int, bus_bytes_per_s: float) -> float:
    """Ring all-reduce plus broadcasts at the given bus bandwidth; 0 on one GPU."""
    if gpus == 1:
        return 0.0
    return (volume["all_reduce"] * ring_factor(gpus) + volume["broadcast"]) / bus_bytes_per_s


def flops_per_image(resolution: int, width: int, num_classes: int, batch: int = 2) -> float:
    """FLOPs of one D + G training step per image, counted on this machine's CPU."""
    from bench_train import count_flops, make_step

    step, _ = make_step("ours", width, batch, num_classes, torch.device("cpu"))
    return count_flops(step) / batch


def measured_step(path: Path) -> dict:
    """This project's fastest variant in a bench_train JSON: ms per step at its batch per GPU,
    and the FLOPs of that step."""
    try:
        report = json.loads(path.read_text())
        ours = [row for row in report["rows"]  # rows that failed have no figures
                if row["variant"].startswith("ours") and "images_per_s" in row]
        best = max(ours, key=lambda row: row["images_per_s"])
        scan = report.get("batch_scan")  # absent before 2026-12-03, None when not run
        return {"variant": best["variant"], "ms": float(best["ms"]), "batch": int(report["batch"]),
                "width": int(report["width"]), "machine": report["machine"],
                # bench_train's default, which JSONs before 2026-12-03 did not record
                "num_classes": int(report.get("num_classes", 1000)),
                "flops_per_image": best["flops_per_step"] / int(report["batch"]),
                "scan": scan and {"variant": scan["variant"],
                                  "ms": {int(r["batch"]): float(r["ms"]) for r in scan["rows"]}}}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"error: {path} is not a bench_train JSON ({error}); expected the "
                         "file `bench_train.py --json` writes") from None


def machine_name(machine: dict | str) -> str:
    """The GPU (or CPU) of a benchmark JSON's machine description, with its torch."""
    if not isinstance(machine, dict):
        return str(machine)
    return f"{machine.get('gpu') or machine.get('cpu', '?')}, torch {machine.get('torch', '?')}"


def assumed_step(flops: float, batch: int, mfu: float, peak_tflops: float) -> dict:
    """A step of `batch` images on one GPU running at `mfu` of its peak: no measurement."""
    return {"variant": f"assumed: {100 * mfu:g}% MFU of {peak_tflops:g} TFLOP/s", "batch": batch,
            "ms": 1e3 * flops * batch / (mfu * 1e12 * peak_tflops),
            "machine": "none (not measured)", "flops_per_image": flops}


def scaling_rows(volume: dict[str, int], gpus: list[int], bus: float, step: dict | None,
                 global_batch: int) -> list[dict]:
    rows = []
    for p in gpus:
        comm_ms = 1000 * communication_seconds(volume, p, bus)
        row = {"gpus": p, "all_reduce_mb": volume["all_reduce"] / 1e6 if p > 1 else 0.0,
               "ring_mb_per_gpu": volume["all_reduce"] * ring_factor(p) / 1e6,
               "comm_ms": comm_ms}
        if step is not None:
            weak = step["ms"] + comm_ms
            compute, single, basis = strong_compute_ms(step, global_batch, p)
            strong = compute + comm_ms
            row.update(weak_ms=weak, weak_efficiency=step["ms"] / weak,
                       weak_images_per_s=1000 * p * step["batch"] / weak,
                       strong_ms=strong, strong_speedup=single / strong, strong_basis=basis)
        rows.append(row)
    return rows


def strong_compute_ms(step: dict, global_batch: int, gpus: int) -> tuple[float, float, str]:
    """(ms of one GPU's share of a global-batch step, ms of the whole step on one GPU, where
    they come from): bench_train's batch scan when it timed that share, else linear in batch."""
    scan = step.get("scan")
    share = global_batch / gpus
    if scan and share in scan["ms"] and step["batch"] in scan["ms"]:
        single = scan["ms"][step["batch"]] * global_batch / step["batch"]
        return scan["ms"][int(share)], single, f"measured: {scan['variant']}, batch {share:g}"
    return (step["ms"] * share / step["batch"], step["ms"] * global_batch / step["batch"],
            "assumed: linear in batch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=128, choices=(32, 64, 128))
    parser.add_argument("--width", type=int,
                        help="ngf=ndf (default: the measured run's with --train-json, else 64)")
    parser.add_argument("--num-classes", type=int,
                        help="default: the measured run's with --train-json, else 1000")
    parser.add_argument("--n-dis", type=int, default=1, help="D steps per G step")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--bus-gbps", type=float, default=370.0,
                        help="NCCL bus bandwidth, GB/s (H100/H200 NVLink, ring: 370)")
    parser.add_argument("--global-batch", type=int, default=256, help="strong scaling's batch")
    parser.add_argument("--train-json", type=Path, help="bench_train.py's JSON (a GPU run)")
    parser.add_argument("--assume-mfu", type=float, default=0.3,
                        help="without --train-json: the MFU the step time assumes")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="without --train-json: the GPU's dense bf16 rate (H100/H200: 989)")
    parser.add_argument("--no-flops", action="store_true",
                        help="skip the FLOP count (and so the assumed step time)")
    parser.add_argument("--json", default=str(RESULTS / "ddp_estimate.json"))
    args = parser.parse_args()
    if min(args.gpus) < 1 or args.n_dis < 1 or min(args.bus_gbps, args.peak_tflops) <= 0 \
            or not 0 < args.assume_mfu <= 1:
        parser.error("--gpus and --n-dis must be >= 1, --bus-gbps and --peak-tflops > 0, "
                     "--assume-mfu in (0, 1]")

    if args.train_json:
        step = measured_step(args.train_json)
        for key in ("width", "num_classes"):
            given = getattr(args, key)
            if given is not None and given != step[key]:
                parser.error(f"{args.train_json} measured {key} {step[key]}, not --"
                             f"{key.replace('_', '-')} {given}: the volumes would not match "
                             "the step")
            setattr(args, key, step[key])
        flops = step["flops_per_image"]
    else:
        if args.width is None:
            args.width = 64
        if args.num_classes is None:  # not `or`: 0 classes is an unconditional model
            args.num_classes = 1000
        flops = None if args.no_flops else flops_per_image(args.resolution, args.width,
                                                           args.num_classes)
        step = None if flops is None else assumed_step(flops, args.global_batch,
                                                       args.assume_mfu, args.peak_tflops)
    counts = count_tensors(*build_nets(args.resolution, args.width, args.num_classes))
    volume = bytes_per_step(counts, args.n_dis)
    rows = scaling_rows(volume, args.gpus, 1e9 * args.bus_gbps, step, args.global_batch)

    print(f"SAGAN {args.resolution} px, ngf=ndf={args.width}, {args.num_classes} classes, "
          f"n_dis={args.n_dis}: G {counts['parameters_G'] / 1e6:.2f}M and D "
          f"{counts['parameters_D'] / 1e6:.2f}M parameters")
    print(f"per step: all-reduce {volume['all_reduce'] / 1e6:.1f} MB of fp32 gradients, "
          f"broadcast {volume['broadcast'] / 1e6:.2f} MB of buffers"
          + (f"; {flops / 1e9:.1f} GFLOP per image (D + G step)" if flops else ""))
    print(f"bus bandwidth (assumed): {args.bus_gbps:g} GB/s")
    headers = ["GPUs", "all-reduce MB", "ring MB/GPU", "comm ms"]
    cells = [[r["gpus"], f"{r['all_reduce_mb']:.1f}", f"{r['ring_mb_per_gpu']:.1f}",
              f"{r['comm_ms']:.2f}"] for r in rows]
    if step is not None:
        source = f"on {machine_name(step['machine'])} (from {args.train_json})" \
            if args.train_json else "(on paper: no GPU measured it)"
        print(f"step: {step['variant']}, {step['ms']:.1f} ms at batch {step['batch']} per GPU "
              f"{source}")
        headers += ["weak ms", "weak eff.", "weak images/s",
                    f"strong ms (batch {args.global_batch})", "strong speedup", "strong from"]
        for cell, r in zip(cells, rows, strict=True):
            cell += [f"{r['weak_ms']:.1f}", f"{100 * r['weak_efficiency']:.1f}%",
                     f"{r['weak_images_per_s']:.0f}", f"{r['strong_ms']:.1f}",
                     f"{r['strong_speedup']:.2f}x", r["strong_basis"]]
    else:
        print("step time: unknown (pass --train-json with a GPU bench_train JSON)")
    print_table(headers, cells)
    write_json(args.json, {"benchmark": "ddp_estimate", "machine": describe(torch.device("cpu")),
                           "settings": {k: str(v) if isinstance(v, Path) else v
                                        for k, v in vars(args).items()},
                           "counts": counts, "bytes_per_step": volume,
                           "flops_per_image": flops, "step": step, "rows": rows})


if __name__ == "__main__":
    main()
