"""The data-set registry: `data=NAME` names a :class:`DataSet`, built in or from another package.

A distribution adds a data set by naming a DataSet object in its metadata, under the entry-point
group ``mimicry.datasets``, as model families are added under ``mimicry.models``::

    [project.entry-points."mimicry.datasets"]
    mydata = "mydata_pkg.data:MYDATA"

It is then selectable as ``data=mydata`` and listed by ``sagan-plugin train --help``. The
built-in data sets are the presets registry/data/NAME.yaml, built by sagan_plugin.data and
sagan_plugin.image_folder; they are registered here directly, so that a checkout whose
installed metadata predates one of them still finds it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig
from torch.utils.data import Dataset

from sagan_plugin.errors import UsageError
from sagan_plugin.presets import load_preset, preset_names
from sagan_plugin.registry import Registry

ENTRY_POINT_GROUP = "mimicry.datasets"
DEFAULT_SPLIT = "train"  # DataConfig's data.split


@dataclass(frozen=True)
class DataSet:
    """A data set: its preset and how to build it from the composed data section.

    build(data) returns a torch Dataset of (image, label): the image a float tensor (3, R, R)
    in [-1, 1] with R = data.resolution, the label an int below data.num_classes (0 when that
    is 0). data has the fields of sagan_plugin.config.DataConfig. The Dataset may have a
    fingerprint() returning a str that changes with its files (sagan_plugin.files'
    files_fingerprint): the real-image statistics are then cached under it too, so that files
    replaced under the same data.root are not scored against their predecessors' statistics.
    defaults: the preset's data fields (resolution, num_classes, ...: keys of DataConfig).
    configure(data), optional: run when a command line is composed, before the class count is
    checked against the model's; returns data fields that follow from the files (a folder's
    classes). It must be cheap (no decoding) and raise UsageError on bad input.
    splits: the values of data.split that build really reads, each a different part of the
    data (of train, test, val). Empty (the default): only the default split, the preset's
    data.split or else train (a data set with one set of images has just that). Another is
    refused, naming these, when a configuration is composed (before configure) and again by
    sagan_plugin.data.build_dataset.
    """

    name: str
    build: Callable[[DictConfig], Dataset]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    configure: Callable[[DictConfig], Mapping[str, Any]] | None = None
    splits: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from sagan_plugin.config import SPLITS  # config imports this module

        default = self.defaults.get("split", DEFAULT_SPLIT)
        splits = tuple(self.splits) or (default,)
        if not set(splits) <= set(SPLITS) or default not in splits:
            raise ValueError(f"data set {self.name}: splits {splits} must be among data.split's "
                             f"values ({', '.join(SPLITS)}) and hold the default, {default}")
        object.__setattr__(self, "splits", splits)

    def check_split(self, split: str) -> None:
        """Refuse a split the data set does not have, in one line that names those it has."""
        if split not in self.splits:
            has = (f"splits {', '.join(self.splits)}" if len(self.splits) > 1
                   else f"one split, {self.splits[0]}")
            raise UsageError(f"data.split={split}: {self.name} has {has}")

    @property
    def summary(self) -> str:
        """One line for --help: the description, else the preset's size and classes."""
        return self.description or (f"{self.defaults.get('resolution', '?')} px, "
                                    f"{self.defaults.get('num_classes', 0)} classes")


def _built_ins() -> list[DataSet]:
    from sagan_plugin import data, image_folder

    builders = {**dict.fromkeys(data.HOST_FOLDERS, data.host_dataset),
                "fashion_mnist": data.fashion_mnist, "procedural": data.procedural,
                "folder": image_folder.build}
    configure = {"folder": image_folder.configure}
    # What each loader really reads (data.HOST_SPLITS); procedural and folder have one split.
    splits = {**{name: tuple(data.HOST_SPLITS[folder]) for name, folder in
                 data.HOST_FOLDERS.items()},
              "fashion_mnist": tuple(data.FASHION_MNIST_SPLITS)}
    built_ins = []
    for name in preset_names("data"):
        preset = load_preset("data", name)
        built_ins.append(DataSet(name=name, build=builders[name], defaults=preset["data"],
                                 description=preset.get("description", ""),
                                 configure=configure.get(name), splits=splits.get(name, ())))
    return built_ins


DATASETS = Registry(DataSet, ENTRY_POINT_GROUP, "data set", built_ins=_built_ins)


# register_dataset(dataset, replace=False), list_datasets(), get_dataset(name), as for models
register_dataset, list_datasets, get_dataset = DATASETS.register, DATASETS.names, DATASETS.get
