"""`sagan-plugin eval`: scores of a run agree with a direct computation on the images
`sagan-plugin sample` makes; JSON beside the run; bad input is a one-line error, exit 2."""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from conftest import run_cli
from run_helpers import STEP, make_run, overridden

from sagan_plugin import cli
from sagan_plugin.checkpoint import checkpoint_path, checkpoint_steps
from sagan_plugin.errors import UsageError
from sagan_plugin.evaluate import select_steps
from sagan_plugin.metrics.features import FeatureExtractor
from sagan_plugin.metrics.scores import frechet_distance, inception_score
from sagan_plugin.runs import load_generator
from sagan_plugin.sample import sample, to_uint8

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("inception_caches")]
SCORING = ["batch_size=8", "device=cpu", "kid_subsets=3", "kid_subset_size=4", "is_splits=2"]
FAST = ["n=4", "n_real=4", *SCORING]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("eval") / "run")


def _unscored_copy(run, copy):
    """The shared run without the reports earlier tests left in it."""
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval", "*_n4.json"))
    return copy


def _eval(capsys, *args):
    code = cli.main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_checkpoint_matches_a_direct_computation(run, full_weights, capsys):
    checkpoint = checkpoint_path(run, checkpoint_steps(run)[-1])
    with pytest.warns(UserWarning, match="below the 2048 Inception features"):
        code, out, err = _eval(capsys, f"run={checkpoint}", *FAST,
                               f"inception_weights={full_weights}")
    assert code == 0, err
    report = json.loads((checkpoint.parent / f"{checkpoint.stem}_ema_n4.json").read_text())
    row = report["rows"][0]
    assert row["step"] == checkpoint_steps(run)[-1] and row["ema"] is True
    assert report["inception"]["has_logits"] and report["is_unavailable"] is None
    assert f"{row['fid']:>12.6g}" in out
    assert row["kid_std"] is None and "kid_std n/a: kid_subset_size=4 takes every image" in out

    # The same images as `sagan-plugin sample n=4 seed=0`, scored by hand.
    netG = load_generator(run).netG
    extractor = FeatureExtractor(full_weights, device="cpu")
    fake = extractor.extract([to_uint8(sample(netG, 4, seed=0))])
    real = np.load(report["real_features"])["features"].astype(np.float64)
    assert row["fid"] == pytest.approx(frechet_distance(fake.features, real), rel=1e-6)
    assert row["is"] == pytest.approx(inception_score(fake.logits, 2)[0], rel=1e-6)
    assert row["kid"] is not None and row["fid"] > 0


def _with_a_second_step(run, folder) -> tuple:
    """A copy of run whose first checkpoint is also saved as step 2 x first: (copy, first)."""
    second = folder / "run"
    shutil.copytree(run, second)
    first_step = checkpoint_steps(second)[0]
    state = torch.load(checkpoint_path(second, first_step), weights_only=True)
    state["global_step"] = first_step * 2
    torch.save(state, checkpoint_path(second, first_step * 2))
    return second, first_step


def test_every_checkpoint_and_is_unavailable_without_the_classifier(run, tmp_path, capsys):
    second, first_step = _with_a_second_step(run, tmp_path)
    code, out, err = _eval(capsys, f"run={second}", *FAST, "steps=all", "ema=false",
                           "metrics=fid,is")
    assert code == 0, err
    report = json.loads((second / "eval" / "raw_n4.json").read_text())
    assert [r["step"] for r in report["rows"]] == [first_step, first_step * 2]
    assert all(r["ema"] is False and r["is"] is None for r in report["rows"])
    # Same weights saved twice: the same images, the same score.
    assert report["rows"][0]["fid"] == pytest.approx(report["rows"][1]["fid"], rel=1e-9)
    assert "IS unavailable" in out and "classifier" in report["is_unavailable"]
    assert report["inception"]["source"] == "explicit"


