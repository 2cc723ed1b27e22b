"""Mimicry's `mmc.metrics.evaluate`, with its arguments and its JSON, on the offline Inception.

    from sagan_plugin import metrics
    metrics.evaluate(metric="fid", netG=netG, log_dir="./log/example", dataset="cifar10",
                     num_real_samples=10000, num_fake_samples=10000, evaluate_step=100000)

Mimicry's own runs TF1's Inception graph, which needs TensorFlow and downloads its weights. This
one takes the same call and scores as `sagan-plugin eval` does: for a step and a seed it returns
what `sagan-plugin eval run=LOG_DIR steps=STEP seed=SEED ema=false` reports with the same image
counts and KID subsets (same images, network and formulas). Where it differs from Mimicry's, on
purpose:

- images reach uint8 by the fixed rule of `sagan-plugin sample`, not a min-max over the set;
- the real images are one seeded subset, the same for every seed, cached as `eval` caches them;
  with a Dataset object, in the `stats_file` / `feat_file` that Mimicry asks for (its TF
  statistics cannot be read: they are another network's);
- the scores ({step: [score of each seed]}, Mimicry's file name) go to LOG_DIR/eval/, so that
  they never mix with TF scores in Mimicry's own files.
"""

from __future__ import annotations

import json
import os
import reprlib
from collections.abc import Callable, Mapping
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from sagan_plugin.checkpoint import (
    checkpoint_dir,
    checkpoint_path,
    load_weights,
    read_checkpoint,
    state_dict_mismatch,
)
from sagan_plugin.errors import UsageError
from sagan_plugin.files import check_writable, write_json, write_npz
from sagan_plugin.metrics.features import FeatureExtractor
from sagan_plugin.metrics.real_stats import real_features, subset_features
from sagan_plugin.metrics.scoring import (
    IS_UNAVAILABLE,
    check_generator_fits,
    check_sample_count,
    generator_features,
    score,
)
from sagan_plugin.registry import eval_mode
from sagan_plugin.schema import SEED, Rule, one_of

NAMES = {"fid": "FID", "kid": "KID", "inception_score": "Inception Score"}
OUR_METRIC = {"fid": "fid", "kid": "kid", "inception_score": "is"}


def _kind(expected: str, *types: type, test: Callable[[Any], bool] = lambda v: True,
          optional: bool = False) -> Rule:
    """A value of one of types (True and False are not ints here) that passes test, or None
    where optional."""
    def accepts(v: Any) -> bool:
        if v is None:
            return optional
        return isinstance(v, types) and (bool in types or not isinstance(v, bool)) and test(v)

    return Rule(accepts, f"{expected} or None" if optional else expected)


PATH = (str, os.PathLike)
INT = _kind("an int", Integral)  # numpy's integers too
COUNT = _kind("an int", Integral, optional=True)
POSITIVE = _kind("a positive int", Integral, test=lambda v: v >= 1)
FLAG = _kind("True or False", bool)
FOLDER = _kind("a path (str or os.PathLike)", *PATH)
FILE = _kind(FOLDER.expected, *PATH, optional=True)
# What each argument of evaluate takes, checked before any work. Values within a right type
# (counts below 2, a data set's name, a log_dir's checkpoints) are judged where they are used.
ARGUMENTS = {
    "metric": one_of(*NAMES),
    "netG": _kind("a generator (an nn.Module with nz)", nn.Module,
                  test=lambda v: hasattr(v, "nz")),
    "log_dir": FOLDER,
    "evaluate_range": _kind("a tuple of ints (start, end, step) with step >= 1, end included",
                            tuple, optional=True,
                            test=lambda v: len(v) == 3 and all(map(INT.accepts, v)) and v[2] >= 1),
    "evaluate_step": _kind("an int >= 0", Integral, test=lambda v: v >= 0, optional=True),
    "num_runs": POSITIVE,
    "start_seed": _kind(SEED.expected, Integral, test=lambda v: SEED.accepts(int(v))),
    "overwrite": FLAG,
    "write_to_json": FLAG,
    "device": _kind("a device (str or torch.device)", str, torch.device, optional=True),
    "dataset": _kind("a data set's name (str) or a torch Dataset", str, Dataset, optional=True),
    "num_samples": COUNT,
    "num_real_samples": COUNT,
    "num_fake_samples": COUNT,
    "num_subsets": POSITIVE,
    "splits": POSITIVE,
    "batch_size": POSITIVE,
    "stats_file": FILE,
    "feat_file": FILE,
    "data": _kind("a mapping of the data set's fields", Mapping, optional=True),
    "ema": FLAG,
    "inception_weights": FILE,
    "verbose": FLAG,
}


