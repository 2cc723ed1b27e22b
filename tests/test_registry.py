"""The model-family registry: built-ins, a third-party distribution, unknown names."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sagan_plugin.errors import UsageError
from sagan_plugin.registry import ENTRY_POINT_GROUP, ModelFamily, get_model, list_models

BUILT_IN = {"sagan", "sngan", "cgan_pd", "ssgan", "infomax_gan", "wgan_gp", "dcgan",
            "mimicry_sagan"}


def test_built_in_families_are_registered() -> None:
    assert BUILT_IN <= set(list_models())
    for name in BUILT_IN:
        family = get_model(name)
        assert isinstance(family, ModelFamily) and family.name == name
        assert {"model", "train", "batch_size"} <= set(family.defaults)


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_built_in_families_build_host_models(name: str) -> None:
    from sagan_plugin.host import gan

    family = get_model(name)
    num_classes = 0 if family.conditional is False else 10
    netG, netD = family.build(32, num_classes, **family.defaults["model"])
    assert isinstance(netG, gan.BaseGenerator) and isinstance(netD, gan.BaseDiscriminator)


def test_unknown_model_lists_registered_ones() -> None:
    with pytest.raises(UsageError, match="unknown model 'nope'.*sagan.*sngan"):
        get_model("nope")
    with pytest.raises(UsageError, match="^unknown model 'SAGAN'; registered models: "):
        get_model("SAGAN")  # names are exact: model=SAGAN is not model=sagan


@pytest.mark.parametrize("name, resolution, num_classes, message", [
    ("sagan", "32", 10, "model sagan: resolution must be an int, one of 32, 64, 128; got '32'"),
    ("sagan", 32.0, 10, "model sagan: resolution must be an int, one of 32, 64, 128; got 32.0"),
    ("sagan", 48, 10, "model sagan does not support 48x48 images; supported: 32, 64, 128"),
    ("sagan", 32, -1, "model sagan: num_classes must be an int at least 0 (0: unconditional), "
                      "got -1"),
    ("sagan", 32, "10", "model sagan: num_classes must be an int at least 0 (0: unconditional), "
                        "got '10'"),
    ("cgan_pd", 32, 0, "model cgan_pd: num_classes must be an int at least 1 (the family is "
                       "class-conditional), got 0"),
])
def test_bad_build_arguments_are_usage_errors(name, resolution, num_classes, message) -> None:
    with pytest.raises(UsageError) as error:
        get_model(name).build(resolution, num_classes, ngf=8, ndf=8)
    assert str(error.value) == message


def test_a_misspelt_width_names_the_arguments_a_build_takes() -> None:
    """Not Python's TypeError about a private function."""
    with pytest.raises(UsageError) as error:
        get_model("sagan").build(32, 10, ngff=16)
    assert str(error.value) == (
        "model sagan: unknown argument ngff; it takes nz, ngf, ndf, attention, g_attention, "
        "d_attention, loss_type, bn_decay, bn_out_decay")


