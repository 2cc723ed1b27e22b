"""`sagan_plugin.metrics.evaluate`, Mimicry's `mmc.metrics.evaluate` call: the scores of
`sagan-plugin eval` for every step and seed, Mimicry's JSON, its skip-what-is-done rule, and
bad arguments refused before any work."""

import inspect
import json
import shutil

import numpy as np
import pytest
import torch
import torch_mimicry as mmc
from inception_helpers import converted_weights
from run_helpers import STEP, make_run

from sagan_plugin import cli, metrics
from sagan_plugin.checkpoint import checkpoint_path
from sagan_plugin.errors import UsageError
from sagan_plugin.metrics import mimicry
from sagan_plugin.metrics.features import FeatureExtractor
from sagan_plugin.metrics.real_stats import subset_features
from sagan_plugin.metrics.scores import frechet_distance
from sagan_plugin.registry import get_model
from sagan_plugin.sample import sample, to_uint8

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("inception_caches"),
              pytest.mark.filterwarnings("ignore:.*Inception features")]
N = 4
FAST = {"batch_size": 8, "device": "cpu", "verbose": False}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """make_run's tiny SAGAN with a second checkpoint, at 2 * STEP, of other weights."""
    run = make_run(tmp_path_factory.mktemp("mimicry") / "run")
    ckpt = torch.load(checkpoint_path(run, STEP), weights_only=True)
    ckpt["model_state_dict"] = {k: v * 0.8 if v.is_floating_point() else v
                                for k, v in ckpt["model_state_dict"].items()}
    ckpt["global_step"] = 2 * STEP
    torch.save(ckpt, checkpoint_path(run, 2 * STEP))
    return run


def sagan_netG():
    """What a Mimicry user builds by hand: make_run's architecture, fresh weights."""
    return get_model("sagan").build(32, 10, ngf=8)[0]


def cli_scores(run, tmp_path, seed, metric, weights, ema=False):
    out = tmp_path / f"cli_{seed}.json"
    ours = {"inception_score": "is"}.get(metric, metric)
    assert cli.main(["eval", f"run={run}", "steps=all", f"ema={ema}", f"seed={seed}", f"n={N}",
                     f"n_real={N}", f"metrics={ours}", "kid_subsets=2", "kid_subset_size=2",
                     "is_splits=2", "batch_size=8", "device=cpu", f"inception_weights={weights}",
                     f"out={out}"]) == 0
    return {row["step"]: row[ours] for row in json.loads(out.read_text())["rows"]}


COUNTS = {"fid": {"num_real_samples": N, "num_fake_samples": N},
          "kid": {"num_samples": N, "num_subsets": 2},
          "inception_score": {"num_samples": N, "splits": 2}}
FILES = {"fid": "fid_0k_0k.json", "kid": "kid_0k.json",  # Mimicry's names
         "inception_score": "inception_score_0k.json"}


@pytest.mark.parametrize("metric", COUNTS)
def test_every_step_and_seed_scores_as_sagan_plugin_eval(run, tmp_path, metric, full_weights):
    scores = metrics.evaluate(metric, sagan_netG(), run, evaluate_range=(STEP, 2 * STEP, STEP),
                              num_runs=2, start_seed=3, dataset="procedural",
                              inception_weights=full_weights, **COUNTS[metric], **FAST)
    by_seed = [cli_scores(run, tmp_path, seed, metric, full_weights) for seed in (3, 4)]
    expected = {step: [by_seed[0][step], by_seed[1][step]] for step in (STEP, 2 * STEP)}
    assert scores == expected
    assert len({v for values in scores.values() for v in values}) == 4  # steps, seeds differ
    saved = json.loads((run / "eval" / FILES[metric]).read_text())  # Mimicry's layout
    assert saved == {str(step): values for step, values in expected.items()}


def test_the_ema_weights_score_as_sagan_plugin_eval_scores_them(run, tmp_path):
    weights = converted_weights()
    scores = metrics.evaluate("fid", sagan_netG(), run, evaluate_step=STEP, ema=True, num_runs=1,
                              dataset="procedural", write_to_json=False,
                              **COUNTS["fid"], **FAST)
    assert scores[STEP] == [cli_scores(run, tmp_path, 0, "fid", weights, ema=True)[STEP]]
    assert scores[STEP] != [cli_scores(run, tmp_path, 0, "fid", weights)[STEP]]  # not G's


