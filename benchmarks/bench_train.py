"""Training speed of SAGAN 128 px: this project's nets and step against the host's, side by side.

    python benchmarks/bench_train.py                      # CPU: width 16, batch 4
    python benchmarks/bench_train.py --device cuda        # GPU: full width (64), batch 256

One training step is one D train_step and one G train_step (n_dis=1), each net's own, on a
batch already on the device (the data loader is not timed). Rows:

    host fp32                 torch_mimicry's SAGANGenerator128/SAGANDiscriminator128, Adam
    ours fp32                 sagan_plugin's nets and train_step, fused Adam, G's batch
                              norms in groups of 64 (train.bn_group, as `train` runs them)
    ours bf16                 + bf16 autocast (spectral norm and losses in fp32)
    ours bf16 channels_last   + NHWC
    ours bf16 cl flash        + FlashAttention (query and key zero-padded to the value's width,
                              train.sdpa_backend=flash; the rows above let PyTorch choose)
    ours bf16 cl compile      + torch.compile (GPU by default; --compile on CPU)

at the same widths (ours ngf=ndf=W is the host's ngf=ndf=16W). FLOPs per step are counted with
torch.utils.flop_counter (the compiled and flash rows are given those of their eager, unpadded
twin: the same model maths); MFU divides the achieved FLOP/s by the bf16 matmul rate measured in
the same run. Then the same step on 1 and on N processes (DDP, weak scaling: batch per process
fixed) gives the scaling efficiency. Goals on H100/H200: >= 2x the host's images/s, MFU >= 30%.
`--scan-batches` (on a GPU by default 64 and 32, the paper's 256 split over 4 and 8 GPUs) times
the fastest eager variant at those batches too: what strong scaling in ddp_estimate.py needs
(a compiled step would compile again for every batch).
`--trace FILE.json.gz` profiles a few steps of the fastest variant with torch.profiler (a Chrome
trace, for chrome://tracing or Perfetto) and prints its ten costliest operators.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import torch
import torch.multiprocessing as mp
from _machine import (
    RESULTS,
    bf16_matmul_flops,
    describe,
    keep_if_interrupted,
    median_seconds,
    print_table,
    run_main,
    synchronize,
    write_json,
)
from torch.utils.flop_counter import FlopCounterMode
from trace_summary import print_summary, read_trace, summarize

from sagan_plugin.errors import first_line

RESOLUTION = 128


class Variant(NamedTuple):
    name: str
    impl: str  # "host" or "ours"
    precision: str = "fp32"
    channels_last: bool = False
    compiled: bool = False
    sdpa_backend: str = "auto"


def build(impl: str, width: int, num_classes: int, device: torch.device, fused: bool):
    """(netG, netD, optG, optD) with the paper's optimiser settings."""
    torch.manual_seed(0)
    if impl == "host":
        from sagan_plugin.host import torch_mimicry  # the host, after its compatibility shim

        sagan_128 = importlib.import_module(f"{torch_mimicry.__name__}.nets.sagan.sagan_128")
        netG = sagan_128.SAGANGenerator128(num_classes=num_classes, ngf=16 * width)
        netD = sagan_128.SAGANDiscriminator128(num_classes=num_classes, ndf=16 * width)
    else:
        from sagan_plugin.config import compose
        from sagan_plugin.nets import DISCRIMINATORS, GENERATORS
        from sagan_plugin.nets.layers import set_bn_group

        netG = GENERATORS[RESOLUTION](num_classes=num_classes, ngf=width)
        netD = DISCRIMINATORS[RESOLUTION](num_classes=num_classes, ndf=width)
        # G's batch norms in the groups that `train` uses (the preset's, as the reference's)
        set_bn_group(netG, compose(["model=sagan"]).train.bn_group)
    netG.to(device), netD.to(device)
    optG = torch.optim.Adam(netG.parameters(), 1e-4, betas=(0.0, 0.9), fused=fused)
    optD = torch.optim.Adam(netD.parameters(), 4e-4, betas=(0.0, 0.9), fused=fused)
    return netG, netD, optG, optD


