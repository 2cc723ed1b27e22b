"""The model-family registry: list, get, register, with discovery through entry points.

A distribution adds a family to the host by naming a :class:`ModelFamily` object in its
metadata, under the entry-point group ``mimicry.models``::

    [project.entry-points."mimicry.models"]
    mygan = "mygan_pkg.family:MYGAN"

It is then selectable as ``model=mygan`` with no change here. This distribution registers
``sagan`` and Mimicry's own families (``sngan``, ``cgan_pd``, ...) the same way.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from torch import Tensor, nn

from sagan_plugin.errors import UsageError, warn

ENTRY_POINT_GROUP = "mimicry.models"
T = TypeVar("T")


@dataclass(frozen=True)
class ModelFamily:
    """A GAN family: how to build G and D, and the defaults it trains with.

    build(resolution, num_classes, **arch) returns (netG, netD), host models, with netG(z, y)
    (netG(z) when unconditional) giving images in [-1, 1]. Through the family, a resolution
    outside `resolutions` or a num_classes that is not an int >= 0 (>= 1 when conditional) is a
    UsageError, and netG comes back carrying `resolution` and `num_classes` (0: unconditional),
    which sampling, eval and export read, whether or not the family's own build sets them.
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

    def __post_init__(self) -> None:
        # A third-party build need only return the nets; every caller goes through the check.
        # Another family's checked build (build=SNGAN.build) is checked by this one's rules.
        raw = getattr(self.build, "family_build", self.build)
        object.__setattr__(self, "build", self._checked(raw))

    def _checked(self, build: Callable[..., tuple[nn.Module, nn.Module]]
                 ) -> Callable[..., tuple[nn.Module, nn.Module]]:
        parameters = inspect.signature(build).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        known = [name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY or
                 p.kind is p.POSITIONAL_OR_KEYWORD][2:]  # after resolution and num_classes

        @functools.wraps(build)
        def checked_build(resolution: int, num_classes: int = 0, **arch: Any
                          ) -> tuple[nn.Module, nn.Module]:
            self._check_arguments(resolution, num_classes)
            unknown = [key for key in arch if key not in known]
            if unknown and not takes_any:
                raise UsageError(f"model {self.name}: unknown argument {', '.join(unknown)}; "
                                 f"it takes {', '.join(known) or 'none'}")
            resolution, num_classes = int(resolution), int(num_classes)  # numpy's as Python's
            netG, netD = build(resolution, num_classes, **arch)
            if getattr(netG, "resolution", None) is None:
                netG.resolution = resolution
            if getattr(netG, "num_classes", None) is None:
                netG.num_classes = 0 if self.conditional is False else num_classes
            return netG, netD

        checked_build.family_build = build
        return checked_build

    def _check_arguments(self, resolution: Any, num_classes: Any) -> None:
        supported = ", ".join(map(str, self.resolutions))
        if not _is_int(resolution):
            raise UsageError(f"model {self.name}: resolution must be an int, one of {supported};"
                             f" got {resolution!r}")
        if resolution not in self.resolutions:
            raise UsageError(f"model {self.name} does not support {resolution}x{resolution}"
                             f" images; supported: {supported}")
        fewest = 1 if self.conditional else 0
        if not _is_int(num_classes) or num_classes < fewest:
            expected = ("at least 1 (the family is class-conditional)" if self.conditional
                        else "at least 0 (0: unconditional)")
            raise UsageError(f"model {self.name}: num_classes must be an int {expected}, got "
                             f"{num_classes!r}")

    def __reduce__(self) -> tuple[Callable[[str], ModelFamily], tuple[str]]:
        """Pickled by name (its checked build is a closure, which pickle cannot take): a
        worker process unpickles the family its own registry holds under that name."""
        if self.name not in MODELS.names() or get_model(self.name) is not self:
            raise pickle.PicklingError(f"model family {self.name!r} is not the registered one: "
                                       "only families in the registry (register_model) pickle")
        return _registered_family, (self.name,)


def _is_int(value: Any) -> bool:
    """An integer (numpy's too), not a bool, a float or a string of digits."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _registered_family(name: str) -> ModelFamily:
    return get_model(name)


def generate(netG: nn.Module, z: Tensor, labels: Tensor | None = None) -> Tensor:
    """A family's images for noise z, conditioned on labels when netG is class-conditional.

    Mimicry's unconditional generators take z alone; this package's take (z, y=None).
    """
    return netG(z, labels) if class_count(netG) else netG(z)


@contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """net in eval mode for the block, then back in the mode it was in: sampling in training
    mode would move batch-norm statistics and spectral-norm vectors."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def class_count(netG: nn.Module) -> int:
    """netG's classes; 0 for an unconditional net, whose Mimicry class may not say so."""
    return int(getattr(netG, "num_classes", 0) or 0)


class Registry(Generic[T]):
    """Named objects of one kind: built in, registered in code, or found through an
    entry-point group (each entry point names an object of the kind, under its own name)."""

    def __init__(self, kind: type[T], group: str, noun: str,
                 built_ins: Callable[[], Iterable[T]] = tuple) -> None:
        self.kind, self.group, self.noun, self._built_ins = kind, group, noun, built_ins
        self._items: dict[str, T] = {}
        self._broken: dict[str, str] = {}  # entry-point name -> why it could not be loaded
        self._discovered = False

    def register(self, item: T, *, replace: bool = False) -> T:
        """Add item; a second one under a taken name is an error unless replace=True."""
        if not isinstance(item, self.kind):
            raise TypeError(f"expected a {self.kind.__name__}, got {type(item).__name__}")
        taken = self._items.get(item.name)
        if taken is not None and taken is not item and not replace:
            raise ValueError(f"a {self.noun} named {item.name!r} is already registered")
        self._items[item.name] = item
        return item

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for item in self._built_ins():
            self.register(item)
        for entry_point in entry_points(group=self.group):
            where = f"entry point {entry_point.name} = {entry_point.value} ({self.group})"
            # One broken package must not take every other family or data set down with it:
            # it is skipped with a warning, and asking for it by name gives the reason.
            try:
                item = entry_point.load()
            except Exception as error:
                self._skip(entry_point.name, f"{where} does not load: "
                                             f"{type(error).__name__}: {error}")
                continue
            if not isinstance(item, self.kind) or item.name != entry_point.name:
                self._skip(entry_point.name, f"{where} is not a {self.kind.__name__} named "
                                             f"{entry_point.name!r}")
                continue
            self.register(item, replace=True)

    def _skip(self, name: str, why: str) -> None:
        self._broken[name] = " ".join(why.split())  # one line, whatever the error said
        warn(f"skipped {self._broken[name]}")

    def names(self) -> list[str]:
        """Names of everything registered, sorted."""
        self._discover()
        return sorted(self._items)

    def get(self, name: str) -> T:
        """The object registered under name; an unknown name lists the registered ones."""
        self._discover()
        try:
            return self._items[name]
        except KeyError:
            if name in self._broken:
                raise UsageError(f"{self.noun} {name!r}: {self._broken[name]}") from None
            raise UsageError(f"unknown {self.noun} {name!r}; registered {self.noun}s: "
                             f"{', '.join(self.names())}") from None


MODELS = Registry(ModelFamily, ENTRY_POINT_GROUP, "model")


# register_model(family, replace=False): a taken name is an error unless replace=True;
# list_models(): the names, sorted; get_model(name): an unknown name lists the registered ones.
register_model, list_models, get_model = MODELS.register, MODELS.names, MODELS.get
