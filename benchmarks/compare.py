"""SAGAN against Mimicry's baselines: train each at its own defaults, score all the same way.

    python benchmarks/compare.py models=sagan,sngan data=fashion_mnist steps=2000 n=10000
    python benchmarks/compare.py runs=runs/a,runs/b n=10000          score finished runs only

Every model is trained on the same data for the same number of generator steps (each with its
family's preset: SAGAN's TTUR and one D step, SNGAN's five D steps and linear decay), then
scored by `sagan-plugin eval` (FID, KID on pytorch-fid's Inception, the same real statistics).
Other key=value tokens override every model's configuration; `NAME:key=value` only model NAME's
(e.g. `sagan:model.ngf=16 sngan:model.ngf=64`: widths mean different things per family).
A table goes to stdout, JSON with the machine's description to benchmarks/results/.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from _machine import RESULTS, describe, print_table, write_json

from sagan_plugin.config import build_models, compose, resolve_device
from sagan_plugin.errors import UsageError
from sagan_plugin.evaluate import main as evaluate
from sagan_plugin.runs import load_run_config
from sagan_plugin.train import run

# What the papers report, for orientation only (not measured here): FID, IS.
PUBLISHED = {
    ("sagan", "imagenet_128"): "SAGAN paper: FID 18.65, IS 52.52",
    ("cgan_pd", "imagenet_128"): "SAGAN paper, SNGAN-projection: FID 27.62, IS 36.80",
    ("sngan", "cifar10"): "Mimicry: FID 16.77, IS 7.97 (100k steps)",
    ("sngan", "imagenet_32"): "Mimicry: FID 23.04, IS 8.97 (100k steps)",
}


def _parse(argv: list[str]) -> tuple[dict[str, str], list[str], dict[str, list[str]]]:
    options = {"models": "sagan,sngan", "data": "fashion_mnist", "steps": "1000", "n": "10000",
               "runs": "", "out_dir": "runs/compare"}
    shared, per_model = [], {}
    for token in argv:
        key, sep, value = token.partition("=")
        if not sep:
            raise UsageError(f"expected key=value, got {token!r}")
        if ":" in key:
            name, _, key = key.partition(":")
            per_model.setdefault(name, []).append(f"{key}={value}")
        elif key in options:
            options[key] = value
        else:
            shared.append(token)
    return options, shared, per_model


def _train(name: str, options: dict[str, str], overrides: list[str]) -> tuple[Path, float]:
    """Train one model; returns its run folder and its training images per second."""
    data = options["data"]
    run_dir = Path(options["out_dir"]) / f"{name}_{data}"
    cfg = compose([f"model={name}", f"data={data}", f"train.steps={options['steps']}",
                   f"run_dir={run_dir}", *overrides])
    start = time.perf_counter()
    run(cfg)
    seconds = time.perf_counter() - start
    images = cfg.train.steps * cfg.train.batch_size * (cfg.train.n_dis + 1)
    return Path(cfg.run_dir), images / seconds


def _score(run_dir: Path, n: str) -> dict:
    out = run_dir / "eval" / f"compare_n{n}.json"
    evaluate([f"run={run_dir}", "metrics=fid,kid", f"n={n}", f"out={out}"])
    return json.loads(out.read_text())["rows"][-1]


def main(argv: list[str]) -> None:
    options, shared, per_model = _parse(argv)
    if options["runs"]:
        runs = {Path(r): None for r in options["runs"].split(",")}
    else:
        runs = {}
        for name in options["models"].split(","):
            run_dir, rate = _train(name, options, shared + per_model.get(name, []))
            runs[run_dir] = rate
    rows = []
    for run_dir, rate in runs.items():
        cfg = load_run_config(run_dir)
        netG, netD = build_models(cfg)
        scores = _score(run_dir, options["n"])
        rows.append({
            "model": cfg.model.name, "data": cfg.data.name, "run": str(run_dir),
            "step": scores["step"], "params_G": sum(p.numel() for p in netG.parameters()),
            "params_D": sum(p.numel() for p in netD.parameters()),
            "train_images_per_s": rate, "fid": scores["fid"], "kid": scores["kid"],
            "kid_std": scores["kid_std"], "n": int(options["n"]),
            "published": PUBLISHED.get((cfg.model.name, cfg.data.name)),
        })
    print_table(["model", "data", "step", "G params", "D params", "train img/s", "FID",
                 "KID x1e3"],
                [[r["model"], r["data"], r["step"], f"{r['params_G'] / 1e6:.2f}M",
                  f"{r['params_D'] / 1e6:.2f}M",
                  "-" if r["train_images_per_s"] is None else f"{r['train_images_per_s']:.1f}",
                  f"{r['fid']:.2f}", f"{1e3 * r['kid']:.2f} ± {1e3 * r['kid_std']:.2f}"]
                 for r in rows])
    for r in rows:
        if r["published"]:
            print(f"published for {r['model']} on {r['data']} (orientation only): {r['published']}")
    write_json(RESULTS / f"compare_{options['data']}.json",
               {"benchmark": "compare", "machine": describe(resolve_device("auto")),
                "rows": rows, "options": options, "overrides": shared, "per_model": per_model})


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
