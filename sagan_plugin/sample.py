"""`sagan-plugin sample`: images from a trained generator, by the recipe the C++ sampler shares.

    sagan-plugin sample run=runs/demo n=64 seed=0 classes=0,3,7 out=grid.png
    sagan-plugin sample run=runs/demo n=16 class=3 out=samples/      (one PNG per image)

The sampling recipe (cpp/src/generator.cpp implements the same, so for the same seed, classes
and batch both give the same images):

1. a fresh CPU generator seeded with `seed` draws z = randn(n, nz) in float32, all n rows at once
   (in chunks that draw the same values: `noise_batches`);
2. label i is classes[i % len(classes)]; with no classes given it is i % num_classes for a
   conditional generator and 0 (ignored) for an unconditional one;
3. the generator runs in eval and inference mode on consecutive chunks of `batch` rows on the
   device; the images (n, C, R, R) in [-1, 1] are gathered on the CPU.

PNG files hold uint8 = trunc(clamp((x + 1) * 127.5 + 0.5, 0, 255)); a grid has ceil(sqrt(n))
columns, images in row-major order on black, 2 pixels apart.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from sagan_plugin.config import resolve_device
from sagan_plugin.errors import UsageError
from sagan_plugin.files import check_writable, write_atomically
from sagan_plugin.machine import require_memory
from sagan_plugin.overrides import parse_overrides
from sagan_plugin.registry import class_count, generate
from sagan_plugin.schema import SEED, at_least, ema_option, option, run_option, step_option

GRID_PADDING = 2
MIN_FILE_BYTES = 4096  # a file takes one file-system block at least


# z is drawn in chunks of this many rows: a multiple of 16, so that torch's CPU randn, which
# fills 16 values at a time, draws chunk by chunk exactly what it draws at once (the last chunk
# takes the remainder whole, as the one-shot draw does).
NOISE_ROWS = 4096


def check_classes(classes: Sequence[int] | None, num_classes: int) -> None:
    for k in classes or []:
        if not 0 <= k < num_classes:
            if not num_classes:
                raise UsageError("the model is unconditional (no classes): leave out "
                                 "class/classes")
            raise UsageError(f"class {k} is out of range: the model has {num_classes} classes "
                             f"(0..{num_classes - 1})")


def class_labels(n: int, classes: Sequence[int] | None, num_classes: int,
                 start: int = 0) -> Tensor:
    """int64 labels of images start..start+n-1 by step 2 of the recipe; checks n and classes."""
    if n <= 0:
        raise UsageError(f"n must be a positive number of images, got {n}")
    check_classes(classes, num_classes)
    index = torch.arange(start, start + n)
    if classes:
        return torch.tensor(list(classes), dtype=torch.int64)[index % len(classes)]
    return index % num_classes if num_classes else torch.zeros(n, dtype=torch.int64)


def noise_batches(n: int, nz: int, seed: int, batch: int) -> Iterator[Tensor]:
    """Step 1 of the recipe, z = randn(n, nz), in consecutive batches of `batch` rows, with
    at most a few thousand rows in memory at a time."""
    generator = torch.Generator().manual_seed(seed)
    pending, drawn = torch.empty(0, nz), 0
    while drawn < n or len(pending):
        while len(pending) < batch and drawn < n:
            rows = n - drawn if n - drawn < 2 * NOISE_ROWS else NOISE_ROWS
            pending = torch.cat([pending, torch.randn(rows, nz, generator=generator)])
            drawn += rows
        yield pending[:batch]
        pending = pending[batch:]


def sample_batches(netG: nn.Module, n: int, seed: int = 0,
                   classes: Sequence[int] | None = None, batch: int = 64,
                   device: str | torch.device = "cpu") -> Iterator[Tensor]:
    """The recipe's images in consecutive batches (CPU tensors in [-1, 1]), streamed."""
    if batch <= 0:
        raise UsageError(f"batch must be a positive number of images, got {batch}")
    classes_of_netG = class_count(netG)
    class_labels(n, classes, classes_of_netG)  # checks before any work
    done = 0
    with torch.inference_mode():
        for z in noise_batches(n, netG.nz, seed, batch):
            labels = class_labels(len(z), classes, classes_of_netG, start=done)
            yield generate(netG, z.to(device), labels.to(device)).cpu()
            done += len(z)


def sample(netG: nn.Module, n: int, seed: int = 0, classes: Sequence[int] | None = None,
           batch: int = 64, device: str | torch.device = "cpu") -> Tensor:
    """Images (n, C, R, R) in [-1, 1] on the CPU by the recipe above; netG must be in eval mode."""
    return torch.cat(list(sample_batches(netG, n, seed, classes, batch, device)))