def make_step(impl: str, width: int, batch: int, num_classes: int, device: torch.device,
              precision: str = "fp32", channels_last: bool = False, compile: bool = False,
              sdpa_backend: str = "auto"):
    from sagan_plugin.host import MetricLog
    from sagan_plugin.precision import prepare_for_training, step_context

    netG, netD, optG, optD = build(impl, width, num_classes, device, fused=impl == "ours")
    if device.type == "cuda":  # as `train` runs, host and ours alike: the fastest convolutions
        torch.backends.cudnn.benchmark = True
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    prepare_for_training(netG, netD, precision=precision, sdpa_backend=sdpa_backend,
                         channels_last=channels_last)
    if compile:
        netG.compile(), netD.compile()
    real = (torch.rand(batch, 3, RESOLUTION, RESOLUTION, device=device) * 2 - 1
            ).contiguous(memory_format=memory_format)
    labels = torch.randint(num_classes, (batch,), device=device)

    def step() -> None:
        with step_context(device, precision, sdpa_backend):
            netD.train_step((real, labels), netG, optD, MetricLog(), device=device)
            netG.train_step((real, labels), netD, optG, MetricLog(), device=device)

    return step, (netG, netD)


def profile(step, device: torch.device, path: Path, steps: int = 3) -> dict | None:
    """A torch.profiler trace of `steps` training steps (after one untimed), gzipped; printed
    and returned, its summary (trace_summary.py: GPU idle time, syncs, kernels by kind)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    step()
    synchronize(device)
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=10, max_name_column_width=60))
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix("") if path.suffix == ".gz" else path
    prof.export_chrome_trace(str(raw))
    if raw != path:  # traces are mostly repeated names: gzip makes them ~10x smaller
        with open(raw, "rb") as src, gzip.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()
    print(f"wrote {path}")
    summary = summarize(read_trace(path), steps)
    print_summary(summary)
    return summary


def count_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def _scaling_worker(rank: int, world: int, port: int, args: dict, out: str) -> None:
    import torch.distributed as dist

    from sagan_plugin.distributed import destroy_process_group, wrap

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device(args["device"], rank) if args["device"] == "cuda" \
        else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(args["threads"])
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank,
                            world_size=world)
    step, nets = make_step("ours", args["width"], args["batch"], args["num_classes"], device,
                           args["precision"], args["channels_last"],
                           sdpa_backend=args["sdpa_backend"])
    for net in nets:
        wrap(net, device)
    seconds = median_seconds(step, device, args["repeats"], args["warmup"])
    if rank == 0:
        torch.save(seconds, out)
    destroy_process_group()


def scaling(args: dict, processes: int, tmp: Path) -> list[dict]:
    import socket

    rows = []
    for world in sorted({1, processes}):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = tmp / f"scaling_{world}.pt"
        mp.spawn(_scaling_worker, args=(world, port, args, str(out)), nprocs=world)
        seconds = torch.load(out)
        rows.append({"processes": world, "ms": 1000 * seconds,
                     "images_per_s": world * args["batch"] / seconds})
    base = rows[0]["images_per_s"]
    for row in rows:
        row["efficiency"] = row["images_per_s"] / (row["processes"] * base)
    return rows


def fastest_eager(rows: list[dict], variants: list[Variant]) -> tuple[dict, Variant] | None:
    """Our fastest variant without torch.compile (which would compile again for every new
    batch or process), with its row; None when every one failed."""
    return max(((row, variant) for row, variant in zip(rows, variants, strict=True)
                if variant.impl == "ours" and not variant.compiled and "images_per_s" in row),
               key=lambda pair: pair[0]["images_per_s"], default=None)


def measure(variant: Variant, width: int, batch: int, num_classes: int, device: torch.device,
            repeats: int, warmup: int, flops: int | None) -> tuple[dict, object]:
    """The variant's row and its step function. `flops`: the FLOPs of its eager, unpadded twin,
    whose maths a compiled or flash step does (the counter traces eagerly, padding included);
    counted when None."""
    step, _ = make_step(variant.impl, width, batch, num_classes, device, variant.precision,
                        variant.channels_last, variant.compiled, variant.sdpa_backend)
    seconds = median_seconds(step, device, repeats, warmup + 2 * variant.compiled)
    flops = flops or count_flops(step)
    return {"variant": variant.name, "ms": 1000 * seconds, "images_per_s": batch / seconds,
            "flops_per_step": flops}, step


def batch_scan(rows: list[dict], variants: list[Variant], batches: list[int], batch: int,
               width: int, num_classes: int, device: torch.device, repeats: int,
               warmup: int) -> dict | None:
    """The fastest eager variant of ours at other batches: {variant, rows: [{batch, ms,
    images_per_s}]}, its row of the main table included; None with no batches."""
    batches = sorted({b for b in batches if b != batch}, reverse=True)
    if not batches:
        return None
    best, variant = fastest_eager(rows, variants)  # the caller checked there is one
    scanned = [{"batch": batch, "ms": best["ms"], "images_per_s": best["images_per_s"]}]
    for b in batches:
        step, _ = make_step(variant.impl, width, b, num_classes, device, variant.precision,
                            variant.channels_last, sdpa_backend=variant.sdpa_backend)
        seconds = median_seconds(step, device, repeats, warmup)
        scanned.append({"batch": b, "ms": 1000 * seconds, "images_per_s": b / seconds})
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{variant.name} at other batches (strong scaling's per-GPU batches):")
    print_table(["batch", "ms/step", "images/s", "vs batch " + str(batch)],
                [[r["batch"], f"{r['ms']:.1f}", f"{r['images_per_s']:.2f}",
                  f"{r['images_per_s'] / best['images_per_s']:.2f}x"] for r in scanned])
    return {"variant": variant.name, "rows": scanned}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, help="ours ngf=ndf (default: 64 GPU, 16 CPU)")
    parser.add_argument("--batch", type=int, help="default: 256 GPU, 4 CPU")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, help="default: 20 GPU, 3 CPU")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="add the compiled row (default: on GPU only)")
    parser.add_argument("--processes", type=int,
                        help="scaling test up to N processes (default: GPUs, or 2 on CPU)")
    parser.add_argument("--threads", type=int, help="CPU threads of the main table")
    parser.add_argument("--json", help="default: benchmarks/results/bench_train_<device>.json")
    parser.add_argument("--trace", type=Path,
                        help="write a torch.profiler trace of the fastest variant here")
    parser.add_argument("--scan-batches", type=int, nargs="*",
                        help="time the fastest eager variant at these batches too "
                             "(default: 64 32 on GPU, none on CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.json = args.json or str(RESULTS / f"bench_train_{device.type}.json")
    width, batch = args.width or (64 if gpu else 16), args.batch or (256 if gpu else 4)
    repeats, warmup = args.repeats or (20 if gpu else 3), 3 if gpu else 1
    compile_row = gpu if args.compile is None else args.compile
    variants = [Variant("host fp32", "host"),
                Variant("ours fp32", "ours"),
                Variant("ours bf16", "ours", "bf16"),
                Variant("ours bf16 channels_last", "ours", "bf16", channels_last=True),
                Variant("ours bf16 cl flash", "ours", "bf16", channels_last=True,
                        sdpa_backend="flash")]
    if compile_row:
        variants.append(Variant("ours bf16 cl compile", "ours", "bf16", channels_last=True,
                                compiled=True))

    peak = bf16_matmul_flops(device)
    rows: list[dict] = []
    scan, scale_rows, profiled = None, [], None

    def report() -> dict | None:
        host = rows[0].get("images_per_s") if rows else None
        for row in rows:
            if host and "images_per_s" in row:
                row["vs_host"] = row["images_per_s"] / host
        return {"benchmark": "train", "machine": describe(device), "bf16_matmul_flops": peak,
                "batch": batch, "width": width, "num_classes": args.num_classes, "rows": rows,
                "scaling": scale_rows, "batch_scan": scan, "profile": profiled} if rows else None

    keep_if_interrupted(args.json, report)
    fastest = None  # (images/s, step): kept alive for the trace, so compile runs only once
    for variant in variants:
        # A compiled step does the maths of the eager variant with its settings, and the flash
        # one that of the unpadded layer (the zero columns it multiplies are no work the model
        # needs): theirs is the FLOP count, and so the MFU, of both.
        twin = variant._replace(name="", compiled=False, sdpa_backend="auto")
        flops = next((row.get("flops_per_step") for row, v in zip(rows, variants, strict=False)
                      if twin != variant._replace(name="") and v._replace(name="") == twin),
                     None)
        step = None
        try:
            row, step = measure(variant, width, batch, args.num_classes, device, repeats, warmup,
                                flops)
            row["mfu"] = row["flops_per_step"] * row["images_per_s"] / batch / peak
        except Exception as error:  # out of memory, a compiler error: the other rows still count
            row = {"variant": variant.name, "error": first_line(error)}
            print(f"{variant.name}: FAILED: {row['error']}")
        rows.append(row)
        if args.trace and step is not None and (fastest is None or
                                                row["images_per_s"] > fastest[0]):
            fastest = (row["images_per_s"], step, variant.name)
        del step
        if gpu:
            torch.cuda.empty_cache()
    report()  # each row's vs_host

    print(f"SAGAN {RESOLUTION} px training step (D + G), batch {batch}, width {width} "
          f"(host ngf=ndf={16 * width}), {args.num_classes} classes")
    print(f"machine: {describe(device)}")
    print(f"measured bf16 matmul rate: {peak / 1e12:.2f} TFLOP/s")
    print_table(["variant", "ms/step", "images/s", "vs host", "GFLOP/step", "MFU"],
                [[r["variant"], f"{r['ms']:.1f}", f"{r['images_per_s']:.2f}",
                  f"{r['vs_host']:.2f}x" if "vs_host" in r else "-",
                  f"{r['flops_per_step'] / 1e9:.1f}", f"{100 * r['mfu']:.1f}%"]
                 if "error" not in r else [r["variant"], "failed", "-", "-", "-", "-"]
                 for r in rows])

    if fastest is not None:
        print(f"\nprofile of the fastest variant, {fastest[2]}:")
        try:
            summary = profile(fastest[1], device, args.trace)
            profiled = {"variant": fastest[2], **summary} if summary else None
        except Exception as error:  # the table above is what matters most: keep it
            print(f"profile: FAILED: {first_line(error)}")
        fastest = None
        if gpu:
            torch.cuda.empty_cache()

    eager = fastest_eager(rows, variants)
    scan = batch_scan(rows, variants, args.scan_batches if args.scan_batches is not None
                      else ([64, 32] if gpu else []), batch, width, args.num_classes, device,
                      repeats, warmup) if eager else None

    processes = args.processes or (torch.cuda.device_count() if gpu else 2)
    # CPU: fp32 (bf16 is emulated on many CPUs)
    best = (eager[1] if eager else None) if gpu else variants[1]
    if processes > 1 and best is not None:
        settings = {"device": args.device, "width": width, "batch": batch,
                    "num_classes": args.num_classes, "repeats": repeats, "warmup": warmup,
                    "precision": best.precision, "channels_last": best.channels_last,
                    "sdpa_backend": best.sdpa_backend,
                    "threads": max(1, (os.cpu_count() or 1) // max(processes, 1))}
        tmp = Path(args.json).parent
        tmp.mkdir(parents=True, exist_ok=True)
        scale_rows += scaling(settings, processes, tmp)
        print(f"\nscaling, {best.name}, batch {batch} per process "
              f"({settings['threads']} threads each on CPU):")
        print_table(["processes", "ms/step", "images/s", "efficiency"],
                    [[r["processes"], f"{r['ms']:.1f}", f"{r['images_per_s']:.2f}",
                      f"{100 * r['efficiency']:.0f}%"] for r in scale_rows])
        for world in (1, processes):
            (tmp / f"scaling_{world}.pt").unlink(missing_ok=True)
    elif processes > 1:
        print("\nscaling: skipped, every eager variant of ours failed")
    else:
        print("\nscaling: one device only; pass --processes N on a machine with N devices")
    print("goals (H100/H200): ours >= 2x host images/s, MFU >= 30%")
    write_json(args.json, report())
    failed = [row["variant"] for row in rows if "error" in row]
    if failed:  # the JSON holds the others; the exit status tells the suite
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
