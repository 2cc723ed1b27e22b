"""The study runner (`sagan-plugin compare`): runs, resume, results, pictures, README tables."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from sagan_plugin import study as study_module
from sagan_plugin import study_report, study_runs
from sagan_plugin.cli import main as cli
from sagan_plugin.files import check_output_file, write_json, write_together
from sagan_plugin.study_report import (
    CURVE_SIZE,
    FIGURE_DPI,
    GAMMA_SIZE,
    SAMPLE_ROW_HEIGHT,
    SAMPLES_WIDTH,
    readme_block,
    results_table,
    summarize,
    update_readme,
)

REPO = Path(__file__).resolve().parents[1]
RUN_FIELDS = {"configuration", "group", "seed", "model", "num_classes", "argv", "n", "commit",
              "step", "ema", "fid", "kid", "kid_std", "batch_size", "n_dis", "generator_steps",
              "d_real_images", "train_seconds", "g_steps_per_s", "d_images_per_s", "params_G",
              "params_D", "curve", "gamma", "trained_at"}
SUMMARY_FIELDS = {"configuration", "group", "model", "num_classes", "seeds", "fid_mean",
                  "fid_std", "kid_mean", "kid_std", "generator_steps", "d_real_images",
                  "batch_size", "n_dis", "g_steps_per_s", "train_seconds_mean", "params_G",
                  "params_D"}


def _compare(*args: str) -> int:
    return cli(["compare", *args])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """The smoke study (3 configurations x 2 seeds, 2 steps, procedural data), run once."""
    root = tmp_path_factory.mktemp("study")
    assert _compare("study=smoke", f"runs={root / 'runs'}", f"out={root / 'results'}") == 0
    return root


def test_results_have_every_field_and_seeds_differ(smoke: Path) -> None:
    payload = json.loads((smoke / "results" / "smoke" / "study.json").read_text())
    assert {"study", "settings", "command", "machine", "commit", "date", "budget", "summary",
            "runs"} <= payload.keys()
    assert payload["machine"]["torch"] and payload["machine"]["cpu"]
    assert len(payload["runs"]) == 6 and len(payload["summary"]) == 3
    for run in payload["runs"]:
        assert RUN_FIELDS <= run.keys(), RUN_FIELDS - run.keys()
        assert run["generator_steps"] == 2 and run["step"] == 2
        assert [step for step, _ in run["curve"]] == [1, 2]
        assert run["d_real_images"] == 2 * run["n_dis"] * 4
        assert run["commit"] == payload["commit"]  # one invocation scored them all
        assert run["trained_at"] == [payload["commit"]]  # and trained them
    by_name = {(r["configuration"], r["seed"]): r for r in payload["runs"]}
    assert by_name[("sagan", 0)]["fid"] != by_name[("sagan", 1)]["fid"]
    assert len(by_name[("sagan", 0)]["gamma"]["G"]) == 2
    assert by_name[("sagan_no_attention", 0)]["gamma"]["G"] == []  # attention removed
    assert by_name[("sngan", 0)]["n_dis"] == 5  # Mimicry's preset: 5 D steps per G step
    for row in payload["summary"]:
        assert SUMMARY_FIELDS <= row.keys() and row["seeds"] == 2


def test_pictures_have_the_expected_sizes(smoke: Path) -> None:
    folder = smoke / "results" / "smoke"

    def pixels(size: tuple[float, float]) -> tuple[int, int]:
        return round(size[0] * FIGURE_DPI), round(size[1] * FIGURE_DPI)

    assert Image.open(folder / "fid_curve.png").size == pixels(CURVE_SIZE)
    assert Image.open(folder / "gamma.png").size == pixels(GAMMA_SIZE)
    # one row per configuration
    assert Image.open(folder / "samples.png").size == pixels((SAMPLES_WIDTH,
                                                              3 * SAMPLE_ROW_HEIGHT))


def test_finished_runs_are_not_retrained_and_interrupted_ones_continue(
        smoke: Path, capsys: pytest.CaptureFixture) -> None:
    runs, results = smoke / "runs" / "smoke", smoke / "results"
    # An interruption after the checkpoint of step 1: no result file, no step-2 checkpoint.
    interrupted = runs / "sngan_s1"
    (interrupted / study_runs.RESULT_FILE).unlink()
    for net in ("netG", "netD"):
        (interrupted / "checkpoints" / net / f"{net}_2_steps.pth").unlink()
    finished = runs / "sagan_s0" / "checkpoints" / "netG" / "netG_2_steps.pth"
    mtime = finished.stat().st_mtime_ns
    capsys.readouterr()
    assert _compare("study=smoke", f"runs={smoke / 'runs'}", f"out={results}") == 0
    out = capsys.readouterr().out
    assert out.count("done before") == 5
    assert "restored the checkpoint of step 1" in out
    assert finished.stat().st_mtime_ns == mtime
    assert (interrupted / "checkpoints" / "netG" / "netG_2_steps.pth").is_file()


def test_readme_blocks_are_rendered_from_the_json(smoke: Path) -> None:
    payload = json.loads((smoke / "results" / "smoke" / "study.json").read_text())
    text = "intro\n<!-- study:smoke -->\nold table\n<!-- /study -->\nend\n"
    updated = update_readme(text, [payload])
    assert updated == f"intro\n{readme_block(payload)}\nend\n"
    assert "| conditional | sagan |" in updated and "old table" not in updated
    with pytest.raises(ValueError, match="no <!-- study:smoke -->"):
        update_readme("no block", [payload])


def test_table_shows_the_seed_spread_only_when_there_is_one(smoke: Path) -> None:
    payload = json.loads((smoke / "results" / "smoke" / "study.json").read_text())
    row = payload["summary"][0]
    two_seeds = results_table(payload)
    assert f"| {row['fid_mean']:.2f} ± {row['fid_std']:.2f} |" in two_seeds
    assert "standard deviation over 2 seeds" in two_seeds
    payload["settings"]["seeds"] = 1
    for summary in payload["summary"]:
        summary["seeds"] = 1
    one_seed = results_table(payload)
    assert "±" not in one_seed.splitlines()[2] and f"| {row['fid_mean']:.2f} |" in one_seed
    assert ", one seed," in one_seed


def _tree(folder: Path) -> dict[str, tuple[int, bytes | None]]:
    """Everything under folder: modification time, and the bytes of each file."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns,
                                         p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def test_a_report_that_cannot_be_written_whole_writes_nothing(
        smoke: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A folder in the place of study.json: refused before a picture is replaced."""
    out = tmp_path / "results"
    shutil.copytree(smoke / "results" / "smoke", out / "smoke",
                    ignore=shutil.ignore_patterns("study.json"))
    (out / "smoke" / "study.json").mkdir()
    (out / "smoke" / "study.json" / "notes.txt").write_text("mine")
    before = _tree(out)
    assert _compare("study=smoke", f"runs={smoke / 'runs'}", f"out={out}") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: cannot write {out / 'smoke' / 'study.json'}: a folder is in the way"
    assert _tree(out) == before


def test_files_written_together_are_left_as_they_were_when_one_fails(tmp_path: Path) -> None:
    """A full disk while writing the last file: the others are not replaced either."""
    first, second = tmp_path / "a.json", tmp_path / "b.png"
    first.write_text("old")

    def full_disk(stream) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left") as error:
        write_together({first: lambda f: f.write(b"new"), second: full_disk})
    assert error.value.filename == str(second)
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"] and first.read_text() == "old"


def test_written_files_are_readable_by_all_and_deep_new_folders_are_writable(
        tmp_path: Path) -> None:
    """mkstemp makes private files: a report or checkpoint is renamed into place as 0644.
    A folder that does not exist yet, however deep, is judged by the nearest one above it."""
    import stat

    path = check_output_file(tmp_path / "new" / "deeper" / "report.json")
    assert not (tmp_path / "new").exists()  # checked, nothing created
    write_json(path, {"fid": 1.5})
    assert path.read_text() == '{\n  "fid": 1.5\n}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


@pytest.fixture
def results_table_main(monkeypatch: pytest.MonkeyPatch):
    """benchmarks/results_table.py's main(argv)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import results_table as script

    return script.main


def test_readme_tables_match_the_committed_results(results_table_main,
                                                   capsys: pytest.CaptureFixture) -> None:
    assert results_table_main(["--check"]) == 0, "run python benchmarks/results_table.py"


def test_a_study_the_readme_does_not_quote_is_skipped_with_a_note(
        results_table_main, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results,
                    ignore=lambda folder, names: [n for n in names if n.endswith(".png")])
    extra = json.loads((results / "ttur_cpu" / "study.json").read_text())
    (results / "smoke").mkdir()
    (results / "smoke" / "study.json").write_text(json.dumps({**extra, "study": "smoke"}))
    capsys.readouterr()
    assert results_table_main(["--check", "--results", str(results)]) == 0
    out, err = capsys.readouterr()
    assert out == "README tables match the results\n"
    assert err == (f"{results / 'smoke' / 'study.json'}: no <!-- study:smoke --> block in "
                   "README.md; not quoted, skipped\n")
    # --results is the folder checked: a table there that differs from the README's is found
    (results / "ttur_cpu" / "study.json").write_text(json.dumps({**extra, "date": "1999-01-01"}))
    assert results_table_main(["--check", "--results", str(results)]) == 1
    assert "README tables differ from the results" in capsys.readouterr().out
    assert results_table_main(["--check", "--results", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err == f"error: --results {tmp_path / 'none'} is not a folder\n"


@pytest.mark.parametrize("args,message", [
    (["study=nope"], "unknown study 'nope'"),
    (["study=smoke", "steps=0"], "compare: steps must be at least 1, got 0"),
    (["study=smoke", "seeds=0"], "compare: seeds must be at least 1, got 0"),
    (["study=smoke", "parallel=0"], "parallel must be at least 1"),
    (["study=smoke", "out=/proc/no"], "cannot write to study output folder /proc/no"),
    (["study={bad_family}"], "unknown model 'nogan'"),
    (["study={typo}"], "configuration 1 (a): unknown field modle"),
    (["study={missing_data}"], "data set cifar10 not found"),
    (["study={not_yaml}"], "is not YAML"),
    (["study={one_image}"], "study one_image: n must be at least 2, got 1"),
    (["study={no_steps}"], "no_steps.yaml: bad field steps: Missing mandatory value: steps"),
    # the real images that score each run: counted before the first one trains
    (["study=smoke", "n=100"], "study smoke, configuration sagan: n=100 is more than the 64 "
                               "images of data set procedural; use n<=64"),
    (["study={big_curve}"], "configuration a: curve_n=100 is more than the 64 images"),
    (["study=smoke", "train.seed=3"], "compare: train.seed is set for each run by its seed "
                                      "number (0 to seeds - 1), not by an override"),
])
def test_bad_input_is_one_line_before_anything_trains(
        args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = {
        "bad_family": "data: procedural\nsteps: 2\nconfigurations: [{name: a, model: nogan}]\n",
        "typo": "data: procedural\nsteps: 2\nconfigurations: [{name: a, modle: sagan}]\n",
        "missing_data": f"data: cifar10\nsteps: 2\noverrides: [data.root={tmp_path}]\n"
                        "configurations: [{name: a, model: sagan}]\n",
        "not_yaml": "data: [unclosed\n",
        "one_image": "data: procedural\nsteps: 2\nn: 1\n"
                     "configurations: [{name: a, model: sagan}]\n",
        "no_steps": "data: procedural\nconfigurations: [{name: a, model: sagan}]\n",
        "big_curve": "data: procedural\nsteps: 2\nn: 8\ncurve_every: 1\ncurve_n: 100\n"
                     "overrides: [data.size=64, model.ngf=4, model.ndf=4, train.batch_size=4, "
                     "data.num_workers=0]\nconfigurations: [{name: a, model: sagan}]\n",
    }
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    args = [a.format(**{k: tmp_path / f"{k}.yaml" for k in files}) for a in args]
    runs = tmp_path / "runs"
    out = [] if any(a.startswith("out=") for a in args) else [f"out={tmp_path / 'results'}"]
    assert _compare(*args, f"runs={runs}", *out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not runs.exists() or not any(runs.rglob("*.pth"))


def test_missing_inception_weights_are_refused_before_anything_trains(
        tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("SAGAN_INCEPTION_WEIGHTS", str(tmp_path / "none.pth"))
    study = tmp_path / "no_curve.yaml"  # a curve would load the weights as training starts
    study.write_text("data: procedural\nsteps: 1\nseeds: 1\nn: 8\noverrides: [data.size=16, "
                     "model.ngf=4, model.ndf=4, train.batch_size=4, data.num_workers=0]\n"
                     "configurations: [{name: a, model: sagan}]\n")
    runs = tmp_path / "runs"
    assert _compare(f"study={study}", f"runs={runs}", f"out={tmp_path / 'out'}") == 2
    err = capsys.readouterr().err
    assert err == (f"error: Inception weights file {tmp_path / 'none.pth'} does not exist; "
                   "expected a pytorch-fid InceptionV3 state dict (.pth)\n")
    assert not runs.exists() or not any(runs.rglob("*.pth"))


def _checkpoint_times(runs: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in runs.rglob("*.pth")}


@pytest.mark.parametrize("args, message", [
    (["model.ngf=8"], "study smoke, configuration sagan: "),  # sngan's ngf is 8 already
    (["steps=1"], "is at step 2, past steps=1: a study's runs are extended, not shortened"),
])
def test_a_run_folder_of_another_configuration_or_more_steps_is_refused(
        smoke: Path, args: list[str], message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    """Rescoring the old model under the new configuration's name would report wrong numbers."""
    runs = smoke / "runs"
    before = _checkpoint_times(runs)
    assert _compare("study=smoke", f"runs={runs}", f"out={tmp_path}", *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    if args == ["model.ngf=8"]:
        assert "was started with another configuration (model.ngf: 4 -> 8)" in err, err
        assert err.endswith("(compare: runs= another folder, or delete "
                            f"{runs / 'smoke' / 'sagan_s0'})"), err
    assert _checkpoint_times(runs) == before and not any(tmp_path.iterdir())


def test_another_device_scores_nothing_again(smoke: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert _compare("study=smoke", f"runs={smoke / 'runs'}", f"out={tmp_path}",
                    "device=cpu") == 0
    assert capsys.readouterr().out.count("done before") == 6


def test_run_keys_on_the_command_line_apply_to_every_run(tmp_path: Path) -> None:
    from sagan_plugin.config import compose
    from sagan_plugin.overrides import parse_overrides

    options = parse_overrides(study_module.CompareOptions, ["study=smoke", f"runs={tmp_path}"],
                              "compare")
    _, jobs = study_module.plan(options, ["train.batch_size=2", "model.ndf=8"])
    assert {compose(job.argv).train.batch_size for job in jobs} == {2}  # after the study's 4
    assert {compose(job.argv).model.ndf for job in jobs} == {8}  # after the configurations'


def test_each_run_gets_the_study_s_settings_with_its_configuration_s_overrides_last(
        tmp_path: Path) -> None:
    """Per run: the options over the study's steps, seeds and n, the configuration's overrides
    over the study's, and the FID curve's interval and image count."""
    from sagan_plugin.config import compose
    from sagan_plugin.overrides import parse_overrides

    study = tmp_path / "mine.yaml"
    study.write_text("data: procedural\nsteps: 3\nseeds: 3\nn: 50\ncurve_every: 2\n"
                     "curve_n: 6\noverrides: [model.ngf=4, model.ndf=4]\n"
                     "configurations: [{name: a, model: sagan, overrides: [model.ngf=8]},"
                     " {name: b, model: sagan}]\n")
    options = parse_overrides(study_module.CompareOptions,
                              [f"study={study}", f"runs={tmp_path}", "seeds=2", "n=9"],
                              "compare")
    settings, jobs = study_module.plan(options)
    assert (settings.steps, settings.seeds, settings.n) == (3, 2, 9)
    assert [(job.configuration, job.seed, job.n) for job in jobs] == [
        ("a", 0, 9), ("a", 1, 9), ("b", 0, 9), ("b", 1, 9)]
    configs = [compose(job.argv) for job in jobs]
    assert [cfg.model.ngf for cfg in configs] == [8, 8, 4, 4]
    assert [cfg.train.seed for cfg in configs] == [0, 1, 0, 1]
    assert {(cfg.train.steps, cfg.train.fid_every, cfg.train.fid_n) for cfg in configs} == {
        (3, 2, 6)}
    assert [job.run_dir for job in jobs] == [str(tmp_path / "mine" / name) for name in
                                             ("a_s0", "a_s1", "b_s0", "b_s1")]


def test_runs_at_once_are_one_on_a_cpu_and_what_gpu_memory_and_cores_allow_on_a_gpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    assert study_runs.default_parallel(torch.device("cpu"), 6) == 1
    free = 5 * study_runs.GPU_MEMORY_PER_RUN + 1
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 80 * 2**30))
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    gpu = torch.device("cuda")
    assert study_runs.default_parallel(gpu, 6) == 5  # memory for 5 runs
    assert study_runs.default_parallel(gpu, 3) == 3  # no more than the runs
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert study_runs.default_parallel(gpu, 6) == 3  # two cores a run
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2**30, 80 * 2**30))
    assert study_runs.default_parallel(gpu, 6) == 1  # at least one


def test_a_worker_s_progress_is_the_last_state_of_its_bar(tmp_path: Path) -> None:
    job = study_runs.Job("a", "g", 0, str(tmp_path / "a_s0"), [], n=8, device="cpu")
    log = tmp_path / "a_s0.log"
    assert study_runs._progress(job, log) == "starting"
    log.write_text("restored the checkpoint of step 1\n  5%| 1/20\r 10%| 2/20\r 15%| 3/20 ")
    assert study_runs._progress(job, log) == "15%| 3/20"


def test_compare_under_torchrun_is_refused(monkeypatch, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _compare("study=smoke", f"runs={tmp_path}", f"out={tmp_path}") == 2
    assert "run it without torchrun" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("text, message", [
    ("configurations: []", "configurations must be a list of at least one mapping of name, "
                           "model, group, overrides"),
    ("configurations: [{name: a, model: sagan, overrides: model.ngf=4}]",
     "configuration 1 (a): overrides must be a list of key=value, got 'model.ngf=4'"),
    ("configurations: [{name: a, model: sagan}, {name: b, modle: sagan}]",
     "configuration 2 (b): unknown field modle; fields: name, model, group, overrides"),
    ("curve_every: -5\nconfigurations: [{name: a, model: sagan}]",
     "curve_every must be at least 0 and curve_n at least 2, got curve_every=-5"),
    ("configurations: [{name: a, model: sagan}", "is not YAML (line 4, column 1)"),
    ("seeds: 1\nn: 2\noverrides: [model.ngf=4, model.ndf=4, train.batch_size=2, data.size=8, "
     "data.num_workers=0]\nconfigurations: [{name: a, model: sagan}, {name: a, model: sngan}]",
     "configurations need distinct names, got ['a', 'a']"),  # were they let through: tiny runs
    ("seeds: 0\nconfigurations: [{name: a, model: sagan}]",
     "steps and seeds must be at least 1, got steps=2 seeds=0"),
    # a configuration's name is a folder under runs=: it must not lead out of it
    ("configurations: [{name: ../../away, model: sagan}]",
     "configuration name '../../away' is not a plain folder name"),
    ("configurations: [{name: /tmp/away, model: sagan}]",
     "configuration name '/tmp/away' is not a plain folder name"),
    ("configurations: [{name: '', model: sagan}]", "configuration name '' is not a plain"),
    ("configurations: [{name: a, model: sagan, overrides: ['model.ngf=${nope}']}]",
     "bad field configurations[0].overrides[0]: Interpolation key 'nope' not found"),
    ("overrides: {train.batch_size: 4}\nconfigurations: [{name: a, model: sagan}]",
     "mine.yaml: overrides must be a list of key=value, got {'train.batch_size': 4}"),
    # keys the study sets for each run: an override would make its runs share a folder
    ("configurations: [{name: a, model: sagan, overrides: [run_dir=/tmp/shared]}]",
     "configuration 1 (a): run_dir is set for each run by compare's runs="),
    ("overrides: [model=sngan]\nconfigurations: [{name: a, model: sagan}]",
     "mine.yaml: model is set for each run by the configuration's model field"),
])
def test_a_study_file_names_the_configuration_and_field_that_is_wrong(
        text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study = tmp_path / "mine.yaml"
    study.write_text(f"data: procedural\nsteps: 2\n{text}\n")
    assert _compare(f"study={study}", f"runs={tmp_path / 'runs'}", f"out={tmp_path}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_a_study_file_that_is_not_text_is_refused(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    study = tmp_path / "binary.yaml"
    study.write_bytes(b"\xff\xfe\x00garbage")
    assert _compare(f"study={study}", f"runs={tmp_path / 'runs'}", f"out={tmp_path}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot read study file {study}: " in err, err


def test_a_preset_asked_for_as_a_file_says_so(capsys: pytest.CaptureFixture) -> None:
    assert _compare("study=smoke.yaml") == 2
    assert "study file smoke.yaml does not exist (the preset is study=smoke)" in \
        capsys.readouterr().err


def _run(configuration: str, seed: int, fid: float, kid: float) -> dict:
    return {"configuration": configuration, "group": "g", "model": "sagan", "num_classes": 0,
            "seed": seed, "fid": fid, "kid": kid, "g_steps_per_s": 2.0, "train_seconds": 10.0,
            "generator_steps": 2, "d_real_images": 16, "batch_size": 4, "n_dis": 2,
            "params_G": 1, "params_D": 1}


def test_the_summary_spread_is_the_sample_standard_deviation() -> None:
    """A few seeds are a sample of the runs a configuration could give: n - 1 divisor."""
    rows = summarize([_run("a", 0, 1.0, 0.5), _run("b", 0, 7.0, 0.0), _run("a", 1, 3.0, 1.5)])
    assert [row["configuration"] for row in rows] == ["a", "b"]
    a, b = rows
    assert a["seeds"] == 2 and a["fid_mean"] == pytest.approx(2.0)
    assert a["fid_std"] == pytest.approx(2**0.5) and a["kid_std"] == pytest.approx(2**0.5 / 2)
    assert b["seeds"] == 1 and b["fid_mean"] == 7.0 and b["fid_std"] == 0.0


def test_the_summary_averages_time_over_runs_and_speed_over_those_that_measured_one() -> None:
    """A run trained before its time was measured has no speed: it is left out of the mean,
    not counted as 0."""
    runs = [_run("a", 0, 1.0, 0.5), _run("a", 1, 3.0, 1.5), _run("a", 2, 2.0, 1.0)]
    runs[1]["train_seconds"], runs[2]["train_seconds"] = 20.0, 0.0
    runs[1]["g_steps_per_s"], runs[2]["g_steps_per_s"] = 4.0, None
    (row,) = summarize(runs)
    assert row["train_seconds_mean"] == pytest.approx(10.0)
    assert row["g_steps_per_s"] == pytest.approx(3.0)
    assert summarize([runs[2]])[0]["g_steps_per_s"] is None


def test_the_table_names_the_gpu_a_study_ran_on() -> None:
    payload = json.loads((REPO / "results" / "ttur_cpu" / "study.json").read_text())
    cpu = f"{payload['machine']['cpu']} ({payload['machine']['cores']} cores)"
    assert cpu in results_table(payload).splitlines()[-1]
    payload["machine"]["gpu"] = "NVIDIA H100 80GB HBM3"
    last = results_table(payload).splitlines()[-1]
    assert "; NVIDIA H100 80GB HBM3, torch " in last and cpu not in last


def test_the_report_reads_each_net_s_gamma_and_the_fid_curve_as_training_logs_them(
        tmp_path: Path) -> None:
    from sagan_plugin.host import MetricLog
    from sagan_plugin.trainer import ProgressLogger

    logger = ProgressLogger(log_dir=str(tmp_path), num_steps=2, dataset_size=8, device="cpu")
    for step in (1, 2):
        log = MetricLog()
        log.add_metric("gamma_G", torch.tensor(0.1 * step), group="attention")
        log.add_metric("gamma_D", torch.tensor(-0.2 * step), group="attention")
        logger.write_summaries(log, step)
        logger.write_scalar("eval/fid", 50.0 / step, step)
    logger.close_writers()
    scalars = study_report.read_scalars(tmp_path)
    assert scalars["curve"] == [[1, 50.0], [2, 25.0]]
    assert scalars["gamma"]["G"] == [[1, pytest.approx(0.1)], [2, pytest.approx(0.2)]]
    assert scalars["gamma"]["D"] == [[1, pytest.approx(-0.2)], [2, pytest.approx(-0.4)]]


def test_a_result_of_another_budget_or_configuration_is_not_finished(tmp_path: Path) -> None:
    """Only a result of the same argv (but the device) and n may be reused; others rescore."""
    argv = ["model=sagan", "data=procedural", "train.steps=2", "train.device=cpu"]
    job = study_runs.Job("a", "g", 0, str(tmp_path), argv, n=100, device="cpu")
    result = {"argv": argv, "n": 100, "fid": 5.0}
    (tmp_path / study_runs.RESULT_FILE).write_text(json.dumps(result))
    assert study_runs.finished(job) == result
    assert study_runs.finished(replace(job, argv=[*argv[:-1], "train.device=cuda"],
                                       device="cuda")) == result
    assert study_runs.finished(replace(job, n=200)) is None
    assert study_runs.finished(replace(job, argv=[*argv[:2], "train.steps=4", argv[3]])) is None
    assert study_runs.finished(replace(job, run_dir=str(tmp_path / "other"))) is None


def test_a_step_logged_twice_keeps_its_last_value(tmp_path: Path) -> None:
    """A resumed run logs a step again: the report reads the newer value, not the first."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(tmp_path / "data" / "eval_fid")) as writer:
        for step, value in [(1, 50.0), (2, 40.0), (2, 30.0)]:
            writer.add_scalar("eval/fid", value, global_step=step)
    assert study_report.read_scalars(tmp_path)["curve"] == [[1, 50.0], [2, 30.0]]


def test_the_band_centre_is_the_mean_over_seeds_not_the_median() -> None:
    """The curve drawn is the mean of the seeds, with their min and max around it."""
    series = [[[1, 1.0], [2, 0.0]], [[1, 2.0], [2, 0.0]], [[1, 9.0], [2, 6.0]], [[2, 0.0]]]
    steps, centre, low, high = study_report._mean_band(series[:3])
    assert steps == [1, 2]
    assert centre == pytest.approx([4.0, 2.0])  # medians would be 2 and 0
    assert low == [1.0, 0.0] and high == [9.0, 6.0]
    assert study_report._mean_band(series)[0] == [2]  # only the steps every seed reached


def test_the_samples_row_of_a_configuration_is_its_seed_0_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """plot_samples loads each configuration's seed-0 run, one row each, in study order."""
    from run_helpers import make_run

    from sagan_plugin import runs as runs_module

    generator = runs_module.load_generator(make_run(tmp_path / "gen"))
    loaded: list[Path] = []
    monkeypatch.setattr(runs_module, "load_generator",
                        lambda path, **kw: loaded.append(Path(path)) or generator)
    seeds = [("a", 1), ("a", 0), ("b", 0), ("b", 1), ("c", 2), ("c", 0)]
    runs = [{"configuration": name, "seed": seed,
             "argv": [f"run_dir={tmp_path / f'{name}_s{seed}'}"]} for name, seed in seeds]
    study_report.plot_samples(runs, torch.device("cpu"))
    assert loaded == [tmp_path / "a_s0", tmp_path / "b_s0", tmp_path / "c_s0"]
