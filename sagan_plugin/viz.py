"""`sagan-plugin viz`: a class-conditional sample grid and attention maps (the paper's Figure 1).

    sagan-plugin viz run=runs/demo out=viz/                     grid.png, attention.png/.npz
    sagan-plugin viz run=runs/demo out=viz/ what=attention images=4 queries="0.2,0.3;0.7,0.5"

grid.png has a row per class (per_class samples each; for an unconditional G, rows of samples).
attention.png has a row per generated image: the image with its query points marked, then for
each query the attention distribution of G's attention layer over the key positions, drawn over
the image. The layer's input is captured with a forward pre-hook and fed to
`G.attention.attention_weights`; attention.npz keeps the raw maps (rows sum to 1).
Without what=, a G that has no attention layer (model.attention=0, Mimicry's baselines) gets the
grid alone; what=attention on one is refused before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor, nn

from sagan_plugin.config import resolve_device
from sagan_plugin.errors import UsageError
from sagan_plugin.files import check_writable, write_json, write_npz
from sagan_plugin.image_folder import IMAGE_SUFFIXES
from sagan_plugin.machine import require_memory
from sagan_plugin.overrides import parse_overrides
from sagan_plugin.registry import generate
from sagan_plugin.sample import (
    GRID_PADDING,
    check_classes,
    image_grid,
    parse_classes,
    sample,
    save_png,
    to_uint8,
)
from sagan_plugin.schema import SEED, at_least, ema_option, option, run_option, step_option

QUERY_COLOURS = [(0, 255, 0), (0, 160, 255), (255, 0, 255), (255, 255, 0), (0, 255, 255)]
NO_ATTENTION = "this generator has no attention layer (G.attention is None)"


@dataclass
class VizConfig:
    run: str = run_option()
    out: str = option("viz", "folder for grid.png, attention.png and attention.npz")
    what: str | None = option(None, "grid, attention or grid,attention; null: the grid, and "
                              "the attention maps when G has an attention layer")
    step: int | None = step_option()
    ema: bool = ema_option()
    seed: int = option(0, "seed of the noise", SEED)
    per_class: int = option(8, "grid columns", at_least(1))
    classes: Any = option(None, "grid rows: a comma list of classes; null: every class (at "
                          "most 20)")
    images: int = option(3, "attention: generated images, one row each", at_least(1))
    queries: str = option("0.25,0.25;0.25,0.75;0.75,0.25;0.75,0.75",
                          "attention: query points, y,x in [0, 1], separated by ;")
    scale: int = option(4, "attention.png upsampling of each image", at_least(1))
    device: str = option("cpu", "cpu, cuda or cuda:N")


def class_grid(netG: nn.Module, per_class: int, classes: list[int], seed: int = 0,
               device: str | torch.device = "cpu") -> Tensor:
    """uint8 image (H, W, 3): row r holds per_class samples of classes[r]."""
    rows = len(classes) if netG.num_classes else max(len(classes), 1)
    images = sample(netG, rows * per_class, seed, classes or None, device=device)
    # sample() labels image i with classes[i % rows]: regroup those into rows.
    images = images.view(per_class, rows, *images.shape[1:]).transpose(0, 1).flatten(0, 1)
    return image_grid(to_uint8(images), cols=per_class)


def has_attention(netG: nn.Module) -> bool:
    # SAGAN with model.attention=0 has G.attention = None; Mimicry's baselines have none at all.
    return getattr(netG, "attention", None) is not None


def attention_maps(netG: nn.Module, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor, int]:
    """(images in [-1, 1], attention (N, H*W, H*W/4), H) for one batch, via a pre-hook."""
    if not has_attention(netG):
        raise UsageError(NO_ATTENTION)
    captured = {}
    handle = netG.attention.register_forward_pre_hook(
        lambda module, inputs: captured.__setitem__("x", inputs[0]))
    try:
        with torch.inference_mode():
            images = generate(netG, z, y)
            weights = netG.attention.attention_weights(captured["x"])
    finally:
        handle.remove()
    return images.cpu(), weights.float().cpu(), int(captured["x"].shape[-1])


def parse_queries(spec: str) -> list[tuple[float, float]]:
    try:
        points = [tuple(float(v) for v in p.split(",")) for p in str(spec).split(";") if p]
    except ValueError:
        points = []
    if not points or any(len(p) != 2 or not all(0 <= v <= 1 for v in p) for p in points):
        raise UsageError(f"queries={spec!r}: expected y,x pairs in [0, 1] separated by ;")
    return points  # type: ignore[return-value]


def _heat(weights: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB floats on a black-red-yellow-white scale."""
    w = weights[..., None]
    return np.clip(np.concatenate([3 * w, 3 * w - 1, 3 * w - 2], axis=-1), 0, 1)