def evaluate(metric: str, netG: nn.Module, log_dir: str | os.PathLike,
             evaluate_range: tuple[int, int, int] | None = None,
             evaluate_step: int | None = None, num_runs: int = 3, start_seed: int = 0,
             overwrite: bool = False, write_to_json: bool = True,
             device: str | torch.device | None = None, *,
             dataset: str | Dataset | None = None, num_samples: int | None = None,
             num_real_samples: int | None = None, num_fake_samples: int | None = None,
             num_subsets: int = 10, splits: int = 10, batch_size: int = 50,
             stats_file: str | os.PathLike | None = None,
             feat_file: str | os.PathLike | None = None,
             data: Mapping[str, Any] | None = None, ema: bool = False,
             inception_weights: str | os.PathLike | None = None,
             verbose: bool = True) -> dict[int, list[float]]:
    """Score netG at each saved step of log_dir, num_runs seeds each; {step: [scores]}.

    Mimicry's arguments: FID takes num_real_samples and num_fake_samples, KID and IS
    num_samples; KID averages num_subsets subsets of num_samples // num_subsets, IS `splits`
    splits. dataset is a registered data set's name (its files under data["root"], by default
    ./datasets as in Mimicry) or a Dataset of (image in [-1, 1], label). Beyond Mimicry's:
    data (fields of the data set's section, e.g. {"root": "/data"}), ema (the EMA weights of a
    sagan-plugin checkpoint) and inception_weights (as `eval`'s option).
    """
    _check_arguments(locals())  # before any other line: locals() are the arguments alone
    steps = _steps(evaluate_range, evaluate_step)
    n_fake, n_real, name = _sample_counts(metric, num_samples, num_real_samples,
                                          num_fake_samples)
    if metric == "kid" and n_fake // num_subsets < 2:
        raise UsageError(f"num_subsets={num_subsets}: KID's subsets of num_samples // "
                         f"num_subsets = {n_fake // num_subsets} images need at least 2")
    ckpt_dir = checkpoint_dir(log_dir)
    if not ckpt_dir.is_dir():
        raise UsageError(f"log_dir {log_dir} has no checkpoint folder {ckpt_dir}")
    out = Path(log_dir) / "eval" / name
    if write_to_json:
        check_writable(out.parent)
    scores = _read_scores(out) if write_to_json and out.is_file() else {}
    counts = ({"num_fake_samples": n_fake, "num_real_samples": n_real} if metric == "fid"
              else {"num_samples": n_fake})
    for what, count in counts.items():
        check_sample_count(count, what, warn=metric == "fid")  # KID is unbiased at any n

    real_features_of = None
    if metric != "inception_score":
        real_features_of = _real_images(dataset, n_real, stats_file or feat_file, data, netG)
    todo = []
    for step in steps:
        if step in scores and write_to_json and not overwrite:
            _say(verbose, f"{NAMES[metric]} at step {step} has been computed; skipping")
        elif not checkpoint_path(log_dir, step).is_file():
            _say(verbose, f"no checkpoint at step {step}; skipping")
        else:
            todo.append(step)
    if todo:
        extractor = FeatureExtractor(inception_weights, _device_name(device), batch_size)
        if metric == "inception_score" and not extractor.has_logits:
            raise UsageError(f"Inception Score is unavailable: {IS_UNAVAILABLE}")
        real = real_features_of(extractor) if real_features_of else None
        with eval_mode(netG):
            for step in todo:
                _restore(netG, checkpoint_path(log_dir, step), ema)
                netG.to(extractor.device)
                scores[step] = []
                for seed in range(start_seed, start_seed + num_runs):
                    scores[step].append(_score(metric, netG, extractor, n_fake, seed, real,
                                               num_subsets, splits))
                    _say(verbose, f"{NAMES[metric]} (step {step}) [seed {seed}]: "
                         f"{scores[step][-1]}")
                if write_to_json:
                    write_json(out, {str(k): v for k, v in sorted(scores.items())})
    for step in steps:
        if step in scores:
            _say(verbose, f"{NAMES[metric]} (step {step}): {np.mean(scores[step])} "
                 f"(± {np.std(scores[step])})")
    return scores


def _check_arguments(arguments: Mapping[str, Any]) -> None:
    """Refuse the first argument of evaluate whose type (or plain range) is wrong."""
    for name, rule in ARGUMENTS.items():
        value = arguments[name]
        if not rule.accepts(value):
            raise UsageError(f"{name} must be {rule.expected}, got {_shown(value)}")


def _shown(value: Any) -> str:
    """A value and its type in a few words on one line (a module's repr has many)."""
    text = reprlib.repr(value)
    kind = type(value).__name__
    return f"a {kind}" if "\n" in text else f"{text} ({kind})"


def _steps(evaluate_range: tuple[int, int, int] | None, evaluate_step: int | None) -> range:
    if (evaluate_range is None) == (evaluate_step is None):
        raise UsageError("give one of evaluate_step= (a step) or evaluate_range= "
                         "(start, end, step)")
    if evaluate_range is None:
        return range(evaluate_step, evaluate_step + 1)
    start, end, interval = evaluate_range
    return range(start, end + 1, interval)


