"""`sagan-plugin export`: a trained generator as TorchScript or an AOTInductor package for C++.

    sagan-plugin export run=runs/demo format=aoti             -> runs/demo/export/generator.pt2
    sagan-plugin export run=runs/demo format=torchscript out=G.pt

The exported forward is (z float32 (N, nz), y int64 (N,)) -> images (N, C, R, R) in [-1, 1],
with any N; y holds class labels and is ignored by an unconditional generator. Weights are the
EMA ones when the checkpoint has them, in eval mode, with spectral norm folded into plain
weights. Next to the artefact, `<artefact>.json` records what a sampler needs (z size,
classes, resolution, ...) and the artefact's sha256. Before anything is written, the artefact
is loaded back and must reproduce the eager generator on fixed inputs.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from sagan_plugin.errors import CommandFailed, UsageError
from sagan_plugin.files import check_output_file, check_writable, failures_named_by, file_digest
from sagan_plugin.overrides import parse_overrides
from sagan_plugin.registry import generate
from sagan_plugin.sample import class_labels
from sagan_plugin.schema import between, ema_option, one_of, option, run_option, step_option

FORMATS = {"torchscript": ".pt", "aoti": ".pt2"}
EXPORT_KIND = "sagan-plugin generator export"  # the C++ sampler checks this marker
CHECK_BATCHES = (1, 5)  # neither is the batch size the export was traced with
# Far below one level of an 8-bit image (2/255, 7.8e-3) on both: a wrong weight or operation
# is off by far more. CPU: Inductor's fused kernels sum in other orders, by up to 2.6e-5 for
# the 128 px generator at full width (1e-5 refused it). CUDA: the two sides' kernels differ
# further (Inductor may lay convolutions out channels-last); a guess until a GPU measures it
# (cpp_check.py).
CHECK_TOLERANCE = {"cpu": 1e-4, "cuda": 1e-3}
# An AOTInductor package is compiled for batches up to max_batch (its kernels' index arithmetic
# is sized for it), by default this; the C++ sampler refuses larger ones. TorchScript has no
# limit. A smaller bound can make GPU kernels index in 32 bits: Inductor does so in an AOT
# compile when the bound proves that every tensor fits (torch/_inductor/utils.py,
# expr_fits_within_32bit).
MAX_BATCH = 1 << 16
MAX_BATCH_RULE = between(max(CHECK_BATCHES), MAX_BATCH)  # the check runs the package at each
# The sidecar's shape fields are also stored inside the artefact (a TorchScript extra file, an
# AOTInductor metadata entry), so that the C++ sampler can tell that a sidecar describes this
# very model: the sidecar's sha256 covers the artefact, not the sidecar itself.
EMBEDDED = "sagan.json"


class SamplingModule(nn.Module):
    """forward(z, y) for every generator; an unconditional one ignores y."""

    def __init__(self, netG: nn.Module) -> None:
        super().__init__()
        self.netG = netG

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return generate(self.netG, z, y)


def fold_spectral_norm(netG: nn.Module) -> nn.Module:
    """Replace every parametrized weight by its current value, in place.

    eval() comes first: in training mode each access runs a power iteration and changes the
    weights. Give this a freshly loaded generator, never a deep copy of one in use.
    """
    netG.eval()
    for module in netG.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return netG


def sidecar_path(artefact: str | Path) -> Path:
    return Path(f"{artefact}.json")


@contextmanager
def _quiet_known_notices() -> Iterator[None]:
    """Hide the deprecation notices TorchScript (since 2.10) and torch.export's internals print,
    and the tracer's notice about the nets' label check.

    Only these messages: any other warning still reaches the user.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                FutureWarning)
        # The nets' label-shape check (check_labels) holds for every traced input and so drops
        # out of the trace; check_export runs the artefact at other batch sizes.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                                module=r"sagan_plugin\.nets\.")
        yield


