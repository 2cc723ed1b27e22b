"""`sagan-plugin eval`: FID, KID and Inception Score of a run, offline.

    sagan-plugin eval run=runs/demo metrics=fid,kid,is n=10000          latest checkpoint
    sagan-plugin eval run=runs/demo steps=all ema=false                  every checkpoint, raw G
    sagan-plugin eval run=runs/demo steps=5000-20000 data.root=/data     a range of steps
    sagan-plugin eval images=samples/ ref=real/                         two image folders

The generated images are exactly those `sagan-plugin sample run=... n=N seed=S out=DIR/` would
write (same noise, labels i % num_classes, so classes are balanced), but they reach the
Inception network as uint8 tensors, without a PNG round trip. Real-image features are cached
(sagan_plugin/metrics/real_stats.py). A table goes to stdout and a JSON file beside the run,
or for images=DIR beside the folder (DIR_eval.json).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import ListConfig, OmegaConf

from sagan_plugin.errors import UsageError
from sagan_plugin.files import check_output_file, check_writable, write_json
from sagan_plugin.metrics.features import (
    FeatureExtractor,
    folder_batches,
    folder_files,
)
from sagan_plugin.metrics.real_stats import real_features
from sagan_plugin.metrics.scoring import (
    IS_UNAVAILABLE,
    check_generator_fits,
    check_sample_count,
    generator_features,
    score,
    warn_if_biased,
)
from sagan_plugin.metrics.weights import resolve_weights
from sagan_plugin.overrides import parse_overrides
from sagan_plugin.schema import SEED, at_least, option

METRICS = ("fid", "kid", "is")
RUN_ONLY_KEYS = ("n", "n_real", "steps", "ema", "seed", "stats_cache")
FOLDER_ONLY_KEYS = ("ref",)


@dataclass
class EvalConfig:
    run: str | None = option(None, "a run folder or a netG checkpoint file")
    images: str | None = option(None, "or: a folder of images to score ...")
    ref: str | None = option(None, "... against a folder of reference images (FID/KID)")
    metrics: Any = option("fid,kid,is", "comma list or [list] of fid, kid, is")
    n: int = option(10000, "generated images per checkpoint (images= scores every file)",
                    at_least(2))
    n_real: int | None = option(None, "real images for the statistics; null: n", at_least(2))
    steps: str = option("last", "last, all, a step, first-last (inclusive) or a comma list")
    ema: bool = option(True, "the EMA weights of G when the checkpoint has them")
    seed: int = option(0, "seed of the noise", SEED)
    batch_size: int = option(50, "images per Inception pass", at_least(1))
    device: str = option("auto", "auto (cuda when present), cpu, cuda or cuda:N")
    inception_weights: str | None = option(None, "weights file; null: $SAGAN_INCEPTION_WEIGHTS, "
                                           "caches, fid-helper")
    stats_cache: str | None = option(None, "real-statistics cache; null: "
                                     "~/.cache/sagan_plugin/real_stats ($SAGAN_CACHE_DIR)")
    out: str | None = option(None, "JSON file; null: <run>/eval/<ema|raw>_n<n>.json (raw when "
                             "the checkpoint has no EMA), or DIR_eval.json for images=DIR")
    kid_subsets: int = option(100, "KID subsets", at_least(1))
    kid_subset_size: int = option(1000, "images per KID subset (n when n is smaller)", at_least(2))
    is_splits: int = option(10, "IS splits", at_least(1))
    # data.KEY=VALUE tokens override the run's data section (e.g. data.root=/data).


def parse_metrics(value: Any) -> list[str]:
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, Sequence | ListConfig):
        items = list(value)
    else:  # null, or a lone number or boolean (metrics=5): not a list of names
        items = [] if value is None else [value]
    names = [str(m).strip().lower() for m in items if str(m).strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UsageError(f"metrics={value} is not a list of {', '.join(METRICS)}")
    return names


def select_steps(available: list[int], spec: str) -> list[int]:
    """The saved steps that spec names: a range takes those in it (at least one), and a step
    or a comma list every one it names, each of which must be saved."""
    spec = str(spec).strip()
    if spec == "last":
        return available[-1:]
    if spec == "all":
        return available
    saved = f"saved: {', '.join(map(str, available))}"
    try:
        if "-" in spec:
            first, last = (int(s) for s in spec.split("-"))
            if first > last:
                raise UsageError(f"steps={spec}: the first step is after the last; "
                                 f"expected first-last with first <= last")
            chosen = [s for s in available if first <= s <= last]
            if not chosen:
                raise UsageError(f"steps={spec}: no checkpoint was saved from step {first} to "
                                 f"{last}; {saved}")
            return chosen
        chosen = [int(s) for s in spec.split(",")]
    except ValueError:
        raise UsageError(f"steps={spec}: expected last, all, a step, first-last or "
                         "a comma list of steps") from None
    missing = [s for s in chosen if s not in available]
    if missing:
        raise UsageError(f"steps={spec}: no checkpoint was saved at step"
                         f"{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}; "
                         f"{saved}")
    return chosen


def _columns(metrics: list[str]) -> list[str]:
    return ["step"] + [c for m in metrics for c in ((m,) if m == "fid" else (m, f"{m}_std"))]


def _print_header(metrics: list[str]) -> None:
    print("  ".join(f"{c:>12}" for c in _columns(metrics)), flush=True)


def _print_row(row: dict[str, Any], metrics: list[str]) -> None:
    cells = [row.get(c) for c in _columns(metrics)]
    print("  ".join(f"{'n/a':>12}" if v is None else f"{v:>12.6g}" for v in cells), flush=True)


def _needs_reference(metrics: list[str]) -> bool:
    """FID and KID compare with real images; IS does not."""
    return bool({"fid", "kid"} & set(metrics))


def _image_folders(cfg: Any, metrics: list[str]) -> tuple[list[Path], list[Path] | None]:
    """The files of images= and (for FID/KID) ref=, or a one-line error naming what is wrong."""
    files = folder_files(cfg.images)
    if not _needs_reference(metrics):
        return files, None
    if cfg.ref is None:
        raise UsageError("FID and KID of images=DIR need ref=DIR (reference images)")
    return files, folder_files(cfg.ref)


def _evaluate_folders(cfg: Any, metrics: list[str], extractor: FeatureExtractor,
                      files: list[Path], ref_files: list[Path] | None) -> dict:
    fake = extractor.extract(folder_batches(files, cfg.batch_size), len(files), "images")
    real = None
    if ref_files is not None:
        real = extractor.extract(folder_batches(ref_files, cfg.batch_size), len(ref_files),
                                 "reference").features
    row = {"step": None, **score(fake, real, metrics, extractor.has_logits, cfg.kid_subsets,
                                 cfg.kid_subset_size, cfg.is_splits)}
    return {"images": cfg.images, "ref": cfg.ref, "rows": [row]}


def checkpoints_to_evaluate(cfg: Any) -> list[int | None]:
    """The steps `run=` and `steps=` select; [None] for a checkpoint file."""
    from sagan_plugin.checkpoint import checkpoint_steps
    from sagan_plugin.runs import resolve_checkpoint

    run_dir, _ = resolve_checkpoint(cfg.run)
    return [None] if Path(cfg.run).is_file() else select_steps(checkpoint_steps(run_dir), cfg.steps)


def _evaluate_run(cfg: Any, metrics: list[str], extractor: FeatureExtractor,
                  run_tokens: list[str]) -> dict:
    from sagan_plugin.data import build_dataset
    from sagan_plugin.runs import load_generator

    real = real_path = dataset = None
    rows = []
    _print_header(metrics)
    for step in checkpoints_to_evaluate(cfg):
        loaded = load_generator(cfg.run, step=step, prefer_ema=cfg.ema, device=extractor.device,
                                run_tokens=run_tokens)
        if dataset is None:  # one run, one data set
            data_cfg = loaded.config.data
            dataset = build_dataset(data_cfg)
        check_generator_fits(loaded.netG, dataset, data_cfg.num_classes,
                             f"data set {data_cfg.name}")
        if real is None and _needs_reference(metrics):
            # n_real was checked, and warned about, with n before the header
            real, real_path = real_features(data_cfg, dataset, cfg.n_real or cfg.n, extractor,
                                            cfg.stats_cache)
        start = time.perf_counter()
        fake = generator_features(loaded.netG, extractor, cfg.n, cfg.seed)
        row = {"step": loaded.step, "ema": loaded.ema,
               **score(fake, real, metrics, extractor.has_logits, cfg.kid_subsets,
                       cfg.kid_subset_size, cfg.is_splits),
               "seconds": round(time.perf_counter() - start, 3)}
        rows.append(row)
        _print_row(row, metrics)
    return {"run": str(cfg.run), "real_features": str(real_path) if real_path else None,
            "rows": rows}


def default_output(cfg: Any, ema: bool) -> Path:
    """ema: whether the weights scored are G's EMA (not merely asked for with ema=true)."""
    name = f"{'ema' if ema else 'raw'}_n{cfg.n}.json"
    if cfg.images:
        return Path(cfg.images.rstrip("/") + "_eval.json")
    from sagan_plugin.runs import resolve_checkpoint

    run_dir, ckpt = resolve_checkpoint(cfg.run)
    if Path(cfg.run).is_file():
        return ckpt.parent / f"{ckpt.stem}_{name}"
    return run_dir / "eval" / name


