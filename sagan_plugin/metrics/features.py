"""Batched Inception features of generated images, data sets and image folders.

Generated images never go through PNG files: they are mapped from [-1, 1] to uint8 by the
fixed rule `sagan-plugin sample` writes PNGs with (sagan_plugin.sample.to_uint8), so the
features are exactly those pytorch-fid would compute from such PNGs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from sagan_plugin.config import resolve_device
from sagan_plugin.errors import UsageError
from sagan_plugin.metrics.inception import load_inception
from sagan_plugin.metrics.weights import InceptionWeights, resolve_weights
from sagan_plugin.sample import sample_batches, to_uint8

# pytorch-fid's list: the files its CLI picks up from a folder.
IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")


@dataclass
class Features:
    features: np.ndarray  # (N, 2048) float64 pool3 activations
    logits: np.ndarray | None  # (N, 1008) or None when the weights lack the classifier


class FeatureExtractor:
    """The FID Inception on the chosen device, run in batches under inference_mode."""

    def __init__(self, weights: InceptionWeights | str | os.PathLike | None = None,
                 device: str = "auto", batch_size: int = 50):
        if not isinstance(weights, InceptionWeights):
            weights = resolve_weights(weights)
        self.weights = weights
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.net = load_inception(self.weights, self.device)
        if self.device.type == "cuda":
            self.net.use_channels_last()

    @property
    def has_logits(self) -> bool:
        return self.net.has_logits

    @torch.inference_mode()
    def extract(self, batches: Iterable[torch.Tensor], total: int | None = None,
                desc: str = "inception") -> Features:
        """Features of uint8 image batches (N, C, H, W), in order."""
        feats, logits = [], []
        # fp32 always, even when called from a training loop running under autocast.
        no_autocast = torch.autocast(self.device.type, enabled=False)
        with no_autocast, tqdm(total=total, desc=desc, unit="img", leave=False,
                               disable=None) as bar:
            for batch in batches:
                f, lg = self.net(batch.to(self.device, non_blocking=True))
                feats.append(f.double().cpu())
                if lg is not None:
                    logits.append(lg.double().cpu())
                bar.update(len(batch))
        if not feats:
            raise UsageError("no images to evaluate")
        return Features(torch.cat(feats).numpy(),
                        torch.cat(logits).numpy() if logits else None)


def generated_batches(netG: nn.Module, n: int, batch_size: int,
                      seed: int = 0) -> Iterator[torch.Tensor]:
    """uint8 samples by `sagan-plugin sample`'s recipe (same noise; labels i % num_classes, so
    classes are balanced), streamed batch by batch."""
    device = next(netG.parameters()).device
    for images in sample_batches(netG, n, seed, batch=batch_size, device=device):
        yield to_uint8(images)


def dataset_batches(dataset: torch.utils.data.Dataset, indices: list[int], batch_size: int,
                    num_workers: int = 0) -> Iterator[torch.Tensor]:
    """uint8 batches of a data set's (image in [-1, 1], label) items, in index order."""
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
        num_workers=num_workers, shuffle=False,
    )
    for images, *_ in loader:
        yield to_uint8(images)


def _unreadable(file: Path, error: Exception) -> UsageError:
    return UsageError(f"cannot read image {file}: {error}; remove it or replace it with a "
                      "whole image")


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            with Image.open(self.files[i]) as image:
                array = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as error:  # a truncated or foreign file
            raise _unreadable(self.files[i], error) from None
        return torch.from_numpy(array.copy()).permute(2, 0, 1)


def folder_files(folder: str | os.PathLike) -> list[Path]:
    """The images pytorch-fid's CLI would read from folder, in its order; a file that does not
    open as an image is a one-line error (its header only is read here)."""
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"image folder {path} does not exist")
    files = sorted(f for ext in IMAGE_EXTENSIONS for f in path.glob(f"*.{ext}"))
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {path}")
    for file in files:
        try:
            Image.open(file).close()
        except (OSError, ValueError) as error:
            raise _unreadable(file, error) from None
    return files


def folder_batches(files: list[Path], batch_size: int,
                   num_workers: int = 0) -> Iterator[torch.Tensor]:
    """uint8 batches of the files, in order. Images of several sizes are scored as pytorch-fid
    scores them one at a time (Inception resizes each to 299x299): a batch holds one size."""
    loader = torch.utils.data.DataLoader(_ImageFiles(files), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=list)
    for images in loader:
        start = 0
        for end in range(1, len(images) + 1):
            if end == len(images) or images[end].shape != images[start].shape:
                yield torch.stack(images[start:end])
                start = end
