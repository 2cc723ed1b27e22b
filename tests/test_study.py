"""The study runner (`sagan-plugin compare`): runs, resume, results, pictures, README tables."""

import json
from pathlib import Path

import pytest
from PIL import Image

from sagan_plugin import study as study_module
from sagan_plugin.cli import main as cli
from sagan_plugin.study_report import (
    CURVE_SIZE,
    FIGURE_DPI,
    GAMMA_SIZE,
    SAMPLE_ROW_HEIGHT,
    SAMPLES_WIDTH,
    readme_block,
    results_table,
    update_readme,
)

REPO = Path(__file__).resolve().parents[1]
RUN_FIELDS = {"configuration", "group", "seed", "model", "num_classes", "argv", "n", "commit",
              "step", "ema", "fid", "kid", "kid_std", "batch_size", "n_dis", "generator_steps",
              "d_real_images", "train_seconds", "g_steps_per_s", "d_images_per_s", "params_G",
              "params_D", "curve", "gamma"}
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
        assert run["commit"] == payload["commit"]  # one invocation trained them all
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
    (interrupted / study_module.RESULT_FILE).unlink()
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


def test_readme_tables_match_the_committed_results() -> None:
    payloads = [json.loads(p.read_text()) for p in sorted(REPO.glob("results/*/study.json"))]
    readme = (REPO / "README.md").read_text()
    assert update_readme(readme, payloads) == readme, "run python benchmarks/results_table.py"


@pytest.mark.parametrize("args,message", [
    (["study=nope"], "unknown study 'nope'"),
    (["study=smoke", "steps=0"], "compare: steps must be at least 1, got 0"),
    (["study=smoke", "seeds=0"], "compare: seeds must be at least 1, got 0"),
    (["study=smoke", "parallel=0"], "parallel must be at least 1"),
    (["study=smoke", "out=/proc/no"], "cannot write to output directory /proc/no"),
    (["study={bad_family}"], "unknown model 'nogan'"),
    (["study={typo}"], "bad field modle"),
    (["study={missing_data}"], "data set cifar10 not found"),
    (["study={not_yaml}"], "is not YAML"),
    (["study={one_image}"], "study one_image: n must be at least 2, got 1"),
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