def test_a_mimicry_generator_scores_as_a_direct_computation(tmp_path):
    # Mimicry's own unconditional net (no num_classes attribute), its own checkpoint.
    torch.manual_seed(1)
    netG = mmc.nets.sngan.SNGANGenerator32(ngf=16)
    netG.save_checkpoint(str(tmp_path / "log" / "checkpoints" / "netG"), 500)
    scores = metrics.evaluate("fid", mmc.nets.sngan.SNGANGenerator32(ngf=16), tmp_path / "log",
                              evaluate_step=500, num_runs=1, dataset="procedural",
                              num_real_samples=N, num_fake_samples=N, **FAST)
    extractor = FeatureExtractor(device="cpu", batch_size=8)
    fake = extractor.extract([to_uint8(sample(netG.eval(), N, seed=0))]).features
    real = subset_features(get_dataset_images("procedural"), N, extractor)
    assert scores[500] == [pytest.approx(frechet_distance(fake, real.astype(np.float64)),
                                         rel=1e-9)]


def get_dataset_images(name):
    from sagan_plugin.config import compose_data
    from sagan_plugin.data import build_dataset

    return build_dataset(compose_data(name))


def test_saved_steps_are_skipped_and_overwrite_scores_them_again(run, tmp_path, monkeypatch):
    log = tmp_path / "log"
    shutil.copytree(run, log, ignore=shutil.ignore_patterns("eval"))  # no scores yet
    calls = []
    real_generator_features = mimicry.generator_features
    monkeypatch.setattr(mimicry, "generator_features",
                        lambda *a, **k: calls.append(1) or real_generator_features(*a, **k))
    args = dict(evaluate_step=STEP, num_runs=1, dataset="procedural", num_samples=N,
                num_subsets=2, **FAST)
    first = metrics.evaluate("kid", sagan_netG(), log, **args)
    assert metrics.evaluate("kid", sagan_netG(), log, **args) == first and len(calls) == 1
    assert metrics.evaluate("kid", sagan_netG(), log, overwrite=True, **args) == first
    assert len(calls) == 2


class Images(torch.utils.data.Dataset):
    """A user's own data set, as Mimicry takes one: (image in [-1, 1], label) items."""

    def __init__(self, n=16):
        self.images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0


def test_a_dataset_object_keeps_its_features_in_stats_file(run, tmp_path, monkeypatch):
    args = dict(evaluate_step=STEP, num_runs=1, dataset=Images(), num_real_samples=N,
                num_fake_samples=N, write_to_json=False, **FAST)
    first = metrics.evaluate("fid", sagan_netG(), run, stats_file=tmp_path / "fid_stats",
                             **args)  # a Path, as well as a str
    assert (tmp_path / "fid_stats.npz").is_file()  # Mimicry's rule: .npz is added
    monkeypatch.setattr(mimicry, "subset_features", lambda *a: pytest.fail("not from the file"))
    again = metrics.evaluate("fid", sagan_netG(), run, stats_file=str(tmp_path / "fid_stats.npz"),
                             **args)
    assert again == first


def foreign_stats(folder):
    path = folder / "tf_stats.npz"  # what Mimicry's TF FID keeps: another network's mu, sigma
    np.savez(path, mu=np.zeros(2048), sigma=np.eye(2))
    return str(path)


def without_ema(run, folder):
    """A copy of run whose checkpoints have no EMA weights (as Mimicry's Trainer writes)."""
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("eval"))
    for ckpt in (folder / "checkpoints" / "netG").iterdir():
        saved = torch.load(ckpt, weights_only=True)
        del saved["ema_state_dict"]
        torch.save(saved, ckpt)
    return folder


def saved_stats(folder, n, sha=None):
    """A features file as evaluate writes one, for n images by the weights of sha (default:
    the converted weights the tests use)."""
    from sagan_plugin.files import file_digest

    path = folder / "stats.npz"
    np.savez(path, features=np.zeros((n, 2048), np.float32), n=np.array(n),
             weights_sha256=np.array(sha or file_digest(converted_weights())))
    return path


def with_scores_file(run, folder, text):
    """A copy of run whose Mimicry scores file holds text."""
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("eval"))
    (folder / "eval").mkdir()
    (folder / "eval" / FILES["fid"]).write_text(text)
    return folder


