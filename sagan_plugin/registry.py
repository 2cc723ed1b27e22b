"""The model-family registry: list, get, register, with discovery through entry points.

A distribution adds a family to the host by naming a :class:`ModelFamily` object in its
metadata, under the entry-point group ``mimicry.models``::

    [project.entry-points."mimicry.models"]
    mygan = "mygan_pkg.family:MYGAN"

It is then selectable as ``model=mygan`` with no change here. This distribution registers
``sagan`` and Mimicry's own families (``sngan``, ``cgan_pd``, ...) the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from torch import Tensor, nn

from sagan_plugin.errors import UsageError

ENTRY_POINT_GROUP = "mimicry.models"


@dataclass(frozen=True)
class ModelFamily:
    """A GAN family: how to build G and D, and the defaults it trains with.

    build(resolution, num_classes, **arch) returns (netG, netD), host models; netG carries
    nz, num_classes (0: unconditional) and resolution, and netG(z, y) gives images in [-1, 1].
    defaults holds the preset: {"model": {arch defaults}, "train": {training defaults},
    "batch_size": {resolution: batch size}}.
    conditional: True (needs labels), False (ignores them) or None (both, num_classes=0 off).
    """

    name: str
    build: Callable[..., tuple[nn.Module, nn.Module]]
    resolutions: tuple[int, ...]
    conditional: bool | None = None
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)


def generate(netG: nn.Module, z: Tensor, labels: Tensor | None = None) -> Tensor:
    """A family's images for noise z, conditioned on labels when netG is class-conditional.

    Mimicry's unconditional generators take z alone; this package's take (z, y=None).
    """
    return netG(z, labels) if netG.num_classes else netG(z)


_families: dict[str, ModelFamily] = {}
_discovered = False


def register_model(family: ModelFamily, *, replace: bool = False) -> ModelFamily:
    """Add a family; a second family under a taken name is an error unless replace=True."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"expected a ModelFamily, got {type(family).__name__}")
    if family.name in _families and not replace and _families[family.name] is not family:
        raise ValueError(f"a model family named {family.name!r} is already registered")
    _families[family.name] = family
    return family


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        family = entry_point.load()
        if not isinstance(family, ModelFamily) or family.name != entry_point.name:
            raise TypeError(f"entry point {entry_point.name!r} = {entry_point.value} in group "
                            f"{ENTRY_POINT_GROUP} must be a ModelFamily named {entry_point.name!r}")
        register_model(family, replace=True)


def list_models() -> list[str]:
    """Names of all registered families, sorted."""
    _discover()
    return sorted(_families)


def get_model(name: str) -> ModelFamily:
    """The family registered under name; an unknown name lists the registered ones."""
    _discover()
    try:
        return _families[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; registered models: "
                         f"{', '.join(list_models())}") from None
