"""`data=folder`: any folder of PNG, JPEG or WebP images, found recursively.

    root/cat/*.png, root/dog/2024/*.jpg   labelled: one class per sub-folder holding images
    root/*.webp (or root/only_one/...)    unlabelled

The layout (the sorted class names) is read when the configuration is composed, cheaply (file
names only), and recorded as data.classes in the run's config.yaml; files are decoded in the
Dataset, so in the DataLoader's workers. A file that does not decode is skipped with one warning.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from sagan_plugin.data import square_crop_transform
from sagan_plugin.errors import UsageError, first_line, warn
from sagan_plugin.files import files_fingerprint, walk_files

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
EXPECTED = "PNG, JPEG or WebP images, in one sub-folder per class or all loose"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _image_files(folder: str | os.PathLike) -> Iterator[str]:
    return (path for path in walk_files(folder) if _is_image(os.path.basename(path)))


def folder_classes(root: Path) -> list[str]:
    """The class names of an image folder, sorted: its sub-folders that hold images when there
    are several, else none (unlabelled). Reads names only; bad layouts are UsageErrors."""
    if not root.is_dir():
        raise UsageError(f"data folder {root} does not exist (or is not a folder); expected a "
                         f"folder of {EXPECTED}")
    loose, labelled = [], []
    try:
        with os.scandir(root) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as error:
        raise UsageError(f"cannot read data folder {root}: {error.strerror}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if next(_image_files(entry.path), None) is not None:
                labelled.append(entry.name)
        elif _is_image(entry.name):
            loose.append(entry.name)
    if not loose and not labelled:
        raise UsageError(f"data folder {root} holds no images; expected {EXPECTED}")
    if loose and labelled:
        raise UsageError(f"data folder {root} mixes loose images ({loose[0]}, ...) with class "
                         f"sub-folders ({', '.join(labelled)}); expected {EXPECTED}")
    return labelled if len(labelled) > 1 else []


def _root(data: DictConfig) -> Path:
    if not data.root:
        raise UsageError("data=folder needs data.root=DIR, a folder of " + EXPECTED)
    return Path(data.root).expanduser()


def configure(data: DictConfig) -> Mapping[str, Any]:
    """The data fields that follow from the folder's layout (composing a command line)."""
    root = _root(data)
    classes = folder_classes(root)
    given = data.get("classes")
    if given is not None and list(given) != classes:
        raise UsageError(f"data.classes={list(given)} does not match the class "
                         f"sub-folders of data folder {root}: {classes}")
    if data.num_classes not in (0, len(classes)):
        raise UsageError(f"data.num_classes={data.num_classes} does not match data folder "
                         f"{root}: {len(classes)} class sub-folders")
    return {"classes": classes, "num_classes": len(classes)}


def build(data: DictConfig) -> FolderImages:
    """The images of data.root, labelled as data.classes (the layout when the run began)."""
    root = _root(data)
    classes = folder_classes(root)
    recorded = classes if data.get("classes") is None else list(data.classes)
    if classes != recorded:
        raise UsageError(f"the class sub-folders of data folder {root} changed since the "
                         f"configuration was written: {recorded} -> {classes}")
    dataset = FolderImages(root, classes, data.resolution)
    dataset[0]  # decodes up to the first readable image: an unreadable folder fails here, once
    return dataset


class FolderImages(Dataset):
    """(image (3, R, R) in [-1, 1], label) for every image file of a folder: the largest
    centred square, resized to R. Files are decoded on access; one that cannot be is skipped
    (the next readable file is returned instead) with one warning that names it."""

    def __init__(self, root: Path, classes: list[str], resolution: int) -> None:
        self.root, self.classes = root, classes
        self.display_name = f"data folder {root}"
        folders = [root / name for name in classes] or [root]
        self.files, self.labels = [], []
        for label, folder in enumerate(folders):
            files = list(_image_files(folder))
            self.files += files
            self.labels += [label] * len(files)
        self.transform = square_crop_transform(resolution)
        # Shared with the DataLoader's workers, so that each bad file is warned about once.
        self._unreadable = torch.zeros(len(self.files), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        for step in range(len(self)):  # at most one pass: an unreadable folder is an error
            i = (index + step) % len(self)
            if not self._unreadable[i] and (image := self._decode(i)) is not None:
                return self.transform(image), self.labels[i]
        raise UsageError(f"{self.display_name} has no readable image; expected {EXPECTED}")

    def _decode(self, i: int) -> Image.Image | None:
        try:
            with Image.open(self.files[i]) as file:
                return file.convert("RGB")
        except Exception as error:  # whatever the decoder raises (truncated, not an image...)
            self._unreadable[i] = True
            warn(f"skipping {self.files[i]}: not a readable image ({first_line(error)})",
                 every_rank=True)
            return None

    def fingerprint(self) -> str:
        """The FID cache's key for the images: their names and sizes."""
        return files_fingerprint(self.root, self.files)