def test_the_default_report_of_a_run_without_ema_is_named_raw(run, tmp_path, capsys):
    """ema=true only prefers the EMA weights: the file name says what was scored."""
    plain = _unscored_copy(run, tmp_path / "run")
    checkpoint = checkpoint_path(plain, checkpoint_steps(plain)[-1])
    state = torch.load(checkpoint, weights_only=True)
    del state["ema_state_dict"]
    torch.save(state, checkpoint)

    def fids(*args: str) -> list[float]:
        code, out, err = _eval(capsys, *FAST, "metrics=fid", *args)
        assert code == 0, err
        assert sorted(p.name for p in (plain / "eval").iterdir()) == ["raw_n4.json"]
        rows = json.loads((plain / "eval" / "raw_n4.json").read_text())["rows"]
        assert all(row["ema"] is False for row in rows)
        return [row["fid"] for row in rows]

    assert fids(f"run={plain}") == pytest.approx(fids(f"run={plain}", "ema=false"), rel=1e-9)
    code, out, err = _eval(capsys, f"run={checkpoint}", *FAST, "metrics=fid")
    assert code == 0, err
    assert (checkpoint.parent / f"{checkpoint.stem}_raw_n4.json").is_file()
    assert not (checkpoint.parent / f"{checkpoint.stem}_ema_n4.json").exists()


@pytest.mark.parametrize("source", ["run", "images"])
def test_is_alone_without_the_classifier_is_refused_before_any_work(run, tmp_path, capsys,
                                                                     monkeypatch, recwarn,
                                                                     source):
    from sagan_plugin import evaluate
    from sagan_plugin.sample import write_images

    def no_work(*args, **kwargs):
        raise AssertionError("images were generated or read for an IS that cannot be scored")

    monkeypatch.setattr(evaluate, "generator_features", no_work)
    monkeypatch.setattr(evaluate, "folder_batches", no_work)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    images = tmp_path / "images"
    write_images(torch.zeros(2, 3, 16, 16), f"{images}/")
    before = sorted(tmp_path.rglob("*"))
    args = [f"run={copy}"] if source == "run" else [f"images={images}"]
    code, out, err = _eval(capsys, *args, *(FAST if source == "run" else SCORING), "metrics=is")
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert "metrics=is: the Inception Score is unavailable" in err
    assert "no 1008-way classifier" in err
    assert sorted(tmp_path.rglob("*")) == before  # no report, no eval/ folder
    small_n = [w for w in recwarn if "biased upwards" in str(w.message)]
    assert small_n == []  # n=4's small-n warning: not before an error


def test_another_steps_adds_rows_to_the_runs_report(run, tmp_path, capsys):
    second, first = _with_a_second_step(run, tmp_path)
    report = second / "eval" / "raw_n4.json"

    def scored_steps(*args: str) -> list[int]:
        code, out, err = _eval(capsys, f"run={second}", *FAST, "ema=false", "metrics=fid", *args)
        assert code == 0, err
        return [row["step"] for row in json.loads(report.read_text())["rows"]]

    assert scored_steps(f"steps={first * 2}") == [first * 2]
    assert scored_steps(f"steps={first}") == [first, first * 2]  # the earlier row is kept
    assert scored_steps(f"steps={first}", "seed=1") == [first]  # other settings: a new file


def test_eval_of_two_image_folders(tmp_path, capsys):
    from sagan_plugin.sample import write_images

    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    write_images(images[:3], f"{tmp_path / 'a'}/")
    write_images(images[3:], f"{tmp_path / 'b'}/")
    code, out, err = _eval(capsys, f"images={tmp_path / 'a'}", f"ref={tmp_path / 'b'}",
                           "metrics=fid", "device=cpu")
    assert code == 0, err
    report = json.loads((tmp_path / "a_eval.json").read_text())
    assert report["rows"][0]["fid"] > 0
    assert f"{report['rows'][0]['fid']:>12.6g}" in out  # the table on stdout too