def _sample_counts(metric: str, num_samples: int | None, num_real: int | None,
                   num_fake: int | None) -> tuple[int, int | None, str]:
    """(fake images, real images or None, Mimicry's file name) of a metric."""
    if metric == "fid":
        if num_real is None or num_fake is None:
            raise UsageError("FID needs num_real_samples= and num_fake_samples=")
        return num_fake, num_real, f"fid_{num_real // 1000}k_{num_fake // 1000}k.json"
    if num_samples is None:
        raise UsageError(f"{NAMES[metric]} needs num_samples=")
    real = None if metric == "inception_score" else num_samples
    return num_samples, real, f"{metric}_{num_samples // 1000}k.json"


def _device_name(device: str | torch.device | None) -> str:
    return "auto" if device is None else str(device)


def _say(verbose: bool, line: str) -> None:
    if verbose:
        print(f"INFO: {line}", flush=True)


def _read_scores(path: Path) -> dict[int, list[float]]:
    try:
        saved = json.loads(path.read_text())
        return {int(step): [float(v) for v in values] for step, values in saved.items()}
    except (ValueError, TypeError, AttributeError):
        raise UsageError(f"{path} is not a file of scores ({{step: [score, ...]}}): delete it "
                         "or pass write_to_json=False") from None


def _restore(netG: nn.Module, path: Path, ema: bool) -> None:
    """Load a checkpoint's weights (Mimicry's or this package's) into netG, in place."""
    ckpt = read_checkpoint(path)
    if ema and ckpt.get("ema_state_dict") is None:
        raise UsageError(f"ema=True but {path} holds no EMA weights")
    try:
        load_weights(netG, ckpt, ema)
    except RuntimeError as error:
        raise UsageError(f"checkpoint {path} does not fit {type(netG).__name__}: "
                         f"{state_dict_mismatch(error)}") from None


def _score(metric: str, netG: nn.Module, extractor: FeatureExtractor, n: int, seed: int,
           real: np.ndarray | None, num_subsets: int, splits: int) -> float:
    ours = OUR_METRIC[metric]
    fake = generator_features(netG, extractor, n, seed)
    row = score(fake, real, [ours], extractor.has_logits, kid_subsets=num_subsets,
                kid_subset_size=n // num_subsets, is_splits=splits)
    return float(row[ours])


def _real_images(dataset: str | Dataset | None, n: int,
                 features_file: str | os.PathLike | None,
                 data: Mapping[str, Any] | None,
                 netG: nn.Module) -> Callable[[FeatureExtractor], np.ndarray]:
    """Check the real images against netG now; return what computes n images' features: of a
    registered data set (cached), or of a Dataset object (in features_file, which Mimicry
    makes a custom data set name)."""
    from sagan_plugin.config import compose_data
    from sagan_plugin.data import build_dataset

    if isinstance(dataset, str):
        data_cfg = compose_data(dataset, data)
        images = build_dataset(data_cfg)
        check_generator_fits(netG, images, data_cfg.num_classes, f"data set {dataset}")
        if n > len(images):
            raise UsageError(f"{n} real images asked of data set {dataset}, which has "
                             f"{len(images)}")
        return lambda extractor: real_features(data_cfg, images, n, extractor)[0]
    if dataset is None:
        raise UsageError("FID and KID need dataset= (a data set's name or a Dataset)")
    if data:
        raise UsageError("data= sets fields of a named data set; dataset is a Dataset object")
    if features_file is None:
        raise UsageError("a Dataset object needs stats_file= (FID) or feat_file= (KID): the "
                         "file that keeps its real-image features")
    check_generator_fits(netG, dataset, None, type(dataset).__name__)
    if n > len(dataset):
        raise UsageError(f"{n} real images asked of a Dataset of {len(dataset)}")
    name = os.fspath(features_file)
    path = Path(name if name.endswith(".npz") else name + ".npz")
    if path.is_file():
        _saved_features(path)  # a file of another kind is refused before any work
    else:
        check_writable(path.parent)

    def features_of(extractor: FeatureExtractor) -> np.ndarray:
        sha = extractor.weights.sha256
        if path.is_file():
            return _saved_features(path, n, sha)
        features = subset_features(dataset, n, extractor)
        write_npz(path, features=features, n=np.array(n), weights_sha256=np.array(sha))
        return features.astype(np.float64)

    return features_of


def _saved_features(path: Path, n: int | None = None, sha: str | None = None) -> np.ndarray:
    """A features file that _real_images wrote, for n images by weights sha (if given)."""
    try:
        with np.load(path) as saved:
            features = saved["features"]
            saved_n, saved_sha = int(saved["n"]), str(saved["weights_sha256"])
    except (OSError, ValueError, KeyError):
        raise UsageError(f"{path} is not a sagan-plugin features file (Mimicry's TF statistics "
                         "cannot be used): name another file or delete it") from None
    if (n, sha) != (None, None) and (saved_n, saved_sha) != (n, sha):
        raise UsageError(f"{path} holds features of {saved_n} images by Inception weights "
                         f"{saved_sha[:12]}; this asks for {n} by {sha[:12]}: name another file")
    return features.astype(np.float64)
