"""Inception features of a data set's real images, computed once and cached on disk.

The cache key names the data set, split, resolution, sample count and the Inception weights'
hash, plus a short hash of the whole data config (a root folder or a generator seed changes the
images too) and of the data set's `fingerprint()`, where it has one (sagan_plugin.files'
files_fingerprint): an image folder's and the host's data sets' file names and sizes,
Fashion-MNIST's idx files' contents. Change any of them and the features are recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sagan_plugin.errors import UsageError, warn
from sagan_plugin.files import write_npz
from sagan_plugin.metrics.features import FeatureExtractor, dataset_batches
from sagan_plugin.metrics.weights import cache_dir

SUBSET_SEED = 0  # which n images of the data set: a fixed random subset, the same every time


def cache_key(data_cfg: DictConfig, resolution: int, n: int, weights_sha256: str,
              content: str | None = None) -> str:
    """content: what identifies the data set's files beyond its config (a folder's files)."""
    config = json.dumps(OmegaConf.to_container(data_cfg, resolve=True), sort_keys=True)
    if content is not None:
        config += f"\n{content}"
    config_hash = hashlib.sha256(config.encode()).hexdigest()[:8]
    name = data_cfg.get("name", "data")
    split = data_cfg.get("split", "train")
    return f"{name}_{split}_{resolution}px_n{n}_w{weights_sha256[:12]}_c{config_hash}"


def real_features(data_cfg: DictConfig, dataset: torch.utils.data.Dataset, n: int,
                  extractor: FeatureExtractor, cache_root: str | os.PathLike | None = None,
                  ) -> tuple[np.ndarray, Path]:
    """Pool3 features of n images of dataset (a seeded random subset); from the cache if there."""
    if n > len(dataset):
        raise UsageError(f"n_real={n} is more than the {len(dataset)} images of data set "
                         f"{data_cfg.get('name', '?')}; use n_real<={len(dataset)}")
    resolution = int(dataset[0][0].shape[-1])
    folder = Path(cache_root) if cache_root else cache_dir() / "real_stats"
    fingerprint = getattr(dataset, "fingerprint", None)
    key = cache_key(data_cfg, resolution, n, extractor.weights.sha256,
                    fingerprint() if callable(fingerprint) else None)
    path = folder / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as cached:
                return cached["features"].astype(np.float64), path
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            path.unlink()  # a damaged cache entry is recomputed
    features = subset_features(dataset, n, extractor)
    try:
        write_npz(path, features=features)
    except OSError as error:  # a cache: the features just computed are still good
        warn(f"could not cache the real-image features in {path}: {error.strerror}; they will "
             "be computed again next time")
    return features.astype(np.float64), path


def subset_features(dataset: torch.utils.data.Dataset, n: int,
                    extractor: FeatureExtractor) -> np.ndarray:
    """float32 pool3 features of the seeded random subset of n images (the cached precision)."""
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    indices = torch.randperm(len(dataset), generator=generator)[:n].sort().values.tolist()
    return extractor.extract(dataset_batches(dataset, indices, extractor.batch_size),
                             total=n, desc="real images").features.astype(np.float32)
