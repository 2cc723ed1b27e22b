"""Declarative presets that `model=` and `data=` select: one YAML file per family and data set.

Installed as the package ``sagan_plugin.presets`` (see pyproject.toml), so they ship in the wheel.
"""

from importlib.resources import files
from typing import Any

from omegaconf import OmegaConf


def preset_names(kind: str) -> list[str]:
    """Names of the presets of one kind ("models" or "data"), sorted."""
    return sorted(p.name.removesuffix(".yaml") for p in files(__name__).joinpath(kind).iterdir()
                  if p.name.endswith(".yaml") and not p.name.startswith("_"))

def load_preset(kind: str, name: str) -> dict[str, Any]:
    """The preset kind/name.yaml as plain data, merged over the `base` preset it may name.

    Names starting with "_" are shared bases, not selectable presets.
    """
    with files(__name__).joinpath(kind, f"{name}.yaml").open() as f:
        preset = OmegaConf.create(f.read())
    base = preset.pop("base", None)
    if base is not None:
        preset = OmegaConf.merge(load_preset(kind, base), preset)
    return OmegaConf.to_container(preset)
