"""The data-set registry: the built-in presets, and a data set from a throw-away distribution."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from sagan_plugin.presets import load_preset, preset_names

from sagan_plugin.cli import main as cli_main
from sagan_plugin.config import DataConfig, compose, compose_data, compose_saved
from sagan_plugin.data import build_dataset
from sagan_plugin.datasets import (
    DATASETS,
    ENTRY_POINT_GROUP,
    DataSet,
    get_dataset,
    list_datasets,
    register_dataset,
)
from sagan_plugin.errors import UsageError

# What each built-in loader really reads, read off torch_mimicry/datasets/data_utils.py and
# torchvision: ImageNet has train and val folders, CIFAR train and test batches, STL-10 its
# unlabelled images and a test set; CelebA's loader gives all faces and LSUN's bedroom_train.
BUILT_IN_SPLITS = {
    "imagenet_32": ("train", "val"), "imagenet_128": ("train", "val"),
    "cifar10": ("train", "test"), "cifar100": ("train", "test"),
    "stl10_48": ("train", "test"), "celeba_64": ("train",), "celeba_128": ("train",),
    "lsun_bedroom_128": ("train",), "fashion_mnist": ("train", "test"),
    "procedural": ("train",), "folder": ("train",),
}


def test_every_data_preset_is_a_registered_data_set() -> None:
    assert set(preset_names("data")) <= set(list_datasets())
    for name in preset_names("data"):
        dataset = get_dataset(name)
        assert dataset.name == name and dict(dataset.defaults) == load_preset("data", name)["data"]
    assert get_dataset("folder").configure is not None


def test_each_built_in_data_set_declares_the_splits_its_loader_reads() -> None:
    assert {name: get_dataset(name).splits for name in preset_names("data")} == BUILT_IN_SPLITS


@pytest.mark.parametrize("name", sorted(BUILT_IN_SPLITS))
def test_a_split_a_data_set_lacks_is_refused_before_any_work(
        name: str, tmp_path: Path, capsys) -> None:
    missing = next(s for s in ("val", "test") if s not in BUILT_IN_SPLITS[name])
    run_dir = tmp_path / "run"
    small = ["train.steps=1", "train.batch_size=2", "model.ngf=8", "model.ndf=8", "data.size=8",
             "data.num_workers=0"]  # were the split let through, a short run, not a long one
    code = cli_main(["train", f"data={name}", f"data.split={missing}", f"data.root={tmp_path}",
                     f"run_dir={run_dir}", *small])
    err = capsys.readouterr().err.strip().splitlines()
    splits = BUILT_IN_SPLITS[name]
    has = f"splits {', '.join(splits)}" if len(splits) > 1 else f"one split, {splits[0]}"
    assert code == 2 and err == [f"error: data.split={missing}: {name} has {has}"]
    assert not run_dir.exists()
    with pytest.raises(UsageError, match=f"^data.split={missing}: {name} has {has}$"):
        compose_data(name, {"split": missing, "root": str(tmp_path)})  # metrics' real images


def test_a_data_set_has_its_default_split_unless_it_declares_more() -> None:
    build = get_dataset("procedural").build
    assert DataSet(name="x", build=build).splits == (DataConfig().split,) == ("train",)
    assert DataSet(name="x", build=build, defaults={"split": "test"}).splits == ("test",)
    assert DataSet(name="x", build=build, splits=["train", "val"]).splits == ("train", "val")
    for splits in (("test",), ("train", "unlabeled")):
        with pytest.raises(ValueError, match="must be among data.split's values"):
            DataSet(name="x", build=build, splits=splits)


def test_a_data_set_without_a_description_is_summarised_from_its_preset() -> None:
    build = get_dataset("procedural").build
    assert DataSet(name="x", build=build, defaults={"resolution": 48}).summary == \
        "48 px, 0 classes"  # no num_classes: unlabelled, as DataConfig's default
    assert DataSet(name="x", build=build).summary == "? px, 0 classes"
    assert DataSet(name="x", build=build, description="mine").summary == "mine"


def test_the_split_check_runs_before_a_data_set_s_own_configure_hook(tmp_path: Path) -> None:
    # The folder's configure would refuse the missing folder; the split is refused first.
    missing = f"data.root={tmp_path / 'nothing'}"
    with pytest.raises(UsageError, match="^data.split=test: folder has one split, train$"):
        compose(["data=folder", missing, "data.split=test"])
    with pytest.raises(UsageError, match="nothing"):
        compose(["data=folder", missing])


def test_a_run_saved_with_a_split_its_data_set_lacks_loads_but_its_data_is_refused() -> None:
    # Saved before splits were checked: sampling (no data) works, building the data says how on.
    saved = OmegaConf.to_container(compose(["data=procedural"]))
    saved["data"]["split"] = "test"
    data = compose_saved(saved, "config.yaml").data
    with pytest.raises(UsageError, match=r"^data.split=test: procedural has one split, train "
                                         r"\(a run saved with it: set data.split in its"):
        build_dataset(data)


def test_a_hand_made_data_section_without_a_split_gets_the_data_set_s_default() -> None:
    testonly = DataSet(name="testonly", build=lambda data: ["an image"],
                       defaults={"split": "test"})
    register_dataset(testonly)
    try:
        assert build_dataset(OmegaConf.create({"name": "testonly"})) == ["an image"]
    finally:
        DATASETS._items.pop("testonly")


def test_the_batch_defaults_to_the_family_s_for_the_data_resolution() -> None:
    from sagan_plugin.registry import get_model

    per_resolution = get_model("sagan").defaults["batch_size"]
    for name in ("procedural", "celeba_64", "celeba_128"):
        cfg = compose([f"data={name}"])
        assert cfg.train.batch_size == per_resolution[cfg.data.resolution], name
    assert compose(["data=celeba_128", "train.batch_size=8"]).train.batch_size == 8


def test_a_data_section_alone_takes_the_given_fields_over_the_preset_and_checks_them() -> None:
    """compose_data, for scoring real images with no model: as data=NAME data.KEY=VALUE."""
    data = compose_data("procedural", {"resolution": 64, "size": 8})
    assert (data.resolution, data.size, data.num_classes) == (64, 8, 10)
    with pytest.raises(UsageError, match=r"^data.size must be at least 1, got 0$"):
        compose_data("procedural", {"size": 0})


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
    # It declared no splits: it has the default one, and its build never sees another.
    result = subprocess.run([sys.executable, "-m", "sagan_plugin", "train", "data=toyset",
                             "data.split=test", f"run_dir={tmp_path / 'run'}"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2 and not (tmp_path / "run").exists()
    assert result.stderr.strip() == "error: data.split=test: toyset has one split, train"
    result = subprocess.run([sys.executable, "-m", "sagan_plugin", "train", "--help"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "  toyset            a throw-away data set" in result.stdout
    assert "  cifar10           32 px, 10 classes" in result.stdout  # with the built-in ones
