"""The FID Inception weights in a form small enough to carry to a GPU machine, and back.

    python benchmarks/compact_inception.py pack OUT.xz [--source FILE]   # here, ~24 MiB
    python benchmarks/compact_inception.py unpack IN.xz OUT.pth          # there, torch only
    python benchmarks/compact_inception.py measure [--n 500]             # the FID tolerance

Why: the device tool carries 64 MiB per call, and the weights are 83 MiB in fp32 (fp16: 42 MiB,
still too large next to Fashion-MNIST's 29 MiB). `pack` rounds every convolution weight to a
10-bit integer with one fp32 scale per output channel (symmetric: scale = max|w| / 511), keeps
the batch-norm tensors exact, and xz-compresses the lot with the integers' low and high bytes
in separate planes (the high plane is nearly constant, so xz squeezes it to almost nothing).
`unpack` restores a pytorch-fid InceptionV3 state dict in fp32 (pool3 only: no classifier, as
the fid-helper conversion). `measure` scores the same image sets with both weights and prints
how far FID and KID move: the tolerance of any figure computed with the restored file.
Measured on a CPU (2026-12-02, 500 images per set: Fashion-MNIST train, test, procedural):
10 bits (23.8 MiB) move pool3 features by 1.5% and FID by 0.2-0.5% (35.60 -> 35.52, 354.1 ->
352.3), KID by < 1%; 8 bits (17 MiB) moved features by 5.7% and FID by 0.8-1.1%; fp16 (0.2%)
does not fit.

`unpack` imports nothing but torch and the standard library, so it runs before anything else
is installed.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import math
import sys
import tempfile
from pathlib import Path

import torch

FORMAT = "sagan-plugin compact inception v2"
BITS = 10


def pack(state: dict[str, torch.Tensor], bits: int = BITS) -> bytes:
    """BITS-bit convolution weights with per-output-channel scales; everything else as is."""
    top = 2 ** (bits - 1) - 1
    names, shapes, scales, planes, rest = [], [], [], [], {}
    for name, tensor in state.items():
        if not name.endswith("conv.weight"):
            rest[name] = tensor.clone()
            continue
        flat = tensor.float().flatten(1)
        scale = flat.abs().amax(dim=1).clamp_min(1e-12) / top
        q = torch.round(flat / scale[:, None]).clamp(-top, top).to(torch.int16)
        names.append(name)
        shapes.append(list(tensor.shape))
        scales.append(scale)
        planes.append(q.flatten().view(torch.uint8).reshape(-1, 2))  # (low, high) byte pairs
    both = torch.cat(planes)
    packed = {"format": FORMAT, "bits": bits, "names": names, "shapes": shapes,
              "scales": scales, "low": both[:, 0].clone(), "high": both[:, 1].clone(),
              "rest": rest}
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    return lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME)


def unpack(data: bytes) -> dict[str, torch.Tensor]:
    packed = torch.load(io.BytesIO(lzma.decompress(data)), weights_only=True)
    if packed.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT!r} file")
    q = torch.stack([packed["low"], packed["high"]], dim=1).flatten().view(torch.int16)
    state, start = {}, 0
    for name, shape, scale in zip(packed["names"], packed["shapes"], packed["scales"],
                                  strict=True):
        count = math.prod(shape)
        rows = q[start:start + count].float().reshape(shape[0], -1)
        state[name] = (rows * scale[:, None]).reshape(shape)
        start += count
    return {**state, **packed["rest"]}


def _fashion_mnist_uint8(split: str, n: int) -> torch.Tensor:
    """n Fashion-MNIST images as the study sees them: 28 -> 32 by padding, grey as RGB."""
    import gzip

    from sagan_plugin.data import DEBIAN_FASHION_MNIST

    prefix = "train" if split == "train" else "t10k"
    with gzip.open(DEBIAN_FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz") as f:
        raw = f.read()
    images = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).reshape(-1, 1, 28, 28)
    picked = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]]
    return torch.nn.functional.pad(picked, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()


def measure(n: int, batch_size: int, compact: Path) -> dict:
    """FID/KID of three pairs of image sets under the fp32 weights and the restored ones."""
    import numpy as np

    from sagan_plugin.data import ProceduralShapes
    from sagan_plugin.metrics.features import FeatureExtractor
    from sagan_plugin.metrics.scores import frechet_distance, kernel_inception_distance
    from sagan_plugin.metrics.weights import resolve_weights
    from sagan_plugin.sample import to_uint8

    fp32 = resolve_weights().path
    scratch = tempfile.TemporaryDirectory()  # 83 MB: never next to the carried file
    restored = Path(scratch.name) / "inception_restored.pth"
    torch.save(unpack(compact.read_bytes()), restored)
    shapes = ProceduralShapes(n, 32, 10)
    sets = {
        "fmnist_train": _fashion_mnist_uint8("train", n),
        "fmnist_test": _fashion_mnist_uint8("test", n),
        "procedural": to_uint8(torch.stack([shapes[i][0] for i in range(n)])),
    }
    features = {}
    for label, weights in (("fp32", fp32), ("compact", restored)):
        extractor = FeatureExtractor(weights, "cpu", batch_size)
        features[label] = {name: extractor.extract(images.split(batch_size)).features
                           for name, images in sets.items()}
    rows = []
    for a, b in (("fmnist_train", "fmnist_test"), ("fmnist_train", "procedural"),
                 ("fmnist_test", "procedural")):
        row = {"pair": f"{a} vs {b}"}
        for label in ("fp32", "compact"):
            fa, fb = features[label][a], features[label][b]
            row[f"fid_{label}"] = frechet_distance(fa, fb)
            row[f"kid_{label}"] = kernel_inception_distance(fa, fb)[0]
        row["fid_rel_diff"] = abs(row["fid_compact"] - row["fid_fp32"]) / row["fid_fp32"]
        rows.append(row)
    ref = np.concatenate([features["fp32"][k] for k in sets])
    got = np.concatenate([features["compact"][k] for k in sets])
    result = {
        "n_per_set": n, "compact_bytes": compact.stat().st_size, "format": FORMAT,
        "feature_rel_error": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
        "feature_max_abs_error": float(np.abs(got - ref).max()),
        # FID of one set's features under fp32 against the same images restored: the
        # shift the weights alone cause, with no sampling noise between the two sets.
        "self_fid": {k: frechet_distance(features["fp32"][k], features["compact"][k])
                     for k in sets},
        "pairs": rows,
    }
    scratch.cleanup()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="fp32 pytorch-fid state dict -> compact .xz")
    p.add_argument("out", type=Path)
    p.add_argument("--source", type=Path, help="default: the weights sagan-plugin resolves")
    u = commands.add_parser("unpack", help="compact .xz -> fp32 pytorch-fid state dict")
    u.add_argument("packed", type=Path)
    u.add_argument("out", type=Path)
    m = commands.add_parser("measure", help="FID/KID with fp32 vs restored weights (CPU)")
    m.add_argument("--n", type=int, default=500, help="images per set")
    m.add_argument("--batch-size", type=int, default=50)
    m.add_argument("--compact", type=Path, default=Path(".whl/fid/inception_10bit.xz"))
    m.add_argument("--json", type=Path)
    args = parser.parse_args()

    if args.command == "pack":
        if args.source is None:
            from sagan_plugin.metrics.weights import resolve_weights

            args.source = resolve_weights().path
        data = pack(torch.load(args.source, map_location="cpu", weights_only=True))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(data)
        print(f"wrote {args.out}: {len(data) / 2**20:.1f} MiB from {args.source}")
    elif args.command == "unpack":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(unpack(args.packed.read_bytes()), args.out)
        print(f"wrote {args.out}")
    else:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        result = measure(args.n, args.batch_size, args.compact)
        text = json.dumps(result, indent=2)
        print(text)
        if args.json:
            args.json.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