def _distribution(root: Path, module: str, source: str, entry_points: str) -> None:
    """A distribution of one module, declaring entry_points ("name = module:OBJECT" lines)
    under the group: what pip would install, found on PYTHONPATH=root."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = root / f"{module}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_points}\n")


def test_third_party_distribution_is_discovered(tmp_path: Path) -> None:
    """A distribution on sys.path that declares the entry point shows up, no code change."""
    _distribution(tmp_path, "toy_gan", """
        from sagan_plugin.registry import ModelFamily
        from sagan_plugin.families import SNGAN

        TOY = ModelFamily(name="toygan", build=SNGAN.build, resolutions=(32,),
                          conditional=False, description="a throw-away family",
                          defaults=SNGAN.defaults)
    """, "toygan = toy_gan:TOY")
    code = ("from sagan_plugin.registry import get_model, list_models; "
            "assert 'toygan' in list_models(); f = get_model('toygan'); "
            "G, D = f.build(32, 0); print(type(G).__name__, f.description)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SNGANGenerator32 a throw-away family"
    # ... and it is selectable by name on the command line.
    result = subprocess.run([sys.executable, "-m", "sagan_plugin", "train", "--help"],
                            capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert "toygan" in result.stdout and "a throw-away family" in result.stdout


def test_a_broken_distribution_is_skipped_and_named_when_asked_for(tmp_path: Path) -> None:
    """One bad plugin leaves every other family usable; asking for it gives its fault."""
    _distribution(tmp_path, "broken_gan", """
        from sagan_plugin.datasets import DataSet

        BAD = DataSet(name="bad", build=print, splits=("holdout",))  # fails on import
    """, "badgan = broken_gan:BAD")
    _distribution(tmp_path, "odd_gan", "NOT_A_FAMILY = 42\n", "notgan = odd_gan:NOT_A_FAMILY")
    _distribution(tmp_path, "misnamed_gan", """
        from sagan_plugin.registry import ModelFamily
        from sagan_plugin.families import SNGAN

        OTHER = ModelFamily(name="othergan", build=SNGAN.build, resolutions=(32,))
    """, "wronggan = misnamed_gan:OTHER")
    # Run from tmp_path, the checkout under test stays first on the path (not the install's).
    env = {"PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[1]}",
           "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sagan_plugin", *args],
                              capture_output=True, text=True, env=env, cwd=tmp_path)

    result = cli("train", "model=badgan", f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 2 and not (tmp_path / "run").exists(), result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: model 'badgan': entry point badgan = broken_gan:BAD "
                            "(mimicry.models) does not load: ValueError: data set bad: splits "
                            "('holdout',) must be among"), error
    result = cli("train", "--help")
    assert result.returncode == 0 and "  sagan  " in result.stdout, result.stderr
    assert "badgan" not in result.stdout and "skipped entry point badgan" in result.stderr
    assert ("skipped entry point notgan = odd_gan:NOT_A_FAMILY (mimicry.models) is not a "
            "ModelFamily named 'notgan'") in result.stderr
    # An entry point must name the family it loads: neither name is taken by it.
    assert ("skipped entry point wronggan = misnamed_gan:OTHER (mimicry.models) is not a "
            "ModelFamily named 'wronggan'") in result.stderr
    assert "othergan" not in result.stdout and "wronggan" not in result.stdout


def test_a_registered_family_pickles_as_itself_and_builds_in_a_spawned_process() -> None:
    import multiprocessing
    import pickle

    family = get_model("sagan")
    assert pickle.loads(pickle.dumps(family)) is family
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # what a worker receives
        assert pool.apply(_generator_class, (family,)) == "SAGANGenerator32"
    stranger = ModelFamily(name="sagan", build=family.build, resolutions=(32,))
    with pytest.raises(pickle.PicklingError, match="'sagan' is not the registered one"):
        pickle.dumps(stranger)


def _generator_class(family: ModelFamily) -> str:
    return type(family.build(32, 10, ngf=8, ndf=8)[0]).__name__


def test_register_refuses_a_taken_name() -> None:
    from sagan_plugin.registry import register_model

    clash = ModelFamily(name="sagan", build=get_model("sngan").build, resolutions=(32,))
    with pytest.raises(ValueError, match="already registered"):
        register_model(clash)


def _plain_build(resolution: int, num_classes: int, nz: int = 128, ngf: int = 256,
                 ndf: int = 128, loss_type: str = "hinge"):
    """A third-party build as the README describes it: Mimicry's nets, nothing set on them."""
    from sagan_plugin.host import torch_mimicry

    nets = torch_mimicry.nets.sngan.sngan_32
    return (nets.SNGANGenerator32(nz=nz, ngf=ngf, loss_type=loss_type),
            nets.SNGANDiscriminator32(ndf=ndf, loss_type=loss_type))


@pytest.fixture
def plain_family():
    from sagan_plugin.registry import MODELS, register_model

    family = register_model(ModelFamily(name="plaingan", build=_plain_build, resolutions=(32,),
                                        conditional=False, defaults=get_model("sngan").defaults))
    yield family
    MODELS._items.pop(family.name)


def test_a_family_whose_build_sets_nothing_trains_samples_and_exports(plain_family, tmp_path):
    from sagan_plugin.cli import main

    netG, _ = plain_family.build(32, 10)
    assert (netG.resolution, netG.num_classes) == (32, 0)  # unconditional: its classes are 0
    with pytest.raises(UsageError, match="plaingan does not support 64x64 images; supported: 32"):
        plain_family.build(64, 0)
    run = tmp_path / "run"
    assert main(["train", "model=plaingan", "data=procedural", f"run_dir={run}", "model.ngf=8",
                 "model.ndf=8", "train.batch_size=4", "train.steps=2", "train.n_dis=1",
                 "data.size=16", "data.num_workers=0"]) == 0
    assert main(["sample", f"run={run}", "n=4", f"out={tmp_path}/grid.png"]) == 0
    assert (tmp_path / "grid.png").is_file()
    assert main(["export", f"run={run}", "format=torchscript", f"out={tmp_path}/g.pt"]) == 0
    assert (tmp_path / "g.pt").is_file()


def test_model_widths_and_attention_reach_the_nets_they_name() -> None:
    """model.ngf / model.ndf of Mimicry's families, and SAGAN's g_/d_attention, each one net."""
    from sagan_plugin.nets import SelfAttention

    netG, netD = get_model("sngan").build(32, 0, ngf=8, ndf=16)
    assert (netG.ngf, netD.ndf) == (8, 16)

    def layers(net) -> int:
        return sum(isinstance(m, SelfAttention) for m in net.modules())

    sagan = get_model("sagan")
    assert [layers(n) for n in sagan.build(32, 0, ngf=8, ndf=8, attention=16)] == [1, 1]
    assert [layers(n) for n in sagan.build(32, 0, ngf=8, ndf=8, d_attention=0)] == [1, 0]
    assert [layers(n) for n in sagan.build(32, 0, ngf=8, ndf=8, g_attention=0)] == [0, 1]


def test_a_family_built_on_another_familys_build_keeps_its_own_resolutions():
    sngan = get_model("sngan")
    narrow = ModelFamily(name="narrow", build=sngan.build, resolutions=(32,), conditional=False)
    with pytest.raises(UsageError, match="narrow does not support 64x64"):
        narrow.build(64, 0)
    assert sngan.build(64, 0, ngf=32, ndf=32)[0].resolution == 64