@pytest.mark.parametrize("source, key, message", [
    ("images", "n=10", "images=DIR scores every file in it: leave out n=10 (keys of run=)"),
    ("images", "seed=1", "leave out seed=1 (keys of run=)"),
    ("images", "steps=all", "leave out steps=all (keys of run=)"),
    ("images", "ema=false", "leave out ema=false (keys of run=)"),
    ("images", "data.root={tmp}", "leave out data.root={tmp} (keys of run=)"),
    ("run", "ref={tmp}/a", "run= scores against the run's data set: leave out ref={tmp}/a"),
])
def test_a_key_the_other_source_reads_is_refused_not_ignored(run, tmp_path, capsys, source,
                                                             key, message):
    from sagan_plugin.sample import write_images

    write_images(torch.zeros(2, 3, 16, 16), f"{tmp_path / 'a'}/")
    before = sorted(tmp_path.rglob("*")) + sorted(run.rglob("*"))
    args = [f"run={run}", *FAST] if source == "run" else [f"images={tmp_path / 'a'}",
                                                          f"ref={tmp_path / 'a'}", *SCORING]
    code, out, err = _eval(capsys, *args, key.format(tmp=tmp_path))
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert message.format(tmp=tmp_path) in err, err
    assert sorted(tmp_path.rglob("*")) + sorted(run.rglob("*")) == before


@pytest.mark.parametrize("images, ref, message", [
    ("missing", "b", "image folder {tmp}/missing does not exist"),
    ("empty", "b", "no images (bmp, jpg, "),
    ("a", None, "FID and KID of images=DIR need ref=DIR"),
    ("a", "one", "ref=1: FID, KID and IS need at least 2 images"),
    ("a", "garbage", "cannot read image {tmp}/garbage/x.png: cannot identify image file"),
])
def test_bad_image_folders_fail_before_the_weights_load(tmp_path, capsys, images, ref, message):
    """Corrupt weights: had they been read first, the error would name them, not the folder."""
    from sagan_plugin.sample import write_images

    pictures = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    write_images(pictures[:3], f"{tmp_path / 'a'}/")
    write_images(pictures[:3], f"{tmp_path / 'b'}/")
    write_images(pictures[3:], f"{tmp_path / 'one'}/")
    (tmp_path / "empty").mkdir()
    shutil.copytree(tmp_path / "b", tmp_path / "garbage")
    (tmp_path / "garbage" / "x.png").write_text("not an image\n")
    corrupt = tmp_path / "weights.pth"
    corrupt.write_bytes(b"truncated")
    args = [f"images={tmp_path / images}", f"inception_weights={corrupt}", "device=cpu"]
    code, out, err = _eval(capsys, *args, *([f"ref={tmp_path / ref}"] if ref else []))
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert message.format(tmp=tmp_path) in err, err


@pytest.mark.parametrize("args, message", [
    (["n=1"], "n must be at least 2, got 1"),
    (["metrics=fid,precision"], "metrics=fid,precision is not a list of fid, kid, is"),
    (["data.resolution=64"], "model.resolution=32 does not match data procedural (64x64)"),
    (["data.num_classes=5"], "model.num_classes=10 does not match data procedural (5 classes)"),
    (["steps=100-200"], "steps=100-200: no checkpoint was saved from step 100 to 200; saved: 7"),
    (["inception_weights=/nonexistent/w.pth"], "/nonexistent/w.pth does not exist"),
    (["inception_weights=/tmp"], "Inception weights file /tmp is a folder"),
    (["colour=blue"], "eval: unknown key 'colour'; keys: run, images, ref, metrics, n, "),
    (["step=7"], "eval: unknown key 'step' (did you mean steps?); keys: run, "),
    (["data.colour=blue"], "unknown key 'data.colour'"),
])
def test_bad_input_is_a_one_line_error(run, capsys, args, message):
    code, _, err = _eval(capsys, f"run={run}", *overridden(FAST, args))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err


@pytest.mark.parametrize("spec, message", [
    ("4,5", "steps=4,5: no checkpoint was saved at step 5; saved: 2, 4, 6"),
    ("3,4,5", "steps=3,4,5: no checkpoint was saved at steps 3, 5; saved: 2, 4, 6"),
    ("10-20", "steps=10-20: no checkpoint was saved from step 10 to 20; saved: 2, 4, 6"),
])
def test_steps_without_a_checkpoint_are_named(spec, message):
    """A step or list names steps that must all be saved; a range takes the saved ones in it."""
    with pytest.raises(UsageError) as error:
        select_steps([2, 4, 6], spec)
    assert str(error.value) == message
    assert select_steps([2, 4, 6], "3-5") == [4] and select_steps([2, 4, 6], "4,6") == [4, 6]


