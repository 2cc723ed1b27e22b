"""Data sets for `data=`: the host's loaders, Fashion-MNIST from disk, and a procedural set
(image folders: sagan_plugin.image_folder; the registry of names: sagan_plugin.datasets).

Every data set yields (image, label) with the image a float tensor (3, R, R) in [-1, 1].
Nothing is downloaded: a missing data set is an error that says where the files should be.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from sagan_plugin.datasets import DEFAULT_SPLIT, get_dataset
from sagan_plugin.errors import UsageError, first_line
from sagan_plugin.files import cache_dir, files_fingerprint, walk_files, write_atomically

if TYPE_CHECKING:
    import PIL.Image

DEFAULT_ROOT = "./datasets"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# The host's data sets and the folder under data.root each of its loaders reads.
HOST_FOLDERS = {
    "imagenet_32": "imagenet", "imagenet_128": "imagenet", "cifar10": "cifar10",
    "cifar100": "cifar100", "stl10_48": "stl10", "celeba_64": "celeba",
    "celeba_128": "celeba", "lsun_bedroom_128": "lsun",
}
HOST_LAYOUT_HINTS = {
    "imagenet": "meta.bin and train/<wnid>/*.JPEG (ILSVRC 2012)",
    "cifar10": "cifar-10-batches-py/ (the python version)",
    "cifar100": "cifar-100-python/",
    "stl10": "stl10_binary/",
    "celeba": "celeba/img_align_celeba/ and its list files",
    "lsun": "bedroom_train_lmdb/",
}
# data.split -> the split argument of the host's loader (torch_mimicry/datasets/data_utils.py),
# for the splits it really reads; None: the loader takes none. LSUN's reads bedroom_train alone.
# CelebA's "train" is its loader's default, all 202,599 faces (the GAN protocol), so CelebA
# offers no test or val: those faces are in it. STL-10's is the 100,000 unlabelled images,
# apart from its test images.
HOST_SPLITS: dict[str, dict[str, str | None]] = {
    "imagenet": {"train": "train", "val": "val"},
    "cifar10": {"train": "train", "test": "test"},
    "cifar100": {"train": "train", "test": "test"},
    "stl10": {"train": "unlabeled", "test": "test"},
    "celeba": {"train": "all"},
    "lsun": {"train": None},
}
FASHION_MNIST_SPLITS = {"train": True, "test": False}  # -> torchvision's train=


def build_dataset(data: DictConfig) -> Dataset:
    """The data set a data config names (sagan_plugin.datasets), checked to exist and to
    match its resolution. A split the data set lacks is refused here too: a run saved before
    splits were checked loads (sampling reads no data) but is not trained or scored on one."""
    dataset = get_dataset(data.name)
    try:
        dataset.check_split(data.get("split") or dataset.defaults.get("split", DEFAULT_SPLIT))
    except UsageError as error:
        raise UsageError(f"{error} (a run saved with it: set data.split in its config.yaml to "
                         "the split it was trained on)") from None
    return dataset.build(data)


def procedural(data: DictConfig) -> Dataset:
    return ProceduralShapes(data.size, data.resolution, data.num_classes)


def build_dataloader(dataset: Dataset, batch_size: int, num_workers: int | None = None,
                     sampler: Sampler | None = None) -> DataLoader:
    """Shuffled batches of equal size (drop_last), pinned when a GPU will take them."""
    if len(dataset) < batch_size:
        name = getattr(dataset, "display_name", None) or "the data set"  # a folder: its path
        raise UsageError(f"{name} has {len(dataset)} images, fewer than one batch "
                         f"({batch_size}); lower train.batch_size")
    if num_workers is None:
        num_workers = min(4, max((os.cpu_count() or 1) - 1, 0))
    return DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                      num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                      drop_last=True, persistent_workers=num_workers > 0)


def host_dataset(data: DictConfig) -> Dataset:
    from sagan_plugin.host import load_dataset

    root = Path(data.root or DEFAULT_ROOT)
    folder = HOST_FOLDERS[data.name]
    if not (root / folder).is_dir():
        raise UsageError(f"data set {data.name} not found: expected {root / folder}/ holding "
                         f"{HOST_LAYOUT_HINTS[folder]}; nothing is downloaded, put the files "
                         "there or set data.root")
    expected = get_dataset(data.name).defaults["resolution"]  # the host's files are of one size
    if data.resolution != expected:
        raise UsageError(f"data set {data.name} is {expected}x{expected}; "
                         f"got data.resolution={data.resolution}")
    kwargs: dict = {} if folder == "lsun" else {"download": False}
    if HOST_SPLITS[folder][data.split] is not None:
        kwargs["split"] = HOST_SPLITS[folder][data.split]
    square = folder == "imagenet" and data.crop == "square"
    if square:
        kwargs["transform_data"] = False  # the host's own crop is replaced below
    try:
        dataset = load_dataset(root=str(root), name=data.name, **kwargs)
    except (RuntimeError, OSError, ValueError) as error:
        raise UsageError(f"cannot load data set {data.name} from {root / folder}: "
                         f"{first_line(error)}") from None
    if square:
        dataset.transform = square_crop_transform(data.resolution)
    dataset.fingerprint = partial(_tree_fingerprint, root / folder)
    return dataset


def _tree_fingerprint(folder: Path) -> str:
    return files_fingerprint(folder, walk_files(folder))


class CentredSquareCrop:
    """The largest centred square of a PIL image (the reference's ImageNet crop)."""

    def __call__(self, image: PIL.Image.Image) -> PIL.Image.Image:
        from sagan_plugin.host import torchvision

        return torchvision.transforms.functional.center_crop(image, min(image.size))


def square_crop_transform(resolution: int) -> Callable[[PIL.Image.Image], Tensor]:
    """PIL image -> (3, R, R) in [-1, 1]: largest centred square, resized bilinearly to R."""
    from sagan_plugin.host import torchvision

    transforms = torchvision.transforms
    return transforms.Compose([
        CentredSquareCrop(), transforms.Resize((resolution, resolution)), transforms.ToTensor(),
        transforms.Normalize((0.5,) * 3, (0.5,) * 3),
    ])


def fashion_mnist(data: DictConfig) -> Dataset:
    from sagan_plugin.host import torchvision

    transforms = torchvision.transforms
    margin, odd = divmod(data.resolution - 28, 2)
    if data.fit == "pad" and (margin < 0 or odd):
        raise UsageError("data.fit=pad needs data.resolution >= 28 with an even margin, got "
                         f"{data.resolution}; use data.fit=resize")
    root = _fashion_mnist_root(data.root)
    fit = transforms.Pad(margin) if data.fit == "pad" else transforms.Resize(data.resolution)
    transform = transforms.Compose([
        fit, transforms.Grayscale(num_output_channels=3), transforms.ToTensor(),
        transforms.Normalize((0.5,) * 3, (0.5,) * 3),
    ])
    dataset = torchvision.datasets.FashionMNIST(str(root), train=FASHION_MNIST_SPLITS[data.split],
                                                download=False, transform=transform)
    # What torchvision reads: the split's idx files, or a legacy processed/ file when there is one.
    train = FASHION_MNIST_SPLITS[data.split]
    files = [f"raw/{name}" for name in FASHION_MNIST_FILES if name.startswith(
        "train" if train else "t10k")] + [f"processed/{'training' if train else 'test'}.pt"]
    folder = root / "FashionMNIST"
    dataset.fingerprint = partial(files_fingerprint, folder, [folder / f for f in files],
                                  contents=True)
    return dataset


def _fashion_mnist_root(root: str | None) -> Path:
    """A folder with FashionMNIST/raw/<uncompressed idx files>, as torchvision reads them.

    Looks in data.root if it is set, else in ./datasets and then in Debian's
    dataset-fashion-mnist package; gzip files are unpacked once into the cache, atomically.
    """
    candidates = [Path(root or DEFAULT_ROOT) / "FashionMNIST" / "raw"]
    if root is None:  # a data.root given is where the data must be: config.yaml records it
        candidates.append(DEBIAN_FASHION_MNIST)
    for raw in candidates:
        if all((raw / name).is_file() for name in FASHION_MNIST_FILES):
            return raw.parent.parent
        if all((raw / f"{name}.gz").is_file() for name in FASHION_MNIST_FILES):
            return _unpacked(raw)
    debian = ("Debian's package: apt-get install dataset-fashion-mnist" if root is None else
              "leave data.root unset to use Debian's dataset-fashion-mnist")
    raise UsageError(f"Fashion-MNIST not found: expected {candidates[0]}/train-images-idx3-ubyte"
                     f"[.gz] (and the other three idx files), or {debian}")


def _unpacked(gz_folder: Path) -> Path:
    """A root whose FashionMNIST/raw holds gz_folder's files unpacked, in the cache: one per
    source (its path, and its files' sizes and times), so that the copy of one data.root (or
    of Debian's package) is never read for another's."""
    sources = [gz_folder / f"{name}.gz" for name in FASHION_MNIST_FILES]
    identity = [str(gz_folder.resolve())] + [
        (stat.st_size, stat.st_mtime_ns) for stat in (path.stat() for path in sources)]
    root = cache_dir() / "fashion_mnist" / hashlib.sha256(repr(identity).encode()).hexdigest()[:16]
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        if (raw / name).is_file():
            continue
        with gzip.open(gz_folder / f"{name}.gz") as src:
            write_atomically(raw / name, lambda f, src=src: shutil.copyfileobj(src, f))
    return root


class ProceduralShapes(Dataset):
    """Images from a formula: class k is one shape (disc, square, ring, cross, stripes) in one
    colour, at a random place and size, on a noisy dark background. Item i is always the same.
    """

    SHAPES = 5

    def __init__(self, size: int, resolution: int, num_classes: int, seed: int = 0) -> None:
        self.size, self.resolution, self.num_classes = size, resolution, num_classes
        self.seed = seed
        axis = torch.linspace(-1, 1, resolution)
        self.yy, self.xx = torch.meshgrid(axis, axis, indexing="ij")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        kinds = self.num_classes or self.SHAPES * 2
        label = index % kinds
        cx, cy = (torch.rand(2, generator=rng) - 0.5).tolist()
        radius = 0.3 + 0.3 * torch.rand((), generator=rng).item()
        dx, dy = (self.xx - cx).abs(), (self.yy - cy).abs()
        box = torch.maximum(dx, dy)
        shape = label % self.SHAPES
        if shape == 0:
            mask = dx**2 + dy**2 < radius**2
        elif shape == 1:
            mask = box < radius * 0.8
        elif shape == 2:
            mask = ((dx**2 + dy**2).sqrt() - radius * 0.75).abs() < radius / 4
        elif shape == 3:
            mask = (torch.minimum(dx, dy) < radius / 4) & (box < radius)
        else:
            mask = (torch.sin(math.pi * 3 * (self.xx - cx) / radius) > 0) & (box < radius)
        hue = (label / kinds) * 2 * math.pi
        colour = torch.tensor([math.cos(hue + k * 2 * math.pi / 3) for k in range(3)]) * 0.8
        noise = 0.1 * torch.randn(3, self.resolution, self.resolution, generator=rng)
        image = torch.where(mask, colour[:, None, None], torch.full((), -0.8)) + noise
        return image.clamp(-1, 1), (label if self.num_classes else 0)