def check_inputs(netG: nn.Module, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    z = torch.randn(batch, netG.nz, generator=torch.Generator().manual_seed(batch))
    return z.to(device), class_labels(batch, None, netG.num_classes).to(device)


def _write_torchscript(module: nn.Module, example: tuple[Tensor, Tensor], path: Path,
                       embedded: str) -> None:
    # Through memory: a write that fails inside torch's zip writer (a full disk) ends the
    # process from a destructor, an abort with no cleanup; Python's own write raises OSError.
    # A copy of the bytes, not a view: a failed write's traceback keeps the view and its
    # BytesIO in a reference cycle, whose collection at exit crashed Python 3.12.1 (torch 2.11).
    buffer = io.BytesIO()
    with _quiet_known_notices():
        torch.jit.save(torch.jit.trace(module, example), buffer, _extra_files={EMBEDDED: embedded})
    path.write_bytes(buffer.getvalue())


def _write_aoti(module: nn.Module, example: tuple[Tensor, Tensor], path: Path,
                embedded: str, max_batch: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with _quiet_known_notices():
        program = torch.export.export(module, example, dynamic_shapes=({0: batch}, {0: batch}))
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(path),
            inductor_configs={"aot_inductor.metadata": {EMBEDDED: embedded}})


def load_export(path: str | Path, fmt: str,
                device: torch.device | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """The artefact as a Python callable (z, y) -> images. A package loads on the current GPU
    unless device names one (cuda:1): its inputs must be there."""
    with _quiet_known_notices():
        if fmt == "torchscript":
            return torch.jit.load(str(path))
        if device is not None and device.index is not None:
            return torch._inductor.aoti_load_package(str(path), device_index=device.index)
        return torch._inductor.aoti_load_package(str(path))


@contextmanager
def full_fp32() -> Iterator[None]:
    """While entered, CUDA convolutions and matrix products compute in float32, not TF32 (torch
    lets cuDNN use TF32 by default): two kernels that round operands to TF32 at different
    points can differ far more than the maths they share."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class ExportCheckFailed(CommandFailed):
    """The artefact, loaded back, does not reproduce the eager generator: nothing is written."""


def check_export(exported: Callable, reference: nn.Module, device: torch.device) -> float:
    """Largest difference to the eager generator over CHECK_BATCHES, both in float32; raises
    above tolerance."""
    tolerance = CHECK_TOLERANCE[device.type]
    worst = 0.0
    with torch.inference_mode(), full_fp32():
        for batch in CHECK_BATCHES:
            z, y = check_inputs(reference.netG, batch, device)
            expected, got = reference(z, y), exported(z, y)
            if got.shape != expected.shape:
                raise ExportCheckFailed(f"export check failed at batch {batch}: shape "
                                        f"{tuple(got.shape)} instead of "
                                        f"{tuple(expected.shape)}")
            worst = max(worst, (got - expected).abs().max().item())
    if worst > tolerance:
        raise ExportCheckFailed(f"export check failed: output differs from the eager generator "
                                f"by {worst:.3g} (tolerance {tolerance}); nothing was written")
    return worst


def export_generator(run: str | Path, fmt: str, out: str | Path | None = None,
                     step: int | None = None, prefer_ema: bool = True,
                     device: str | torch.device = "cpu",
                     run_tokens: Sequence[str] = (), max_batch: int | None = None) -> Path:
    """Export a run's generator (a run folder or a netG checkpoint); returns the artefact.

    run_tokens: model=NAME data=NAME ... for a folder of Mimicry's own Trainer. max_batch: the
    largest batch an AOTInductor package takes (None: MAX_BATCH); TorchScript takes any."""
    from sagan_plugin.runs import load_generator, resolve_checkpoint

    if fmt not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out is None:
        out = resolve_checkpoint(run, step)[0] / "export" / f"generator{FORMATS[fmt]}"
    if Path(out).suffix != FORMATS[fmt]:
        raise UsageError(f"out for format={fmt} must end in {FORMATS[fmt]}, got {out}")
    for path, key in ((out, "out"), (sidecar_path(out), "out's sidecar")):
        check_output_file(path, key)  # before minutes of compiling
    # Two independent loads: one stays the parametrized reference, the other is folded.
    reference = load_generator(run, step, prefer_ema, device, run_tokens)
    loaded = load_generator(run, step, prefer_ema, device, run_tokens)
    provenance = {"model": loaded.config.model.name, "step": loaded.step, "ema": loaded.ema}
    return export_module(reference.netG, fold_spectral_norm(loaded.netG), fmt, out, provenance,
                         max_batch)


def _check_max_batch(fmt: str, max_batch: int | None) -> None:
    """Refused in the order and words of the command line's checks."""
    if max_batch is None:
        return
    if not (isinstance(max_batch, int) and MAX_BATCH_RULE.accepts(max_batch)):  # not bool
        raise UsageError(f"max_batch must be {MAX_BATCH_RULE.expected}, got {max_batch!r}")
    if fmt != "aoti":
        raise UsageError(f"max_batch applies to format=aoti only (TorchScript takes any batch), "
                         f"got format={fmt}")


def export_module(reference: nn.Module, folded: nn.Module, fmt: str, out: str | Path,
                  provenance: dict, max_batch: int | None = None) -> Path:
    """Write the artefact of `folded` (checked against `reference`) and its sidecar.

    Both generators hold the same weights on the same device, in eval mode; provenance gives
    the sidecar's model, step and ema fields; max_batch as export_generator's (aoti only).
    Nothing is left half-written.
    """
    _check_max_batch(fmt, max_batch)
    out = Path(out)
    check_writable(out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = next(folded.parameters()).device
    reference, module = SamplingModule(reference), SamplingModule(folded)
    staging = tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.",
                                          ignore_cleanup_errors=True)
    with staging as work, failures_named_by(out):  # named by out, not by the staged file
        staged = Path(work) / out.name
        with torch.inference_mode():
            channels = reference(*check_inputs(folded, 1, device)).shape[1]
        shape = {"nz": folded.nz, "num_classes": folded.num_classes,
                 "resolution": folded.resolution, "channels": int(channels)}
        example = check_inputs(folded, 2, device)
        if fmt == "aoti":
            shape["max_batch"] = MAX_BATCH if max_batch is None else max_batch
            _write_aoti(module, example, staged, json.dumps(shape), shape["max_batch"])
        else:
            _write_torchscript(module, example, staged, json.dumps(shape))
        worst = check_export(load_export(staged, fmt, device), reference, device)
        sidecar = {
            "kind": EXPORT_KIND,
            "version": 1,
            "format": fmt,
            "file": out.name,
            "sha256": file_digest(staged),
            "inputs": "z: float32 (N, nz); y: int64 (N,) class labels, ignored if num_classes=0",
            **shape,
            "output_range": [-1.0, 1.0],
            **provenance,
            "device": device.type,
            "torch_version": torch.__version__,
            # How closely the artefact, loaded back, reproduced the eager generator.
            "check": {"batches": list(CHECK_BATCHES), "max_abs_diff": worst,
                      "tolerance": CHECK_TOLERANCE[device.type]},
        }
        sidecar_path(staged).write_text(json.dumps(sidecar, indent=2) + "\n")
        os.replace(staged, out)
        os.replace(sidecar_path(staged), sidecar_path(out))
    return out


@dataclass
class ExportConfig:
    run: str = run_option()
    format: str = option("torchscript", "torchscript (.pt) or aoti (.pt2)",
                         one_of("torchscript", "aoti"))
    out: str | None = option(None, "null: <run>/export/generator.pt or .pt2")
    step: int | None = step_option()
    ema: bool = ema_option()
    device: str = option("cpu", "cpu or cuda: an AOTInductor package runs only on the device "
                         "it was compiled for")
    max_batch: int | None = option(None, f"aoti: the largest batch the package takes; null: "
                                         f"{MAX_BATCH} (a smaller bound can make GPU kernels "
                                         f"index in 32 bits)", MAX_BATCH_RULE)


def main(argv: list[str]) -> None:
    from sagan_plugin.config import resolve_device
    from sagan_plugin.runs import split_run_tokens

    argv, run_tokens = split_run_tokens(argv)
    cfg = parse_overrides(ExportConfig, argv, "export")
    if cfg.format == "aoti":  # else half a minute or more without a word
        print("compiling the AOTInductor package (C++; half a minute or more)...", flush=True)
    path = export_generator(cfg.run, cfg.format, cfg.out, cfg.step, cfg.ema,
                            resolve_device(cfg.device), run_tokens, cfg.max_batch)
    print(f"wrote {path} and {sidecar_path(path)}")