def test_the_small_n_warning_comes_once_per_count(run, tmp_path, capsys, recwarn):
    """Once each for n and n_real, not again when the real statistics are computed or read."""
    warnings.simplefilter("always")  # recwarn's "default" would hide a repeat from one line
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for _ in range(2):  # the second run reads the cached real statistics
        recwarn.clear()
        code, out, err = _eval(capsys, f"run={copy}", *FAST, "metrics=fid")
        assert code == 0, err
        small_n = sorted(str(w.message).split(" is")[0] for w in recwarn
                         if "below the 2048" in str(w.message))
        assert small_n == ["n=4", "n_real=4"]


def test_small_n_warnings_point_at_the_callers_line(run, recwarn):
    """From Python (Mimicry's metrics.evaluate, fid_callback) the warning names the user's
    file, not the line inside the package that raised it."""
    from omegaconf import OmegaConf

    from sagan_plugin import metrics
    from sagan_plugin.metrics.scoring import fid_callback

    netG = load_generator(run).netG
    # No checkpoint at STEP + 1: nothing is scored, the counts are checked all the same.
    metrics.evaluate("fid", netG, run, evaluate_step=STEP + 1, dataset="procedural",
                     num_real_samples=4, num_fake_samples=4, write_to_json=False, verbose=False)
    fid_callback(OmegaConf.load(run / "config.yaml").data, every=1, n=3)
    small_n = [w for w in recwarn if "below the 2048" in str(w.message)]
    assert [str(w.message).split(" is")[0] for w in small_n] == [
        "num_fake_samples=4", "num_real_samples=4", "n=3"]
    assert {w.filename for w in small_n} == {__file__}


def test_the_small_n_warning_is_for_fid_alone(run, tmp_path, recwarn):
    """KID is unbiased at any n: scoring it alone warns of FID's bias nowhere, and Mimicry's
    call names the argument it was given (num_samples)."""
    from omegaconf import OmegaConf

    from sagan_plugin import metrics
    from sagan_plugin.metrics.scoring import fid_callback

    warnings.simplefilter("always")
    netG = load_generator(run).netG
    for metric in ("kid", "fid"):
        kwargs = ({"num_samples": 40} if metric == "kid"
                  else {"num_real_samples": 40, "num_fake_samples": 40})
        metrics.evaluate(metric, netG, run, evaluate_step=STEP + 1, dataset="procedural",
                         write_to_json=False, verbose=False, **kwargs)
    fid_callback(OmegaConf.load(run / "config.yaml").data, every=1, n=3, metrics=("kid",))
    out = tmp_path / "kid.json"
    assert cli.main(["eval", f"run={run}", *FAST, "metrics=kid", f"out={out}"]) == 0
    small_n = [str(w.message).split(" is")[0] for w in recwarn
               if "below the 2048" in str(w.message)]
    assert small_n == ["num_fake_samples=40", "num_real_samples=40"]


def test_missing_weights_fail_before_the_small_n_warning(run, recwarn, capsys):
    """Outside pytest a warning is printed to stderr: the error must come alone."""
    code, _, err = _eval(capsys, f"run={run}", *FAST, "inception_weights=/nonexistent/w.pth")
    assert code == 2 and "does not exist" in err
    assert [str(w.message) for w in recwarn] == []


def test_bad_weights_and_empty_runs_are_one_line_errors(run, tmp_path, capsys):
    corrupt = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    corrupt.write_bytes(b"truncated")
    empty_run = tmp_path / "empty"
    empty_run.mkdir()
    for args, message in [
        ([f"run={run}", f"inception_weights={corrupt}"], "is corrupt"),
        ([f"run={empty_run}"], "has no checkpoint"),
        ([], "give run=<run folder or checkpoint> or images=<folder>"),
    ]:
        code, _, err = _eval(capsys, *args)
        assert (code, err.count("\n")) == (2, 1) and message in err, err