def attention_figure(images: Tensor, attention: Tensor, size: int,
                     queries: list[tuple[float, float]], scale: int) -> tuple[Tensor, list[int]]:
    """uint8 (H, W, 3) figure and the query indices (row-major on the size x size map)."""
    n, _, resolution, _ = images.shape
    side = resolution * scale
    index = [min(int(qy * size), size - 1) * size + min(int(qx * size), size - 1)
             for qy, qx in queries]
    pictures = to_uint8(F.interpolate(images, scale_factor=scale, mode="nearest"))
    tiles = []
    for k in range(n):
        base = pictures[k].permute(1, 2, 0).numpy().astype(np.float32) / 255
        grey = base.mean(axis=-1, keepdims=True).repeat(3, axis=-1)
        row = [_marked(base, index, size, side, None)]
        for q, j in enumerate(index):
            beta = attention[k, j].view(1, 1, size // 2, size // 2)
            beta = F.interpolate(beta, size=(side, side), mode="nearest")[0, 0].numpy()
            # Stretched per map: early in training attention is near uniform, and only the
            # relative weights show where a query looks.
            w = (beta - beta.min()) / max(beta.max() - beta.min(), 1e-12)
            alpha = 0.85 * w[..., None]
            row.append(_marked((1 - alpha) * grey + alpha * _heat(w), [j], size, side, q))
        tiles.extend(torch.from_numpy(np.array(t)).permute(2, 0, 1) for t in row)
    return image_grid(torch.stack(tiles), cols=len(queries) + 1), index


def _marked(rgb: np.ndarray, index: list[int], size: int, side: int,
            colour_of: int | None) -> np.ndarray:
    """rgb floats with a ring at each query position; uint8 (side, side, 3)."""
    # NaN (a diverged G's maps, which loading warns of) drawn as black, not cast at random
    image = Image.fromarray((np.nan_to_num(rgb) * 255 + 0.5).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    cell = side / size
    for q, j in enumerate(index):
        cy, cx = (j // size + 0.5) * cell, (j % size + 0.5) * cell
        r = max(cell, 3)
        colour = QUERY_COLOURS[(q if colour_of is None else colour_of) % len(QUERY_COLOURS)]
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=2)
    return np.asarray(image)


def main(argv: list[str]) -> None:
    from sagan_plugin.runs import load_generator, split_run_tokens

    argv, run_tokens = split_run_tokens(argv)
    cfg = parse_overrides(VizConfig, argv, "viz")
    asked = None if cfg.what is None else {w.strip() for w in cfg.what.split(",") if w.strip()}
    if asked is not None and (not asked or asked - {"grid", "attention"}):
        raise UsageError(f"what={cfg.what}: expected grid, attention or grid,attention")
    queries = parse_queries(cfg.queries)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    if out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir():
        raise UsageError(f"viz: out is a folder for grid.png and attention.png, got {out}, an "
                         f"image's name; give out={out.with_suffix('')}")
    check_writable(out)
    loaded = load_generator(cfg.run, step=cfg.step, prefer_ema=cfg.ema, device=device,
                            run_tokens=run_tokens)
    netG = loaded.netG
    # Decided before anything is written: a refusal must leave no grid.png behind.
    if asked is None:
        what = {"grid", "attention"} if has_attention(netG) else {"grid"}
    elif "attention" in asked and not has_attention(netG):
        raise UsageError(f"what={cfg.what}: {NO_ATTENTION}; expected what=grid")
    else:
        what = asked
    pixels = 3 * (netG.resolution + GRID_PADDING) ** 2
    require_memory(cfg.per_class * 20 * pixels * 6, f"a grid of per_class={cfg.per_class}")
    if "attention" in what:
        # attention maps are (H*W) x (H*W/4) float32 per image, with H at most half of R
        require_memory(cfg.images * ((netG.resolution // 2) ** 4 + pixels * cfg.scale**2 * 6),
                       f"attention maps of images={cfg.images}")
    if "grid" in what:
        classes = parse_classes(cfg.classes) or list(range(min(netG.num_classes, 20)))
        check_classes(classes, netG.num_classes)
        save_png(class_grid(netG, cfg.per_class, classes, cfg.seed, device), out / "grid.png")
        print(f"wrote {out / 'grid.png'}")
    if "attention" in what:
        generator = torch.Generator().manual_seed(cfg.seed)
        z = torch.randn(cfg.images, netG.nz, generator=generator).to(device)
        y = (torch.arange(cfg.images) % netG.num_classes).to(device) if netG.num_classes else None
        images, attention, size = attention_maps(netG, z, y)
        figure, index = attention_figure(images, attention, size, queries, cfg.scale)
        save_png(figure, out / "attention.png")
        write_npz(out / "attention.npz", images=to_uint8(images).numpy(),
                         attention=attention.numpy(), queries=np.array(index),
                         feature_size=np.array(size))
        gamma = netG.attention.gamma.item()
        write_json(out / "attention.json", {
            "step": loaded.step, "ema": loaded.ema, "gamma": gamma, "feature_size": size,
            "queries": index, "seed": cfg.seed})
        print(f"wrote {out / 'attention.png'} (gamma={gamma:.4f})")
    elif asked is None:
        print(f"attention maps skipped: {NO_ATTENTION}")
