"""SAGAN trained by Mimicry's own Trainer, then scored by sagan-plugin's offline FID and KID.

    python examples/mimicry_trainer.py --data folder --root path/to/images --steps 20000
    python examples/mimicry_trainer.py --data cifar10 --root ./datasets --steps 100000

What a Mimicry user writes: the nets come from the model registry, the data from Mimicry's
loaders (`load_dataset`) or from a folder of images, the training loop is `mmc.training.Trainer`.
FID and KID come from `sagan_plugin.metrics.evaluate`, which takes `mmc.metrics.evaluate`'s
arguments and needs no TensorFlow or download. The run folder it leaves (Mimicry's checkpoints
and params.json) is one that every `sagan-plugin` command reads when told the model and data,
e.g.

    sagan-plugin sample run=runs/mimicry_sagan model=sagan data=folder data.root=DIR
    sagan-plugin train run_dir=runs/mimicry_sagan model=sagan data=folder data.root=DIR  # on
"""

from __future__ import annotations

import argparse

import torch
import torch_mimicry as mmc  # importable on current PyTorch through sagan-plugin's start-up hook

from sagan_plugin import metrics
from sagan_plugin.config import compose
from sagan_plugin.data import build_dataset
from sagan_plugin.nets.layers import set_bn_group
from sagan_plugin.registry import get_model

MIMICRY_DATA = ("cifar10", "cifar100", "stl10_48", "imagenet_32", "imagenet_128", "celeba_64",
                "celeba_128", "lsun_bedroom_128")
BN_GROUP = 64  # G's batch norms normalise groups of this many images: the reference's towers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="folder", help="folder, another data set of "
                        "`sagan-plugin train --help` (fashion_mnist), or one of Mimicry's: "
                        + ", ".join(MIMICRY_DATA))
    parser.add_argument("--root", required=True, help="the image folder, or the data root")
    parser.add_argument("--resolution", type=int, default=32, choices=(32, 64, 128),
                        help="of a folder's images (Mimicry's data sets have their own)")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=64, help="ngf = ndf")
    parser.add_argument("--log-dir", default="runs/mimicry_sagan")
    parser.add_argument("--fid-n", type=int, default=10000, help="images for FID and KID")
    args = parser.parse_args()
    if args.fid_n < 20:  # refused now, not after the training
        parser.error(f"--fid-n {args.fid_n}: KID averages 10 subsets of at least 2 images, so "
                     "give 20 or more")
    if args.steps < 1 or args.batch_size < 1 or args.width < 1:
        parser.error("--steps, --batch-size and --width must be at least 1")
    if args.batch_size > BN_GROUP and args.batch_size % BN_GROUP:
        parser.error(f"--batch-size {args.batch_size}: above {BN_GROUP}, a multiple of "
                     f"{BN_GROUP} (G's batch norms normalise groups of {BN_GROUP} images, the "
                     "reference's towers)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # The data: Mimicry's loader for its data sets, sagan-plugin's for a folder of images. The
    # data tokens also tell sagan-plugin's commands, later, what this run was trained on.
    data_tokens = [f"data={args.data}", f"data.root={args.root}"]
    if args.data == "folder":
        data_tokens.append(f"data.resolution={args.resolution}")
    data = compose(["model=sagan", *data_tokens]).data  # resolution, classes (a folder's too)
    if args.data in MIMICRY_DATA:
        dataset = mmc.datasets.load_dataset(root=args.root, name=args.data, download=False)
    else:
        dataset = build_dataset(data)
    dataloader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                             drop_last=True, num_workers=2)

    # The nets through the registry; the paper's two-time-scale Adam.
    netG, netD = get_model("sagan").build(data.resolution, data.num_classes, ngf=args.width,
                                          ndf=args.width)
    set_bn_group(netG, BN_GROUP)
    optD = torch.optim.Adam(netD.parameters(), lr=4e-4, betas=(0.0, 0.9))
    optG = torch.optim.Adam(netG.parameters(), lr=1e-4, betas=(0.0, 0.9))
    trainer = mmc.training.Trainer(netD=netD, netG=netG, optD=optD, optG=optG,
                                   dataloader=dataloader, num_steps=args.steps,
                                   log_dir=args.log_dir, device=device,
                                   save_steps=min(5000, args.steps), vis_steps=1000)
    trainer.train()

    # Scored as a Mimicry user scores a run, with mmc.metrics.evaluate's arguments, offline.
    fields = {"root": args.root, "resolution": data.resolution}
    for metric, counts in (("fid", {"num_real_samples": args.fid_n,
                                    "num_fake_samples": args.fid_n}),
                           ("kid", {"num_samples": args.fid_n})):
        metrics.evaluate(metric, netG, args.log_dir, evaluate_step=args.steps, num_runs=1,
                         dataset=args.data, data=fields, device=device, **counts)


if __name__ == "__main__":
    main()
