"""`sagan-plugin sample`: images from a trained generator, by the recipe the C++ sampler shares.

    sagan-plugin sample run=runs/demo n=64 seed=0 classes=0,3,7 out=grid.png
    sagan-plugin sample run=runs/demo n=16 class=3 out=samples/      (one PNG per image)

The sampling recipe (cpp/src/generator.cpp implements the same, so for the same seed, classes
and batch both give the same images):

1. a fresh CPU generator seeded with `seed` draws z = randn(n, nz) in float32, all n rows at once;
2. label i is classes[i % len(classes)]; with no classes given it is i % num_classes for a
   conditional generator and 0 (ignored) for an unconditional one;
3. the generator runs in eval and inference mode on consecutive chunks of `batch` rows on the
   device; the images (n, C, R, R) in [-1, 1] are gathered on the CPU.

PNG files hold uint8 = trunc(clamp((x + 1) * 127.5 + 0.5, 0, 255)); a grid has ceil(sqrt(n))
columns, images in row-major order on black, 2 pixels apart.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING
from PIL import Image
from torch import Tensor, nn

from sagan_plugin.config import parse_overrides, resolve_device
from sagan_plugin.errors import UsageError
from sagan_plugin.files import write_atomically
from sagan_plugin.registry import generate

GRID_PADDING = 2


def class_labels(n: int, classes: Sequence[int] | None, num_classes: int) -> Tensor:
    """int64 labels (n,) of step 2 of the recipe; checks n and every class index."""
    if n <= 0:
        raise UsageError(f"n must be a positive number of images, got {n}")
    classes = list(classes or [])
    if classes and not num_classes:
        raise UsageError("the model is unconditional (no classes): leave out class/classes")
    for k in classes:
        if not 0 <= k < num_classes:
            raise UsageError(f"class {k} is out of range: the model has {num_classes} classes "
                             f"(0..{num_classes - 1})")
    index = torch.arange(n)
    if classes:
        return torch.tensor(classes, dtype=torch.int64)[index % len(classes)]
    return index % num_classes if num_classes else torch.zeros(n, dtype=torch.int64)


def sample(netG: nn.Module, n: int, seed: int = 0, classes: Sequence[int] | None = None,
           batch: int = 64, device: str | torch.device = "cpu") -> Tensor:
    """Images (n, C, R, R) in [-1, 1] on the CPU by the recipe above; netG must be in eval mode."""
    if batch <= 0:
        raise UsageError(f"batch must be a positive number of images, got {batch}")
    labels = class_labels(n, classes, netG.num_classes)
    z = torch.randn(n, netG.nz, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        chunks = [
            generate(netG, z_chunk.to(device), y_chunk.to(device)).cpu()
            for z_chunk, y_chunk in zip(z.split(batch), labels.split(batch), strict=True)
        ]
    return torch.cat(chunks)


def to_uint8(images: Tensor) -> Tensor:
    return images.add(1).mul(127.5).add(0.5).clamp(0, 255).to(torch.uint8)


def image_grid(images: Tensor) -> Tensor:
    """(N, C, H, W) uint8 -> (rows*(H+2)+2, cols*(W+2)+2, C) uint8, cols = ceil(sqrt(N))."""
    n, channels, height, width = images.shape
    cols = math.isqrt(n - 1) + 1
    rows = -(-n // cols)
    pad = GRID_PADDING
    grid = torch.zeros(rows * (height + pad) + pad, cols * (width + pad) + pad, channels,
                       dtype=torch.uint8)
    for i, image in enumerate(images.permute(0, 2, 3, 1)):
        top, left = pad + (i // cols) * (height + pad), pad + (i % cols) * (width + pad)
        grid[top:top + height, left:left + width] = image
    return grid


def save_png(pixels: Tensor, path: Path) -> None:
    """(H, W, C) uint8 -> PNG, written under a temporary name and renamed."""
    array = pixels.numpy()
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else np.ascontiguousarray(array))
    write_atomically(path, lambda f: image.save(f, format="PNG"))


def check_writable(folder: Path) -> None:
    """Create folder if needed and prove a file can be made there, before any long work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"cannot write to output directory {folder}: {error.strerror}") from None


def output_target(out: str) -> tuple[Path, bool]:
    """(path, is_directory): a path ending in / or naming a directory gets one PNG per image."""
    path = Path(out)
    if out.endswith("/") or path.is_dir():
        check_writable(path)
        return path, True
    if path.suffix != ".png":
        raise UsageError(f"out must end in .png (one grid) or name a directory (one PNG per "
                         f"image), got {out}")
    if not path.parent.is_dir():
        raise UsageError(f"output directory {path.parent} does not exist")
    check_writable(path.parent)
    return path, False


def write_images(images: Tensor, out: str) -> None:
    """A grid .png, or DIR/000000.png ... for a directory."""
    path, directory = output_target(out)
    pixels = to_uint8(images)
    if not directory:
        save_png(image_grid(pixels), path)
        return
    for i, image in enumerate(pixels.permute(0, 2, 3, 1)):
        save_png(image, path / f"{i:06d}.png")


def parse_classes(value: Any) -> list[int]:
    """classes=3, classes=0,3,7 or classes=[0,3,7] -> [ints]."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    items = items if isinstance(items, Sequence) and not isinstance(items, str) else [items]
    try:
        return [int(str(k).strip()) for k in items]
    except ValueError:
        raise UsageError(f"classes must be integers like 3 or 0,3,7, got {value}") from None


@dataclass
class SampleConfig:
    run: str = MISSING  # a run folder or a netG checkpoint file
    step: int | None = None  # null: the latest checkpoint
    ema: bool = True  # the EMA weights when the checkpoint has them
    n: int = 64
    seed: int = 0
    classes: Any = None  # 3, "0,3,7" or [0,3,7]; `class=K` is the same as classes=K
    batch: int = 64
    device: str = "cpu"
    out: str = "samples.png"  # a .png grid, or a directory (ending in /) for one PNG per image


def main(argv: list[str]) -> None:
    from sagan_plugin.runs import load_generator

    if any(t.startswith("class=") for t in argv) and any(t.startswith("classes=") for t in argv):
        raise UsageError("sample: give class=K or classes=K1,K2,..., not both")
    argv = ["classes=" + t.removeprefix("class=") if t.startswith("class=") else t for t in argv]
    cfg = parse_overrides(SampleConfig, argv, "sample")
    classes = parse_classes(cfg.classes)
    output_target(cfg.out)  # fail before loading or sampling
    device = resolve_device(cfg.device)
    loaded = load_generator(cfg.run, step=cfg.step, prefer_ema=cfg.ema, device=device)
    class_labels(cfg.n, classes, loaded.netG.num_classes)
    start = time.perf_counter()
    images = sample(loaded.netG, cfg.n, cfg.seed, classes, cfg.batch, device)
    seconds = time.perf_counter() - start
    write_images(images, cfg.out)
    print(f"sampled {cfg.n} images from step {loaded.step}{' (EMA)' if loaded.ema else ''} "
          f"in {seconds:.3f} s: {cfg.n / seconds:.1f} images/s -> {cfg.out}")
