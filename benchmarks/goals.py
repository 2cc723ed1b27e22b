"""The speed and fidelity goals of the GPU issue against what the benchmarks measured.

    python benchmarks/goals.py --results /tmp/suite/results --device cuda   # gpu_suite.sh runs it
    python benchmarks/goals.py --results results/benchmarks --device cpu --markdown

Reads the files the GPU suite writes into one folder (bench_attention_DEV.json,
bench_train_DEV.json, bench_sample_DEV.json, bench_eval_DEV.json, cpp/cpp_check.json), those
that are there, and prints one row per goal: its target, what was measured (naming the variant
that did best) and a verdict: met, MISSED, or not measured. Writes goals_DEV.json beside them.
A missed goal is a result, not a failure: the exit code is 1 only when an input is unreadable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from _machine import print_table, run_main, write_json

# "Same FID" as pytorch-fid: papers print FID to two decimals, 0.1% of a FID of 20 is 0.02.
FID_RELATIVE_TOLERANCE = 1e-3
GOAL_SIDE = 64  # the attention goal is at the 64x64 feature map
CPP_FORMATS = ("torchscript", "aoti")
# Goals judged on the best of a benchmark's rows: stopped early, its rows to come might have
# met what those it measured missed.
BEST_OF_ROWS = {"attention", "train", "sample"}


def _best(rows: list[dict], key: str) -> dict | None:
    rows = [r for r in rows if r.get(key) is not None]
    return max(rows, key=lambda r: r[key]) if rows else None


def _attention_bf16(found: dict) -> list[dict]:
    return [r for r in found["attention"]["ratios"]
            if r["side"] == GOAL_SIDE and r["ours"].endswith("bf16")]


def attention_speed(found: dict) -> tuple[str, bool] | None:
    best = _best(_attention_bf16(found), "speedup")
    return (f"{best['ours']}: {best['speedup']:.2f}x", best["speedup"] >= 2) if best else None


def attention_memory(found: dict) -> tuple[str, bool] | None:
    # none on a CPU: peak memory is a CUDA counter
    best = _best(_attention_bf16(found), "memory_ratio")
    return (f"{best['ours']}: {best['memory_ratio']:.2f}x",
            best["memory_ratio"] >= 4) if best else None


def _ours(found: dict) -> list[dict]:
    return [r for r in found["train"]["rows"] if r["variant"].startswith("ours")]


def train_speed(found: dict) -> tuple[str, bool] | None:
    best = _best(_ours(found), "vs_host")
    return (f"{best['variant']}: {best['vs_host']:.2f}x ({best['images_per_s']:.1f} images/s)",
            best["vs_host"] >= 2) if best else None


def train_mfu(found: dict) -> tuple[str, bool] | None:
    best = _best(_ours(found), "mfu")
    return (f"{best['variant']}: {100 * best['mfu']:.1f}%", best["mfu"] >= 0.30) if best else None


def sample_speed(found: dict) -> tuple[str, bool] | None:
    goal = found["sample"].get("goal")
    if goal is None:  # the goal's batch was not in the run
        return None
    if goal["ratio_to_eager"] is None:
        return f"{goal['path']} at batch {goal['batch']}: a path failed", False
    return (f"{goal['path']} at batch {goal['batch']}: {goal['ratio_to_eager']:.2f}x",
            bool(goal["met"]))


def cpp_parity(found: dict) -> tuple[str, bool | None] | None:
    check = found["cpp"]
    if "error" in check:  # before any export: the tiny training run failed
        return f"failed: {check['error']}", False
    words, passed = [], []
    for fmt in CPP_FORMATS:
        entry = check["formats"].get(fmt)
        if entry is None:  # the check was stopped before it
            words.append(f"{fmt}: not checked")
        elif "error" in entry:
            words.append(f"{fmt}: failed ({entry['error']})")
            passed.append(False)
        else:
            worst = max(entry["max_abs_vs_python"], entry["max_abs_module_vs_program"])
            as_a_user = entry.get("max_abs_vs_python_tf32")  # both with torch's defaults
            words.append(f"{fmt}: {worst:.2g}" + (
                "" if as_a_user is None else f" ({as_a_user:.2g} with TF32)"))
            passed.append(bool(entry["pass"]))
    # Both formats or no verdict, unless one that was checked failed already.
    met = False if not all(passed) else (True if len(passed) == len(CPP_FORMATS) else None)
    return (f"max |C++ - Python| in float32 {', '.join(words)} "
            f"(tolerance {check['tolerance']:g})", met)


def eval_fid(found: dict) -> tuple[str, bool] | None:
    runs = found["eval"]["end_to_end"]
    ours, theirs = runs["sagan_plugin_eval"]["fid"], runs["pytorch_fid_cli"]["fid"]
    relative = abs(ours - theirs) / abs(theirs)
    return (f"{ours:.4f} against {theirs:.4f} ({relative:.1e} apart, "
            f"n={found['eval']['n']})", relative <= FID_RELATIVE_TOLERANCE)


def eval_speed(found: dict) -> tuple[str, bool] | None:
    rates = found["eval"]["images_per_second"]
    ours, theirs = rates["sagan-plugin eval, A vs B"], rates["pytorch-fid CLI, A vs B"]
    return f"{ours:.1f} against {theirs:.1f} images/s ({ours / theirs:.2f}x)", ours >= theirs


# (goal, target, source, check): the order of the issue. A check returns what was measured,
# in words, and whether it meets the target (None: cannot tell); None when its file lacks the
# figure.
GOALS: list[tuple[str, str, str, Callable[[dict], tuple[str, bool | None] | None]]] = [
    ("attention 64x64 bf16, time vs Mimicry's", ">= 2x faster", "attention", attention_speed),
    ("attention 64x64 bf16, peak memory vs Mimicry's", ">= 4x less", "attention",
     attention_memory),
    ("training 128 px, images/s vs Mimicry's", ">= 2x", "train", train_speed),
    ("training 128 px, MFU (bf16 matmul rate)", ">= 30%", "train", train_mfu),
    ("C++ sampler, both formats, vs Python", "within tolerance", "cpp", cpp_parity),
    ("sampling, fastest path vs Python eager fp32", "GPU >= 3x at batch 256; CPU >= 1.5x at 64",
     "sample", sample_speed),
    ("FID vs python -m pytorch_fid", f"within {FID_RELATIVE_TOLERANCE:.0e} relative", "eval",
     eval_fid),
    ("FID throughput vs python -m pytorch_fid", ">= 1x", "eval", eval_speed),
]


def source_files(results: Path, device: str) -> dict[str, Path]:
    return {"attention": results / f"bench_attention_{device}.json",
            "train": results / f"bench_train_{device}.json",
            "sample": results / f"bench_sample_{device}.json",
            "eval": results / f"bench_eval_{device}.json",
            "cpp": results / "cpp" / "cpp_check.json"}


def load(files: dict[str, Path]) -> dict[str, dict]:
    """The JSONs that exist, by source; an unreadable one is an error naming it."""
    found = {}
    for source, path in files.items():
        if not path.is_file():
            continue
        try:
            found[source] = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise SystemExit(f"error: {path}: not readable JSON ({error})") from None
    return found


def verdicts(found: dict[str, dict]) -> list[dict]:
    rows = []
    for goal, target, source, check in GOALS:
        try:
            result = check(found) if source in found else None
        except (KeyError, TypeError, ZeroDivisionError) as error:  # a JSON of another shape
            raise SystemExit(f"error: {source}'s JSON lacks what the goal reads ({error!r})"
                             ) from None
        measured, met = result if result else ("-", None)
        if result and found[source].get("interrupted"):
            measured += " (stopped early: not every case ran)"
            if met is False and source in BEST_OF_ROWS:
                met = None
        rows.append({"goal": goal, "target": target, "measured": measured, "met": met,
                     "source": source})
    return rows


def _said(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "not measured"}[met]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True,
                        help="the folder the benchmarks wrote their JSON into")
    parser.add_argument("--device", default="cuda", help="the DEV of the file names (cuda)")
    parser.add_argument("--markdown", action="store_true", help="a table for the README")
    parser.add_argument("--json", type=Path, help="default: RESULTS/goals_DEV.json")
    args = parser.parse_args()
    if not args.results.is_dir():
        print(f"error: --results {args.results}: not a folder", file=sys.stderr)
        return 1
    files = source_files(args.results, args.device)
    found = load(files)
    rows = verdicts(found)
    machines = {source: found[source].get("machine") for source in found}
    print(f"goals on {args.device}, from {args.results} ({len(found)} of {len(files)} result "
          "files found); the targets are for an H100/H200")
    cells = [[r["goal"], r["target"], r["measured"], _said(r["met"])] for r in rows]
    if args.markdown:
        print("| goal | target | measured | verdict |\n| --- | --- | --- | --- |")
        print("\n".join("| " + " | ".join(row) + " |" for row in cells))
    else:
        print_table(["goal", "target", "measured", "verdict"], cells)
    write_json(args.json or args.results / f"goals_{args.device}.json",
               {"benchmark": "goals", "device": args.device, "rows": rows,
                "sources": {s: {"file": str(files[s]), "machine": machines[s],
                                "commit": found[s].get("commit"), "date": found[s].get("date")}
                            for s in found}})
    return 0


if __name__ == "__main__":
    run_main(main)