def test_fid_callback_scores_every_k_steps_and_restores_training_mode(run, tmp_path):
    from omegaconf import OmegaConf

    from sagan_plugin.metrics.scoring import fid_callback

    netG = load_generator(run).netG.train()
    data = OmegaConf.merge(OmegaConf.load(run / "config.yaml").data, {"size": 8})
    with pytest.warns(UserWarning, match="below the 2048"):
        callback = fid_callback(data, every=2, n=3, metrics=("fid", "kid"), device="cpu",
                                stats_cache=str(tmp_path))
    assert callback(netG, 1) is None
    scores = callback(netG, 2)
    # n=3 is one KID subset: its spread is undefined and not logged (no kid_std of ~1e-16)
    assert set(scores) == {"fid", "kid"} and scores["fid"] > 0
    assert netG.training
    assert len(list(tmp_path.glob("*.npz"))) == 1  # real features cached for the next calls


def test_a_full_disk_skips_the_cache_with_a_warning_and_refuses_a_half_report(run, tmp_path):
    cache = tmp_path / "cache" / "real_stats"  # inception_caches' folder
    report = run / "eval" / "ema_n4.json"
    report.unlink(missing_ok=True)
    # Room for the report (about 1 kB), not for the real features (4 x 2048 float32).
    result = run_cli("eval", f"run={run}", *FAST, "metrics=fid", max_file_bytes=5_000)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "could not cache the real-image features in" in result.stderr
    assert "File too large; they will be computed again next time" in result.stderr
    assert json.loads(report.read_text())["rows"][0]["fid"] > 0
    assert list(cache.iterdir()) == []

    report.unlink()
    result = run_cli("eval", f"run={run}", *FAST, "metrics=fid", max_file_bytes=200)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: {report}: File too large"
    assert list(report.parent.iterdir()) == [] and list(cache.iterdir()) == []


def test_steps_last_is_the_newest_saved_step_and_a_range_includes_both_ends():
    """steps=last scores the newest checkpoint; first-last is inclusive, and first == last
    names one step."""
    assert select_steps([2, 4, 6], "last") == [6]
    assert select_steps([2, 4, 6], "all") == [2, 4, 6]
    assert select_steps([2, 4, 6], "2-6") == [2, 4, 6]
    assert select_steps([2, 4, 6], "4-4") == [4]


def test_the_default_steps_score_the_runs_newest_checkpoint(run, tmp_path, capsys):
    second, first = _with_a_second_step(run, tmp_path)
    code, out, err = _eval(capsys, f"run={second}", *FAST, "ema=false", "metrics=fid")
    assert code == 0, err
    rows = json.loads((second / "eval" / "raw_n4.json").read_text())["rows"]
    assert [row["step"] for row in rows] == [first * 2]


def test_a_checkpoint_file_is_scored_at_its_step_and_refuses_steps(run, tmp_path, capsys):
    """steps= chooses among a run folder's checkpoints: given with a checkpoint file it would
    be ignored, so it is refused, and nothing is written."""
    second, first = _with_a_second_step(run, tmp_path)
    checkpoint = checkpoint_path(second, first)
    before = sorted(second.rglob("*"))
    code, out, err = _eval(capsys, f"run={checkpoint}", *FAST, "ema=false", "metrics=fid",
                           "steps=all")
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert f"eval: run={checkpoint} is one checkpoint file: leave out steps=all (it picks the " \
           "checkpoints of a run folder)" in err
    assert sorted(second.rglob("*")) == before
    code, out, err = _eval(capsys, f"run={checkpoint}", *FAST, "ema=false", "metrics=fid")
    assert code == 0, err
    report = json.loads((checkpoint.parent / f"{checkpoint.stem}_raw_n4.json").read_text())
    assert [row["step"] for row in report["rows"]] == [first]


