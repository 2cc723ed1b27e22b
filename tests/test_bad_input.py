"""Bad input to every command: a one-line error naming what was wrong, exit 2, nothing written.

One table, run in this process (the commands are functions), so that hundreds of cases stay
cheap. {run} is a tiny, valid run folder; the other {names} are damaged copies of it, or paths
that cannot be written (see `places`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from run_helpers import STEP, make_run, overridden
from test_checkpoint import folder_contents

from sagan_plugin.checkpoint import checkpoint_path
from sagan_plugin.cli import main as cli
from sagan_plugin.config import build_models, compose, compose_saved

# A training run small enough to be over at once if a case were wrongly accepted.
TRAIN = ["model=sagan", "data=procedural", "model.ngf=4", "model.ndf=4", "train.batch_size=4",
         "data.size=16", "data.num_workers=0", "train.steps=1", "run_dir={tmp}/new_run"]

TRAIN_CASES = [
    # ranges of the schema
    (["train.lr_g=-1"], "train.lr_g must be a positive number, got -1.0"),
    (["train.lr_d=0"], "train.lr_d must be a positive number"),
    (["train.lr_g=nan"], "train.lr_g must be a positive number, got nan"),
    (["train.lr_g=inf"], "train.lr_g must be a positive number"),
    (["train.beta1=2"], "train.beta1 must be in [0, 1), got 2.0"),
    (["train.beta2=1"], "train.beta2 must be in [0, 1)"),
    (["train.beta1=-0.5"], "train.beta1 must be in [0, 1)"),
    (["model.ngf=0"], "model.ngf must be in [1, 1048576], got 0"),
    (["model.ndf=-3"], "model.ndf must be in [1, 1048576]"),
    (["model.nz=0"], "model.nz must be in [1, 1048576]"),
    (["train.bn_group=0"], "train.bn_group must be at least 1"),
    (["train.bn_group=3"], "train.bn_group=3 must divide the batch each process trains on, 4, "
                           "or be at least it"),
    (["model=sngan", "model.ngf=8", "model.ndf=8", "train.bn_group=2"],
     "train.bn_group: model sngan has none of this package's batch norms"),
    (["model.ngf=1000000"], "its weights do not fit in memory"),
    (["model.ngf=10000000000000000000"], "model.ngf must be in [1, 1048576], got "
                                         "10000000000000000000"),  # torch's error: no key
    (["train.seed=123456789012345678901"], "train.seed must be an integer in [0, 2^63 - 1]"),
    (["train.seed=-1"], "train.seed must be an integer in [0, 2^63 - 1], got -1"),
    (["train.ema_start=-1"], "train.ema_start must be at least 0"),
    (["train.ema_decay=1.5"], "train.ema_decay must be in (0, 1)"),
    (["train.ema_decay=0"], "train.ema_decay must be in (0, 1)"),
    (["model.loss_type=bogus"], "model.loss_type must be one of gan, ns, hinge, wasserstein"),
    (["data.split=bogus"], "data.split must be one of train, test, val"),
    (["data.size=-1"], "data.size must be at least 1"),
    (["data.num_workers=-1"], "data.num_workers must be at least 0"),
    (["data.num_classes=-3"], "data.num_classes must be at least 0"),
    (["data.resolution=0"], "data.resolution must be at least 1"),
    (["data.fit=crop"], "data.fit must be one of pad, resize"),
    (["data.crop=circle"], "data.crop must be one of square, mimicry"),
    (["train.fid_n=0"], "train.fid_n must be at least 2"),
    (["train.fid_every=-2"], "train.fid_every must be at least 0"),
    (["train.steps=0"], "train.steps must be at least 1"),
    (["train.batch_size=0"], "train.batch_size must be at least 1"),
    (["train.n_dis=0"], "train.n_dis must be at least 1"),
    (["train.log_steps=0"], "train.log_steps must be at least 1"),
    (["train.lr_decay=cosine"], "train.lr_decay must be null or linear"),
    (["train.precision=fp16"], "train.precision must be one of fp32, bf16"),
    (["train.sdpa_backend=bogus"], "train.sdpa_backend must be one of auto, flash"),
    (["train.device=tpu"], "train.device='tpu' is not a device"),
    (["model.bn_decay=1.5"], "model.bn_decay must be in [0, 1)"),
    (["model.bn_out_decay=1"], "model.bn_out_decay must be in [0, 1)"),
    (["model.attention=-1"], "model.attention must be at least 0"),
    (["model.attention=7"], "attention at 7x7 is not possible"),
    (["model.num_classes=-1"], "model.num_classes must be at least 0"),
    # names, keys and types
    (["model=nope"], "unknown model 'nope'; registered models: cgan_pd, dcgan"),
    (["data=nope"], "unknown data set 'nope'; registered data sets:"),
    (["train.stepz=3"], "unknown key 'train.stepz'"),
    (["train.steps=abc"], "bad value for train.steps"),
    (["train.steps"], "expected key=value"),
    (["n=16"], "unknown key 'n' in override; keys of the top level: model, data, train"),
    # model= and data= choose a section with its presets; renaming it alone would mismatch them
    (["model.name=sngan"], "model.name is not an override: model=sngan chooses the model "
                           "family, with its presets"),
    (["data.name=celeba_64"], "data.name is not an override: data=celeba_64 chooses the data set"),
    (["run_dir="], "run_dir= has no value: expected run_dir=VALUE"),
    # interpolations resolve with the overrides: their errors are a bad value's
    (["train.steps=${{nope}}"], "bad value for train.steps in override: Interpolation key 'nope' "
                              "not found"),
    (["train.lr_g=${{oc.env:HOME}}"], "bad value for train.lr_g in override: While dereferencing"),
    (["train.seed=${{train.seed}}"], "bad value for train.seed in override: Recursive"),
    (["data.classes={{a:1}}"], "bad value for data.classes in override: Cannot merge incompatible"),
    (["run_dir=[1,2]"], "bad value for run_dir in override: Cannot convert 'ListConfig' to string"),
    (["run_dir={{a:1}}"], "bad value for run_dir in override"),
    (["model.nz=99999999999999999999999"], "model.nz must be in [1, 1048576]"),
    (["model="], "model= has no value"),
    (["data=fashion_mnist", "data.root="], "data.root= has no value"),
    (["data=stl10_48"], "model sagan does not support 48x48 images"),
    (["data=fashion_mnist", "model.num_classes=5", "data.root={tmp}"],
     "does not match data fashion_mnist"),
    (["model=sngan", "model.num_classes=10"], "model sngan is unconditional"),
    (["model=cgan_pd", "data=lsun_bedroom_128"], "class-conditional but data"),
    (["train.batch_size=100000"], "fewer than one batch"),
    (["model.g_attention=7"], "G attention at 7x7 is not possible"),
    (["data.resolution=64"], "cannot build model sagan: D attention at 32x32 has 1*ndf channels, "
                             "which must be a multiple of 8: ndf (model.ndf) must be a multiple "
                             "of 8, got 4"),
    (["data=cifar10", "data.root=/nonexistent"], "expected /nonexistent/cifar10/"),
    (["data=imagenet_128", "data.root=/nonexistent"], "meta.bin"),
    (["data=fashion_mnist", "data.root=/nonexistent", "data.fit=resize", "data.resolution=24"],
     "model sagan does not support 24x24"),
    (["train.device=cuda:7"] if not torch.cuda.is_available() else ["train.seed=-2"],
     "no usable GPU" if not torch.cuda.is_available() else "train.seed must be"),
    # the run folder
    (["run_dir=/proc/sagan_run"], "cannot write to run folder /proc/sagan_run"),
    (["run_dir={file}"], "cannot write to run folder {file}: {file} is not a folder"),
    (["run_dir={file}/run"], "cannot write to run folder {file}/run: {file} is not a folder"),
    (["run_dir={bad_yaml}"], "bad_yaml/config.yaml: "),
    (["run_dir={list_yaml}"], "is not a run configuration: expected a mapping"),
    # one reading of each key: as its type, and given once
    (["train.compile=5"], "train.compile=5 is not a boolean: expected true or false"),
    (["train.deterministic=-1"], "train.deterministic=-1 is not a boolean"),
    (["train.compile=true", "train.compile=false"], "train: train.compile is given twice "
     "(train.compile=true and train.compile=false); give it once"),
    (["model=sagan", "model=sngan"], "train: model is given twice"),
]

RUN_CASES = [
    # sample
    ("sample", ["n=0"], "sample: n must be at least 1, got 0"),
    ("sample", ["ema=2"], "sample: ema=2 is not a boolean: expected true or false"),
    ("sample", ["n=4", "n=8"], "sample: n is given twice (n=4 and n=8); give it once"),
    ("sample", ["n=1000000000000"], "a grid of n=1000000000000 images needs about"),
    ("sample", ["n=1000000000000", "out={tmp}/many/"], "PNG files need at least"),
    ("sample", ["seed=-1"], "sample: seed must be an integer in [0, 2^63 - 1], got -1"),
    ("sample", ["seed=123456789012345678901"], "seed must be an integer in [0, 2^63 - 1]"),
    ("sample", ["batch=0"], "batch must be at least 1"),
    ("sample", ["step=-1"], "step must be at least 0"),
    ("sample", ["step=99"], "has no checkpoint at step 99"),
    ("sample", ["class=99"], "class 99 is out of range"),
    ("sample", ["out={file}/x.png"], "{file} is not a folder"),
    ("sample", ["out=/proc/x.png"], "cannot write"),
    ("sample", ["out={tmp}/x.jpg"], "must end in .png"),
    ("sample", ["out="], "sample: out= has no value"),
    ("sample", ["classes=,"], "sample: cannot parse 'run="),
    ("sample", ["n=${{{{x}}}}"], "token recognition error at: '{{'"),
    ("sample", ["n=${{n}}"], "sample: bad override for n: Recursive interpolation detected"),
    ("sample", ["run=${{nope}}"],
     "sample: bad override for run: Interpolation key 'nope' not found"),
    ("sample", ["seed=${{oc.env:HOME}}"], "sample: bad override for seed: While dereferencing"),
    # a run folder with config.yaml: its model is the saved one, not one given again
    ("sample", ["model=sagan"], "config.yaml: leave out model=sagan (data.KEY=VALUE may"),
    ("sample", ["model.ngf=16"], "leave out model.ngf=16"),
    # eval
    ("eval", ["metrics="], "eval: metrics= has no value"),
    ("eval", ["data.root="], "data.root= has no value"),
    ("eval", ["data.name=celeba_64"], "data.name is not an override: data=celeba_64 chooses"),
    ("eval", ["metrics=[]"], "is not a list of fid, kid, is"),
    ("eval", ["metrics=bogus"], "metrics=bogus is not a list"),
    ("eval", ["steps=,"], "did not find expected node content"),
    ("eval", ["metrics=5"], "metrics=5 is not a list of fid, kid, is"),
    ("eval", ["metrics=true"], "metrics=True is not a list of fid, kid, is"),
    ("eval", ["n=${{nope}}"], "eval: bad override for n: Interpolation key 'nope' not found"),
    ("eval", ["n=1"], "eval: n must be at least 2, got 1"),
    ("eval", ["n=1000000000000"], "n=1000000000000 (Inception features) needs about"),
    ("eval", ["n_real=0"], "eval: n_real must be at least 2"),
    ("eval", ["seed=-4"], "eval: seed must be an integer"),
    ("eval", ["batch_size=0"], "eval: batch_size must be at least 1"),
    ("eval", ["kid_subsets=0"], "eval: kid_subsets must be at least 1"),
    ("eval", ["kid_subset_size=1"], "eval: kid_subset_size must be at least 2"),
    ("eval", ["is_splits=0"], "eval: is_splits must be at least 1"),
    ("eval", ["steps=bogus"], "steps=bogus: expected last, all"),
    ("eval", ["steps=5-2"], "steps=5-2: the first step is after the last"),
    ("eval", ["device=tpu"], "device='tpu' is not a device"),
    ("eval", ["out=/proc/x.json"], "cannot write"),
    ("eval", ["out={file}/x.json"], "cannot write"),
    ("eval", ["out={tmp}"], "out={tmp} is a folder; expected a file path"),
    ("eval", ["out={tmp}/new/"], "out={tmp}/new/ names a folder; expected a file path"),
    ("eval", ["stats_cache={file}"], "output directory {file}: {file} is not a folder"),
    # export
    ("export", ["format=onnx"], "export: format must be one of torchscript, aoti"),
    ("export", ["step=${{oc.decode:5}}"], "export: bad override for step: TypeError raised while"),
    ("export", ["step=999"], "has no checkpoint at step 999"),
    ("export", ["out=/proc/x.pt"], "cannot write"),
    ("export", ["out={file}/g.pt"], "cannot write"),
    ("export", ["out={tmp}/g.onnx"], "must end in .pt"),
    ("export", ["out={pt_folder}"], "out={pt_folder} is a folder; expected a file path"),
    ("export", ["out={sidecar_taken}"], "out's sidecar={sidecar_taken}.json is a folder"),
    ("export", ["max_batch=8"], "max_batch applies to format=aoti only (TorchScript takes any"),
    ("export", ["format=aoti", "max_batch=4"], "export: max_batch must be in [5, 65536], got 4"),
    ("export", ["format=aoti", "max_batch=65537"], "max_batch must be in [5, 65536], got 65537"),
    # viz
    ("viz", ["what=bogus"], "what=bogus: expected grid, attention"),
    ("viz", ["scale=${{nope}}"], "viz: bad override for scale: Interpolation key 'nope' not found"),
    ("viz", ["per_class=0"], "viz: per_class must be at least 1"),
    ("viz", ["images=0"], "viz: images must be at least 1"),
    ("viz", ["images=100000000"], "attention maps of images=100000000 needs about"),
    ("viz", ["scale=0"], "viz: scale must be at least 1"),
    ("viz", ["queries=bad"], "queries='bad': expected y,x pairs"),
    ("viz", ["queries=2,2"], "expected y,x pairs in [0, 1]"),
    ("viz", ["seed=-1"], "viz: seed must be an integer"),
    ("viz", ["classes=99"], "the model has 10 classes"),
    ("viz", ["out=/proc/viz"], "cannot write to output directory /proc/viz"),
    ("viz", ["out={file}"], "cannot write to output directory"),
]

# Damaged or foreign run folders: every command that reads one says what is wrong with it.
FOLDER_CASES = [
    ("bad_yaml", "bad_yaml/config.yaml: while parsing a flow sequence"),  # YAML's first line
    ("list_yaml", "list_yaml/config.yaml is not a run configuration: expected a mapping"),
    ("no_model_section", "needs a model section with a name"),
    ("impossible_model", "unknown model 'nogan'"),
    ("impossible_width", "config.yaml: model.ngf must be in [1, 1048576]"),
    ("unknown_key", "unknown key 'train.colour'"),
    ("interpolated_steps", "interpolated_steps/config.yaml: Interpolation key 'nope' not found"),
    ("mapping_for_classes", "bad value for data.classes in "),
    ("list_run_dir", "bad value for run_dir in "),
    ("null_train", "null_train/config.yaml is not a run configuration: its train section must "
                   "be a mapping of keys, got None"),
    ("list_ema_checkpoint", "is not a checkpoint: ema_state_dict must be a dict (or null), got "
                            "list"),
    ("str_model_checkpoint", "is not a checkpoint: model must be a dict (or null), got str"),
    ("list_checkpoint", "is not a checkpoint: it holds a list"),
    ("tensor_checkpoint", "is not a checkpoint: it holds a Tensor"),
    ("keyless_checkpoint", "is not a checkpoint: it has no model_state_dict"),
    ("garbage_checkpoint", "cannot read checkpoint"),
    ("half_checkpoint", f"half_checkpoint/checkpoints/netG/netG_{STEP}_steps.pth: a damaged or "
                        "incomplete file (PytorchStreamReader failed reading zip archive: "
                        "failed finding central directory)"),
    ("cut_checkpoint", f"netG_{STEP}_steps.pth: a damaged or incomplete file ([Errno 22]"),
    ("text_checkpoint", "not tensors and plain values (a damaged file, or another kind"),
    ("text_step_checkpoint", "is not a checkpoint: model_state_dict must be a dict and "
                             "global_step an integer"),
    ("empty_checkpoints", "has no checkpoint under"),
    ("generator_only", "without both netG and netD files"),
    ("other_resolution", "is a checkpoint of another model"),
    ("other_family", "does not fit model=sagan at 32x32 with 10 classes: size mismatch for"),
    ("no_folder", "does not exist: expected a run folder or a netG checkpoint"),
    ("discriminator", "is a discriminator checkpoint: give the run folder or its netG"),
    ("config_file", "config.yaml is not a netG checkpoint of a run folder: expected "
                    "RUN/checkpoints/netG/netG_<step>_steps.pth"),
]


OUT = {"sample": "grid.png", "eval": "scores.json", "export": "generator.pt", "viz": "viz"}


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    """A valid run, damaged copies of it, and a plain file."""
    root = tmp_path_factory.mktemp("bad_input")
    run = make_run(root / "run", 10)
    _, netD = build_models(compose_saved(yaml.safe_load((run / "config.yaml").read_text()),
                                         "config"))
    checkpoint_path(run, STEP, "netD").parent.mkdir()
    torch.save({"model_state_dict": netD.state_dict(), "optimizer_state_dict": {},
                "global_step": STEP}, checkpoint_path(run, STEP, "netD"))
    places = {"run": run, "file": root / "plain_file"}
    places["file"].write_text("not a folder\n")
    places["pt_folder"] = root / "folder.pt"
    places["pt_folder"].mkdir()
    places["sidecar_taken"] = root / "sidecar_taken.pt"
    Path(f"{places['sidecar_taken']}.json").mkdir()
    config = yaml.safe_load((run / "config.yaml").read_text())
    ckpt = torch.load(checkpoint_path(run, STEP), weights_only=True)

    def damaged(name: str, config_text: str | None = None, checkpoint: object = None) -> None:
        folder = root / name
        shutil.copytree(run, folder)
        if config_text is not None:
            (folder / "config.yaml").write_text(config_text)
        if checkpoint is not None:
            if isinstance(checkpoint, bytes):
                checkpoint_path(folder, STEP).write_bytes(checkpoint)
            else:
                torch.save(checkpoint, checkpoint_path(folder, STEP))
        places[name] = folder

    def edited(**sections: dict) -> str:
        changed = {k: dict(v) for k, v in config.items() if isinstance(v, dict)}
        for section, values in sections.items():
            changed.setdefault(section, {}).update(values)
        return yaml.safe_dump(changed)

    damaged("bad_yaml", "model: [unclosed\n")
    damaged("list_yaml", "- model\n- data\n")
    damaged("no_model_section", yaml.safe_dump({"data": config["data"]}))
    damaged("impossible_model", edited(model={"name": "nogan"}))
    damaged("impossible_width", edited(model={"ngf": 0}))
    damaged("unknown_key", edited(train={"colour": "blue"}))
    damaged("interpolated_steps", edited(train={"steps": "${nope}"}))
    damaged("mapping_for_classes", edited(data={"classes": {"a": 1}}))
    damaged("list_run_dir", edited() + "run_dir: [1]\n")
    damaged("null_train", edited() + "train: null\n")
    damaged("list_ema_checkpoint", checkpoint={**ckpt, "ema_state_dict": [1]})
    damaged("str_model_checkpoint", checkpoint={**ckpt, "model": "sagan"})
    damaged("list_checkpoint", checkpoint=[1, 2, 3])
    damaged("tensor_checkpoint", checkpoint=torch.zeros(3))
    damaged("keyless_checkpoint", checkpoint={"weights": {}})
    damaged("garbage_checkpoint", checkpoint=b"PK\x03\x04 not a zip at all")
    damaged("text_checkpoint", checkpoint=b"hello, not a checkpoint\n")
    damaged("text_step_checkpoint", checkpoint={**ckpt, "global_step": str(STEP)})
    whole = checkpoint_path(run, STEP).read_bytes()
    damaged("half_checkpoint", checkpoint=whole[: len(whole) // 2])
    damaged("cut_checkpoint", checkpoint=whole[:5000])  # torch's reader seeks before its start
    damaged("other_resolution", checkpoint={**ckpt, "model": {
        "name": "sagan", "resolution": 64, "num_classes": 10}})
    damaged("other_family", edited(model={"ngf": 16}))  # a config that the weights do not fit
    damaged("empty_checkpoints")
    for net in ("netG", "netD"):
        shutil.rmtree(root / "empty_checkpoints" / "checkpoints" / net)
    damaged("generator_only")
    checkpoint_path(root / "generator_only", STEP, "netD").unlink()
    places["no_folder"] = root / "no_such_run"
    places["discriminator"] = checkpoint_path(run, STEP, "netD")
    places["config_file"] = run / "config.yaml"
    return places


def _refused(argv: list[str], message: str, places: dict[str, Path], tmp: Path,
             capsys: pytest.CaptureFixture) -> None:
    argv = [a.format(tmp=tmp, **places) for a in argv]
    before = sorted(tmp.rglob("*"))
    capsys.readouterr()
    assert cli(argv) == 2, f"accepted: {argv}"
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert message.format(tmp=tmp, **places) in err, err
    assert sorted(tmp.rglob("*")) == before, "something was written"


@pytest.mark.parametrize("args, message", TRAIN_CASES, ids=[" ".join(a) for a, _ in TRAIN_CASES])
def test_bad_training_input(args: list[str], message: str, places: dict[str, Path],
                            tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _refused(["train", *overridden(TRAIN, args)], message, places, tmp_path, capsys)


@pytest.mark.parametrize("command, args, message", RUN_CASES,
                         ids=[f"{c} {' '.join(a)}" for c, a, _ in RUN_CASES])
def test_bad_input_to_commands_that_read_a_run(command: str, args: list[str], message: str,
                                               places: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = [] if any(a.startswith("out=") for a in args) else [f"out={tmp_path}/{OUT[command]}"]
    if command == "eval":
        out.append("inception_weights={file}")  # no Inception loads if a case is let through
    _refused([command, *overridden(["run={run}", *out], args)], message, places, tmp_path,
             capsys)


@pytest.mark.parametrize("command", ["sample", "eval", "export", "viz", "train"])
@pytest.mark.parametrize("folder, message", FOLDER_CASES, ids=[f for f, _ in FOLDER_CASES])
def test_damaged_or_foreign_run_folders(command: str, folder: str, message: str,
                                        places: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    if command == "train":
        if folder in ("no_folder", "empty_checkpoints", "other_family", "discriminator",
                      "config_file"):
            pytest.skip("a new run, or another configuration: train's own cases")
        argv = ["train", "model=sagan", "data=procedural", "model.ngf=8",
                f"run_dir={places[folder]}", "train.steps=9", "data.num_workers=0"]
        before = folder_contents(places[folder])
        _refused(argv, message, places, tmp_path, capsys)
        assert folder_contents(places[folder]) == before, "the run folder was changed"
        return
    elif folder == "generator_only":
        pytest.skip("G's checkpoint is all that sampling needs")
    else:
        argv = [command, f"run={places[folder]}", f"out={tmp_path}/{OUT[command]}"]
        if command == "eval":
            argv.append("inception_weights={file}")
    _refused(argv, message, places, tmp_path, capsys)


def test_the_closed_ends_of_each_range_are_accepted() -> None:
    """The cases above sit just outside each range; these sit on its edge."""
    cfg = compose(["train.seed=9223372036854775807", "train.ema_start=0", "train.fid_every=0",
                   "train.fid_n=2", "train.beta1=0", "model.bn_decay=0", "model.attention=0",
                   "data.num_workers=0", "data.num_classes=0", "model.num_classes=0"])
    assert cfg.train.seed == 2**63 - 1
    assert (cfg.train.ema_start, cfg.train.fid_every, cfg.train.fid_n) == (0, 0, 2)
    assert (cfg.train.beta1, cfg.model.bn_decay, cfg.model.attention) == (0, 0, 0)
    assert (cfg.data.num_workers, cfg.model.num_classes) == (0, 0)


def test_what_needs_more_than_half_the_free_memory_is_refused(monkeypatch) -> None:
    from sagan_plugin import machine
    from sagan_plugin.errors import UsageError

    kib = next(int(line.split()[1]) for line in open("/proc/meminfo")
               if line.startswith("MemAvailable:"))
    assert abs(machine.available_memory() - kib * 1024) < 0.1 * kib * 1024  # bytes, not kB
    monkeypatch.setattr(machine, "available_memory", lambda: 4 * 2**30)
    machine.require_memory(2 * 2**30, "n=4")  # half: fits
    with pytest.raises(UsageError) as error:
        machine.require_memory(2 * 2**30 + 1, "n=4")
    assert str(error.value) == ("n=4 needs about 2 GiB of memory, more than half of the 4 GiB "
                                "this machine has free")


def test_a_damaged_latest_checkpoint_names_the_step_before_it(places: dict[str, Path],
                                                              tmp_path: Path,
                                                              capsys: pytest.CaptureFixture
                                                              ) -> None:
    run = tmp_path / "two_steps"
    shutil.copytree(places["run"], run)
    whole = checkpoint_path(run, STEP).read_bytes()
    checkpoint_path(run, 2 * STEP).write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()
    assert cli(["sample", f"run={run}", "n=2", f"out={tmp_path}/grid.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"a damaged or incomplete file (PytorchStreamReader failed reading zip "
                        f"archive: failed finding central directory); step={STEP} reads the one "
                        f"before it"), err
    assert cli(["sample", f"run={run}", "n=2", f"step={STEP}", f"out={tmp_path}/grid.png"]) == 0


def test_a_checkpoint_file_with_another_step_is_refused(places: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """step= picks a checkpoint of a run folder: with a checkpoint file it would be ignored."""
    ckpt = checkpoint_path(places["run"], STEP)
    for command, out in (("sample", "grid.png"), ("export", "g.pt"), ("viz", "viz")):
        _refused([command, f"run={ckpt}", f"step={STEP + 1}", f"out={tmp_path}/{out}"],
                 f"{ckpt} is one checkpoint file: leave out step={STEP + 1}", places, tmp_path,
                 capsys)
    assert cli(["sample", f"run={ckpt}", f"step={STEP}", f"out={tmp_path}/grid.png"]) == 0


def test_a_checkpoint_without_optimizer_state_is_refused_on_resuming(
        places: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """make_run's checkpoints hold an empty optimizer state, as a damaged file could."""
    run = tmp_path / "run"
    shutil.copytree(places["run"], run)
    before = folder_contents(run)
    capsys.readouterr()
    assert cli(["train", f"run_dir={run}", f"train.steps={STEP + 2}", "data.num_workers=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert f"the checkpoint of step {STEP} in {run} holds no usable optimizer state" in err, err
    assert folder_contents(run) == before