def _with_earlier_rows(payload: dict, out: Path) -> dict:
    """A run folder's default report keeps the rows of the steps scored before with the same
    settings and weights: another steps= adds rows. Other settings start the file afresh."""
    try:
        earlier = json.loads(out.read_text())
    except (OSError, ValueError):
        return payload

    def settings(report: dict) -> tuple:
        chosen = {k: v for k, v in report.get("settings", {}).items() if k != "steps"}
        return chosen, report.get("inception", {}).get("sha256")

    if not isinstance(earlier, dict) or settings(earlier) != settings(payload):
        return payload
    steps = {row["step"] for row in payload["rows"]}
    kept = [row for row in earlier.get("rows", []) if row.get("step") not in steps]
    if kept:
        print(f"kept the rows of steps {', '.join(str(r['step']) for r in kept)} from {out}")
    return {**payload, "rows": sorted(kept + payload["rows"], key=lambda row: row["step"])}


def _refuse_keys_of_the_other_source(cfg: Any, argv: list[str], run_tokens: list[str]) -> None:
    """A key that only the other source (run= or images=) reads would be ignored silently."""
    if (cfg.run is None) == (cfg.images is None):
        raise UsageError("eval: give run=<run folder or checkpoint> or images=<folder>")
    given = {t.split("=", 1)[0]: t for t in argv}
    ignored = [given[k] for k in (FOLDER_ONLY_KEYS if cfg.run else RUN_ONLY_KEYS) if k in given]
    if cfg.images and (run_tokens or ignored):
        raise UsageError(f"eval: images=DIR scores every file in it: leave out "
                         f"{' '.join(run_tokens + ignored)} (keys of run=)")
    if cfg.run and ignored:
        raise UsageError(f"eval: run= scores against the run's data set: leave out "
                         f"{' '.join(ignored)} (a key of images=DIR)")
    if cfg.run and "steps" in given and Path(cfg.run).is_file():
        raise UsageError(f"eval: run={cfg.run} is one checkpoint file: leave out "
                         f"{given['steps']} (it picks the checkpoints of a run folder)")