def test_n_real_and_seed_set_the_images_compared(run, tmp_path, capsys, recwarn):
    """n_real real images against n generated from noise seed: each key reaches its side."""
    warnings.simplefilter("always")
    copy = _unscored_copy(run, tmp_path / "run")
    code, out, err = _eval(capsys, f"run={copy}", "n=4", "n_real=5", "seed=3", *SCORING,
                           "ema=false", "metrics=fid")
    assert code == 0, err
    small_n = sorted(str(w.message).split(" is")[0] for w in recwarn
                     if "below the 2048" in str(w.message))
    assert small_n == ["n=4", "n_real=5"]
    report = json.loads((copy / "eval" / "raw_n4.json").read_text())
    real = np.load(report["real_features"])["features"].astype(np.float64)
    assert real.shape == (5, 2048)
    netG = load_generator(copy, prefer_ema=False).netG
    fake = FeatureExtractor(None, device="cpu").extract([to_uint8(sample(netG, 4, seed=3))])
    assert report["rows"][0]["fid"] == pytest.approx(frechet_distance(fake.features, real),
                                                     rel=1e-6)


def test_scoring_a_step_again_replaces_its_row(run, tmp_path, capsys):
    copy = _unscored_copy(run, tmp_path / "run")
    for _ in range(2):
        code, out, err = _eval(capsys, f"run={copy}", *FAST, "ema=false", "metrics=fid")
        assert code == 0, err
    rows = json.loads((copy / "eval" / "raw_n4.json").read_text())["rows"]
    assert [row["step"] for row in rows] == [STEP]


def test_rows_scored_with_other_inception_weights_are_not_kept(run, tmp_path, capsys,
                                                               monkeypatch, full_weights):
    """The same settings (inception_weights=null) can mean other weights: their sha256 tells."""
    second, first = _with_a_second_step(run, tmp_path)
    report = second / "eval" / "raw_n4.json"
    args = [f"run={second}", *FAST, "ema=false", "metrics=fid"]
    assert _eval(capsys, *args, f"steps={first}")[0] == 0
    monkeypatch.setenv("SAGAN_INCEPTION_WEIGHTS", str(full_weights))
    assert _eval(capsys, *args, f"steps={first * 2}")[0] == 0
    assert [row["step"] for row in json.loads(report.read_text())["rows"]] == [first * 2]


def test_an_explicit_out_file_is_written_afresh(run, tmp_path, capsys):
    """Only a run's default report gathers the rows of earlier steps=; out=FILE holds this
    command's rows alone."""
    second, first = _with_a_second_step(run, tmp_path)
    out_file = tmp_path / "scores.json"
    args = [f"run={second}", *FAST, "ema=false", "metrics=fid", f"out={out_file}"]
    assert _eval(capsys, *args, f"steps={first}")[0] == 0
    assert _eval(capsys, *args, f"steps={first * 2}")[0] == 0
    assert [row["step"] for row in json.loads(out_file.read_text())["rows"]] == [first * 2]


def test_images_dir_with_a_slash_reports_beside_the_folder(tmp_path, capsys):
    from sagan_plugin.sample import write_images

    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    write_images(images[:2], f"{tmp_path / 'a'}/")
    write_images(images[2:], f"{tmp_path / 'b'}/")
    before = sorted((tmp_path / "a").iterdir())
    code, out, err = _eval(capsys, f"images={tmp_path / 'a'}/", f"ref={tmp_path / 'b'}",
                           "metrics=fid", "device=cpu")
    assert code == 0, err
    assert (tmp_path / "a_eval.json").is_file()
    assert sorted((tmp_path / "a").iterdir()) == before


@pytest.mark.parametrize("earlier", ["{\"rows\": [", "[1, 2]"])
def test_a_damaged_earlier_report_is_written_afresh(run, tmp_path, capsys, earlier):
    """A report cut short by a crash, or not a mapping, has no rows to keep: not an error."""
    copy = _unscored_copy(run, tmp_path / "run")
    (copy / "eval").mkdir()
    (copy / "eval" / "raw_n4.json").write_text(earlier)
    code, out, err = _eval(capsys, f"run={copy}", *FAST, "ema=false", "metrics=fid")
    assert code == 0, err
    rows = json.loads((copy / "eval" / "raw_n4.json").read_text())["rows"]
    assert [row["step"] for row in rows] == [STEP]