# Each case: what to change in a good call, given the run and a scratch folder.
BAD = {
    "step and range": (lambda r, t: {"evaluate_range": (STEP, STEP, 1)}, "one of evaluate_step"),
    "no step": (lambda r, t: {"evaluate_step": None}, "one of evaluate_step"),
    "short range": (lambda r, t: {"evaluate_step": None, "evaluate_range": (1, 9)},
                    "tuple of ints"),
    "fid counts": (lambda r, t: {"num_fake_samples": None},
                   "FID needs num_real_samples= and num_fake_samples="),
    "metric": (lambda r, t: {"metric": "fids"},
               r"metric must be one of fid, kid, inception_score, got 'fids' \(str\)"),
    "kid count": (lambda r, t: {"metric": "kid"}, "KID needs num_samples="),
    "log_dir": (lambda r, t: {"log_dir": t / "nowhere"}, "has no checkpoint folder"),
    "data set name": (lambda r, t: {"dataset": "imagenet"}, "unknown data set 'imagenet'"),
    "no data set": (lambda r, t: {"dataset": None}, "FID and KID need dataset="),
    "no stats_file": (lambda r, t: {"dataset": Images()}, "a Dataset object needs stats_file="),
    "TF stats_file": (lambda r, t: {"dataset": Images(), "stats_file": foreign_stats(t)},
                      "not a sagan-plugin features file"),
    "data field": (lambda r, t: {"data": {"sizee": 3}}, "unknown key 'data.sizee'"),
    "resolution": (lambda r, t: {"netG": get_model("sagan").build(64, 10, ngf=8)[0]},
                   r"makes \(3, 64, 64\) images but data set procedural has \(3, 32, 32\)"),
    "classes": (lambda r, t: {"netG": get_model("sagan").build(32, 3, ngf=8)[0]},
                "the generator has 3 classes but data set procedural has 10"),
    "width": (lambda r, t: {"netG": get_model("sagan").build(32, 10, ngf=16)[0],
                            "write_to_json": False}, "does not fit SAGANGenerator32"),
    "no IS logits": (lambda r, t: {"metric": "inception_score", "num_samples": N,
                                   "write_to_json": False}, "Inception Score is unavailable"),
    "no EMA": (lambda r, t: {"ema": True, "log_dir": without_ema(r, t / "mimicry_run")},
               "holds no EMA weights"),
    "KID subsets": (lambda r, t: {"metric": "kid", "num_samples": N, "num_subsets": 3},
                    r"^num_subsets=3: KID's subsets of num_samples // num_subsets = 1 images "
                    "need at least 2$"),
    "stats of other n": (lambda r, t: {"dataset": Images(), "stats_file": saved_stats(t, N + 1),
                                       "write_to_json": False},  # a step scored before too
                         f"holds features of {N + 1} images by Inception weights "),
    "stats of other weights": (lambda r, t: {"dataset": Images(), "write_to_json": False,
                                             "stats_file": saved_stats(t, N, "0" * 64)},
                               f"holds features of {N} images by Inception weights 000000000000;"
                               f" this asks for {N} by "),
    "scores file": (lambda r, t: {"log_dir": with_scores_file(r, t / "log", "{not json")},
                    "is not a file of scores"),
    "data with a Dataset": (lambda r, t: {"dataset": Images(), "stats_file": t / "stats",
                                          "data": {"root": str(t)}},
                            "^data= sets fields of a named data set; dataset is a Dataset "
                            "object$"),
    "more real images": (lambda r, t: {"data": {"size": N}, "num_real_samples": N + 1},
                         f"^{N + 1} real images asked of data set procedural, which has {N}$"),
}


def files_under(*folders):
    return sorted(p for folder in folders for p in folder.rglob("*") if "cache" not in p.parts)


@pytest.mark.parametrize("case", BAD)
def test_bad_arguments_are_one_line_errors_and_write_nothing(run, tmp_path, case):
    change, message = BAD[case]
    args = dict(metric="fid", netG=sagan_netG(), log_dir=run, evaluate_step=STEP,
                dataset="procedural", num_real_samples=N, num_fake_samples=N, **FAST)
    args.update(change(run, tmp_path))
    before = files_under(tmp_path, run)
    state = {k: v.clone() for k, v in args["netG"].state_dict().items()}
    with pytest.raises(UsageError, match=message) as error:
        metrics.evaluate(**args)
    assert "\n" not in str(error.value)
    assert files_under(tmp_path, run) == before
    if case not in ("width", "no IS logits"):  # refused before any checkpoint was loaded:
        assert args["netG"].training  # the caller's net is as it was
        for key, value in args["netG"].state_dict().items():
            assert torch.equal(value, state[key]), key


def test_each_step_s_scores_are_saved_before_the_next_step_is_scored(run, tmp_path,
                                                                      monkeypatch):
    """An evaluation stopped between checkpoints keeps the steps it scored (and skips them when
    it is run again)."""
    log = tmp_path / "log"
    shutil.copytree(run, log, ignore=shutil.ignore_patterns("eval"))
    restore = mimicry._restore

    def stopped_at_the_second_step(netG, path, ema):
        if path == checkpoint_path(log, 2 * STEP):
            raise KeyboardInterrupt
        restore(netG, path, ema)

    monkeypatch.setattr(mimicry, "_restore", stopped_at_the_second_step)
    with pytest.raises(KeyboardInterrupt):
        metrics.evaluate("fid", sagan_netG(), log, evaluate_range=(STEP, 2 * STEP, STEP),
                         num_runs=1, dataset="procedural", **COUNTS["fid"], **FAST)
    saved = json.loads((log / "eval" / FILES["fid"]).read_text())
    assert list(saved) == [str(STEP)] and len(saved[str(STEP)]) == 1


