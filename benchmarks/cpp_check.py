"""The C++ sampler on a device, end to end: a tiny run, both exports, the program, parity.

    python benchmarks/cpp_check.py --build cpp/build --device cpu --work /tmp/cppcheck
    python benchmarks/cpp_check.py --build cpp/build-cuda --device cuda --work $W  # gpu_suite.sh

Trains a tiny conditional SAGAN for a few steps on procedural images, exports it as TorchScript
and as an AOTInductor package for the device, runs `sagan_sample --device DEVICE` on each
(saving the float images and a grid PNG), and compares them with the Python recipe
(sagan_plugin.sample.sample on the same device) and with the pybind11 module, all in float32
(`--no-tf32`, export.full_fp32), at the export check's tolerance; a failed comparison exits 1
after writing the JSON, so the suite's log shows every number. It also runs the program as a
user would, with torch's default (TF32 convolutions on a GPU), and records how far that is from
the Python recipe with the same default (`max_abs_vs_python_tf32`, a figure without a bound).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from _machine import keep_if_interrupted, last_error_line, run_main

from sagan_plugin.export import CHECK_TOLERANCE, full_fp32
from sagan_plugin.runs import load_generator
from sagan_plugin.sample import sample

REPO = Path(__file__).resolve().parents[1]
FORMATS = {"torchscript": "generator.pt", "aoti": "generator.pt2"}
N, SEED, CLASSES, BATCH = 24, 3, (0, 3, 7), 8


class CommandFailed(Exception):
    """A `sagan-plugin` command exited non-zero; the message is its last line of stderr."""


def cli(*args: str) -> float:
    """Run `python -m sagan_plugin ARGS` from the repository root; seconds taken."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sagan_plugin", *args], cwd=REPO,
                          stderr=subprocess.PIPE, text=True)
    sys.stderr.write(done.stderr)
    if done.returncode:
        raise CommandFailed(f"sagan-plugin {args[0]}: {last_error_line(done)}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=REPO / "cpp" / "build",
                        help="the CMake build folder holding sagan_sample and the module")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work", type=Path, required=True, help="run folder, PNGs, tensors")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path, help="default: WORK/cpp_check.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    run = args.work / "run"
    result: dict = {"device": args.device, "n": N, "seed": SEED, "classes": list(CLASSES),
                    "tolerance": CHECK_TOLERANCE[device.type], "formats": {}}
    out = args.json or args.work / "cpp_check.json"
    out.unlink(missing_ok=True)  # an earlier check's verdict must not pass for this one's
    keep_if_interrupted(out, None)

    def save(passed: bool) -> None:  # after every format: a stage stopped early keeps them
        unfinished = len(result["formats"]) < len(FORMATS) and "error" not in result
        result["pass"] = passed and not unfinished  # one format checked is not both
        if unfinished:  # until the last format: a stop (the suite's timeout) leaves this mark
            result["interrupted"] = True
        else:
            result.pop("interrupted", None)
        out.write_text(json.dumps(result, indent=2) + "\n")

    try:
        result["train_s"] = cli(
            "train", "model=sagan", "data=procedural", f"run_dir={run}", "model.ngf=16",
            "model.ndf=16", "train.batch_size=16", f"train.steps={args.steps}",
            f"train.save_steps={args.steps}", f"train.vis_steps={args.steps}",
            "data.size=256", "data.num_workers=0", f"train.device={args.device}")
    except CommandFailed as error:
        result["error"] = str(error)
        save(False)
        print(error, file=sys.stderr)
        return 1
    netG = load_generator(run, device=device).netG
    with full_fp32():
        expected = sample(netG, N, SEED, list(CLASSES), batch=BATCH, device=device)
    expected_tf32 = sample(netG, N, SEED, list(CLASSES), batch=BATCH, device=device)
    sys.path.insert(0, str(args.build.resolve()))
    import sagan_sample_ext  # built next to the program

    def program(model: Path, name: str, *flags: str) -> tuple[torch.Tensor, float | None]:
        """Run sagan_sample on the model: its images, and its images/s."""
        tensor = args.work / f"{name}.pt"
        done = subprocess.run(
            [str(args.build / "sagan_sample"), "--model", str(model), "--n", str(N), "--seed",
             str(SEED), "--classes", ",".join(map(str, CLASSES)), "--batch", str(BATCH),
             "--device", args.device, "--out", str(args.work / f"{name}.png"),
             "--save-tensor", str(tensor), *flags], capture_output=True, text=True)
        print(done.stdout.strip(), done.stderr.strip()[-2000:], sep="\n")
        if done.returncode:
            raise CommandFailed(f"sagan_sample: {last_error_line(done)}")
        rate = re.search(r"([0-9.e+]+) images/s", done.stdout)
        return torch.load(tensor), float(rate.group(1)) if rate else None

    ok = True
    for fmt, name in FORMATS.items():
        model = run / "export" / name
        entry: dict = {}
        try:
            entry["export_s"] = cli("export", f"run={run}", f"format={fmt}",
                                    f"device={args.device}")
            images, _ = program(model, f"cpp_{fmt}", "--no-tf32")
            as_a_user, entry["program_images_per_s"] = program(model, f"cpp_{fmt}_tf32")
            entry["max_abs_vs_python_tf32"] = (as_a_user - expected_tf32).abs().max().item()
        except CommandFailed as error:  # the other format is still checked
            entry["error"], ok = str(error), False
            result["formats"][fmt] = entry
            save(ok)
            continue
        with full_fp32():  # the module shares the program's library: the same setting
            module = sagan_sample_ext.Generator(str(model), args.device).sample(
                N, seed=SEED, classes=list(CLASSES), batch=BATCH)
        entry["max_abs_vs_python"] = (images - expected).abs().max().item()
        entry["max_abs_module_vs_program"] = (module - images).abs().max().item()
        entry["pass"] = max(entry["max_abs_vs_python"],
                            entry["max_abs_module_vs_program"]) <= result["tolerance"]
        ok &= entry["pass"]
        result["formats"][fmt] = entry
        save(ok)
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    run_main(main)