def _sample_counts(cfg: Any, metrics: list[str],
                   folders: tuple[list[Path], list[Path] | None] | None) -> dict[str, int]:
    """How many images each side of the comparison has (named by the key that sets it)."""
    if folders is None:
        counts = {"n": cfg.n}
        if _needs_reference(metrics):
            counts["n_real"] = cfg.n_real or cfg.n
        return counts
    files, ref_files = folders
    return {"images": len(files)} | ({} if ref_files is None else {"ref": len(ref_files)})


def _report(result: dict, metrics: list[str], cfg: Any, extractor: FeatureExtractor) -> dict:
    """The JSON written: the scores and everything needed to reproduce them."""
    return {
        **result, "metrics": metrics, "settings": OmegaConf.to_container(cfg),
        "inception": {"source": extractor.weights.source, "path": str(extractor.weights.path),
                      "sha256": extractor.weights.sha256, "has_logits": extractor.has_logits},
        "is_unavailable": None if extractor.has_logits else IS_UNAVAILABLE,
        "image_mapping": "uint8 = trunc(clamp((x + 1) * 127.5 + 0.5, 0, 255)), then "
                         "bilinear resize to 299x299 as pytorch-fid",
        "device": str(extractor.device), "torch": torch.__version__,
    }


def main(argv: list[str]) -> None:
    from sagan_plugin.runs import load_generator, split_run_tokens

    argv, run_tokens = split_run_tokens(argv)
    cfg = parse_overrides(EvalConfig, argv, "eval")
    metrics = parse_metrics(cfg.metrics)
    _refuse_keys_of_the_other_source(cfg, argv, run_tokens)
    # bad input fails before the Inception network loads
    ema = False
    if cfg.run:
        # A run's settings fix whether its checkpoints have EMA weights: the first one tells
        # the default file name what is really scored.
        ema = load_generator(cfg.run, step=checkpoints_to_evaluate(cfg)[0], prefer_ema=cfg.ema,
                             run_tokens=run_tokens).ema
    out = check_output_file(cfg.out or default_output(cfg, ema))
    if cfg.stats_cache is not None:
        check_writable(cfg.stats_cache)
    folders = None if cfg.run else _image_folders(cfg, metrics)
    counts = _sample_counts(cfg, metrics, folders)
    for what, count in counts.items():
        check_sample_count(count, what, warn=False)
    extractor = FeatureExtractor(resolve_weights(cfg.inception_weights), cfg.device,
                                 cfg.batch_size)
    # Only once the weights are known to hold IS's classifier can the work be of use.
    if set(metrics) == {"is"} and not extractor.has_logits:
        raise UsageError(f"metrics=is: the Inception Score is unavailable with "
                         f"{extractor.weights.path}: {IS_UNAVAILABLE} (inception_weights=FILE)")
    for what, count in counts.items():  # the small-n warning after the errors: they come alone
        if "fid" in metrics:  # KID is unbiased at any n, and IS has no covariance
            warn_if_biased(count, what)
    if "is" in metrics and not extractor.has_logits:
        print(f"IS unavailable: {IS_UNAVAILABLE}")
    if cfg.run:
        result = _evaluate_run(cfg, metrics, extractor, run_tokens)
    else:
        result = _evaluate_folders(cfg, metrics, extractor, *folders)
    payload = _report(result, metrics, cfg, extractor)
    if cfg.run and not cfg.out and Path(cfg.run).is_dir():
        payload = _with_earlier_rows(payload, out)
    write_json(out, payload)
    if cfg.images:
        _print_header(metrics)
        _print_row(result["rows"][0], metrics)
    if any(row.get("kid") is not None and row.get("kid_std") is None for row in result["rows"]):
        print(f"kid_std n/a: kid_subset_size={cfg.kid_subset_size} takes every image, so all "
              "subsets are one; a smaller kid_subset_size gives a spread")
    print(f"wrote {out}")