# Each case: arguments of a wrong type (or a count out of range), the argument named and what
# the message shows of the value given.
WRONG_TYPES = [
    ({"num_real_samples": "20"}, "num_real_samples", "'20' (str)"),
    ({"num_fake_samples": 20.0}, "num_fake_samples", "20.0 (float)"),
    ({"num_fake_samples": True}, "num_fake_samples", "True (bool)"),
    ({"evaluate_step": "6"}, "evaluate_step", "'6' (str)"),
    ({"evaluate_step": None, "evaluate_range": [STEP, STEP, 1]}, "evaluate_range",
     f"[{STEP}, {STEP}, 1] (list)"),
    ({"evaluate_step": None, "evaluate_range": (STEP, STEP, False)}, "evaluate_range",
     f"({STEP}, {STEP}, False) (tuple)"),
    ({"netG": None}, "netG", "None (NoneType)"),
    ({"netG": torch.nn.Sequential(torch.nn.Linear(2, 2))}, "netG", "a Sequential"),  # no nz
    ({"log_dir": None}, "log_dir", "None (NoneType)"),
    ({"data": "./datasets"}, "data", "'./datasets' (str)"),
    ({"dataset": 10}, "dataset", "10 (int)"),
    ({"metric": ["fid"]}, "metric", "['fid'] (list)"),
    ({"num_runs": True}, "num_runs", "True (bool)"),
    ({"num_runs": 0}, "num_runs", "0 (int)"),
    ({"start_seed": -1}, "start_seed", "-1 (int)"),
    ({"start_seed": 1.0}, "start_seed", "1.0 (float)"),
    ({"num_subsets": "2"}, "num_subsets", "'2' (str)"),
    ({"splits": None}, "splits", "None (NoneType)"),
    ({"batch_size": 0}, "batch_size", "0 (int)"),
    ({"ema": "false"}, "ema", "'false' (str)"),
    ({"overwrite": 1}, "overwrite", "1 (int)"),
    ({"write_to_json": None}, "write_to_json", "None (NoneType)"),
    ({"verbose": 0}, "verbose", "0 (int)"),
    ({"stats_file": 5}, "stats_file", "5 (int)"),
    ({"feat_file": b"feats.npz"}, "feat_file", "b'feats.npz' (bytes)"),
    ({"inception_weights": ["w.pth"]}, "inception_weights", "['w.pth'] (list)"),
    ({"device": 0}, "device", "0 (int)"),
]


@pytest.mark.parametrize("change, name, shown", WRONG_TYPES,
                         ids=[f"{name}={shown}" for _, name, shown in WRONG_TYPES])
def test_arguments_of_a_wrong_type_are_refused_before_any_work(run, tmp_path, monkeypatch,
                                                                 change, name, shown):
    log = tmp_path / "log"
    shutil.copytree(run, log, ignore=shutil.ignore_patterns("eval"))  # no scores yet
    for step in ("checkpoint_dir", "read_checkpoint", "generator_features", "FeatureExtractor"):
        monkeypatch.setattr(mimicry, step, lambda *a, **k: pytest.fail("work began"))
    args = dict(metric="fid", netG=sagan_netG(), log_dir=log, evaluate_step=STEP,
                dataset="procedural", num_real_samples=N, num_fake_samples=N, **FAST)
    before = files_under(tmp_path)
    with pytest.raises(UsageError) as error:
        metrics.evaluate(**{**args, **change})
    message = str(error.value)
    assert message.startswith(f"{name} must be ") and message.endswith(f", got {shown}")
    assert "\n" not in message
    assert not (log / "eval").exists() and files_under(tmp_path) == before


def test_every_argument_has_a_rule():
    assert list(mimicry.ARGUMENTS) == list(inspect.signature(metrics.evaluate).parameters)


def test_numpy_integers_are_ints_here(run):
    """Counts and steps often come from numpy (a sweep's arange, a loaded config)."""
    import numpy as np

    args = {name: param.default for name, param in
            inspect.signature(metrics.evaluate).parameters.items()}
    args.update(metric="fid", netG=sagan_netG(), log_dir=run, evaluate_step=np.int64(STEP),
                num_real_samples=np.int32(N), num_fake_samples=np.int64(N),
                start_seed=np.uint8(1), batch_size=np.int64(10))
    mimicry._check_arguments(args)  # raises on a refusal


def test_score_files_are_named_as_mimicry_names_them():
    """Mimicry's own files are fid_{real}k_{fake}k.json and {metric}_{n}k.json: ours must match."""
    assert mimicry._sample_counts("fid", None, 10000, 5000) == (5000, 10000, "fid_10k_5k.json")
    assert mimicry._sample_counts("kid", 3000, None, None) == (3000, 3000, "kid_3k.json")
    assert mimicry._sample_counts("inception_score", 2000, None, None) == (
        2000, None, "inception_score_2k.json")