def to_uint8(images: Tensor) -> Tensor:
    return images.add(1).mul(127.5).add(0.5).clamp(0, 255).to(torch.uint8)


def image_grid(images: Tensor, cols: int | None = None) -> Tensor:
    """(N, C, H, W) uint8 -> (rows*(H+2)+2, cols*(W+2)+2, C) uint8 on black, filled row by
    row; cols defaults to ceil(sqrt(N))."""
    n, channels, height, width = images.shape
    cols = math.isqrt(n - 1) + 1 if cols is None else cols
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


def output_target(out: str) -> tuple[Path, bool]:
    """(path, is_directory): a path ending in / or naming a directory gets one PNG per image."""
    path = Path(out)
    if out.endswith("/") or path.is_dir():
        check_writable(path)
        return path, True
    if path.suffix != ".png":
        raise UsageError(f"out must end in .png (one grid) or name a directory (one PNG per "
                         f"image), got {out}")
    check_writable(path.parent)  # missing folders are made when the file is written
    return path, False


def write_images(images: Tensor, out: str) -> None:
    """A grid .png, or DIR/000000.png ... for a directory."""
    write_image_batches([images], out)


def write_image_batches(batches: Iterable[Tensor], out: str) -> None:
    """Batches in [-1, 1] as one grid .png, or streamed to DIR/000000.png, DIR/000001.png ..."""
    path, directory = output_target(out)
    if not directory:
        save_png(image_grid(to_uint8(torch.cat(list(batches)))), path)
        return
    i = 0
    for images in batches:
        for image in to_uint8(images).permute(0, 2, 3, 1):
            save_png(image, path / f"{i:06d}.png")
            i += 1


def check_output_fits(n: int, resolution: int, out: str) -> None:
    """A grid must fit in memory; one file per image must fit on disk (a block each at least)."""
    path, directory = output_target(out)
    if directory:
        existing = next(p for p in (path, *path.parents) if p.exists())
        free = shutil.disk_usage(existing).free
        if n * MIN_FILE_BYTES > free:
            raise UsageError(f"n={n} PNG files need at least {n * MIN_FILE_BYTES / 2**30:.3g} "
                             f"GiB, more than the {free / 2**30:.3g} GiB free in {path}")
    else:
        # float images, their uint8 copy and the grid
        require_memory(n * 3 * (resolution + GRID_PADDING) ** 2 * 6, f"a grid of n={n} images")


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
    run: str = run_option()
    step: int | None = step_option()
    ema: bool = ema_option()
    n: int = option(64, "images", at_least(1))
    seed: int = option(0, "seed of the noise", SEED)
    classes: Any = option(None, "3, 0,3,7 or [0,3,7]: label i is classes[i % len]; "
                          "class=K is the same as classes=K")
    batch: int = option(64, "images per forward pass", at_least(1))
    device: str = option("cpu", "cpu, cuda or cuda:N")
    out: str = option("samples.png", "a .png grid, or a directory (ending in /) for one PNG "
                      "per image")


def main(argv: list[str]) -> None:
    from sagan_plugin.runs import load_generator, split_run_tokens

    argv, run_tokens = split_run_tokens(argv)
    if any(t.startswith("class=") for t in argv) and any(t.startswith("classes=") for t in argv):
        raise UsageError("sample: give class=K or classes=K1,K2,..., not both")
    argv = ["classes=" + t.removeprefix("class=") if t.startswith("class=") else t for t in argv]
    cfg = parse_overrides(SampleConfig, argv, "sample")
    classes = parse_classes(cfg.classes)
    output_target(cfg.out)  # fail before loading or sampling
    device = resolve_device(cfg.device)
    loaded = load_generator(cfg.run, step=cfg.step, prefer_ema=cfg.ema, device=device,
                            run_tokens=run_tokens)
    class_labels(1, classes, loaded.netG.num_classes)
    check_output_fits(cfg.n, loaded.netG.resolution, cfg.out)
    start = time.perf_counter()
    write_image_batches(sample_batches(loaded.netG, cfg.n, cfg.seed, classes, cfg.batch, device),
                        cfg.out)
    seconds = time.perf_counter() - start
    ema = " (EMA)" if loaded.ema else ""
    print(f"sampled and wrote {cfg.n} images from step {loaded.step}{ema} "
          f"in {seconds:.3f} s: {cfg.n / seconds:.1f} images/s -> {cfg.out}")
