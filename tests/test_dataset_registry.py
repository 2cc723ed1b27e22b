"""The data-set registry: the built-in presets, and a data set from a throw-away distribution."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sagan_plugin.presets import load_preset, preset_names

from sagan_plugin.datasets import (
    ENTRY_POINT_GROUP,
    DataSet,
    get_dataset,
    list_datasets,
    register_dataset,
)
from sagan_plugin.errors import UsageError


def test_every_data_preset_is_a_registered_data_set() -> None:
    assert set(preset_names("data")) <= set(list_datasets())
    for name in preset_names("data"):
        dataset = get_dataset(name)
        assert dataset.name == name and dict(dataset.defaults) == load_preset("data", name)["data"]
    assert get_dataset("folder").configure is not None


def test_unknown_data_set_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match="unknown data set 'nope'; registered data sets: .*folder"):
        get_dataset("nope")


def test_register_refuses_a_taken_name() -> None:
    clash = DataSet(name="procedural", build=get_dataset("cifar10").build)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(clash)


def _distribution(tmp_path: Path) -> dict[str, str]:
    """A package declaring one data set under the entry-point group, on PYTHONPATH only."""
    (tmp_path / "toy_data.py").write_text(textwrap.dedent("""
        from sagan_plugin.data import ProceduralShapes
        from sagan_plugin.datasets import DataSet

        def build(data):
            return ProceduralShapes(8, data.resolution, data.num_classes, seed=7)

        TOY = DataSet(name="toyset", build=build, description="a throw-away data set",
                      defaults={"resolution": 32, "num_classes": 3})
    """))
    dist_info = tmp_path / "toy_data-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-data\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntoyset = toy_data:TOY\n")
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def test_a_data_set_from_another_distribution_is_composed_built_and_listed(
        tmp_path: Path) -> None:
    env = _distribution(tmp_path)
    code = ("from sagan_plugin.config import compose; from sagan_plugin.data import "
            "build_dataset; cfg = compose(['data=toyset']); d = build_dataset(cfg.data); "
            "print(cfg.data.num_classes, cfg.model.num_classes, cfg.run_dir, len(d), "
            "tuple(d[5][0].shape), d[5][1])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "3", "runs/sagan_toyset", "8", "(3,", "32,", "32)",
                                     "2"]
    result = subprocess.run([sys.executable, "-m", "sagan_plugin", "train", "--help"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "  toyset            a throw-away data set" in result.stdout
    assert "  cifar10           32 px, 10 classes" in result.stdout  # with the built-in ones
