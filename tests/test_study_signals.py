"""A study stopped by a signal: the runs in progress stop after their step, saved, the waiting
ones never start, and a resumed run counts every segment of its training."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import REPO, interruptible

from sagan_plugin import study as study_module
from sagan_plugin import study_runs


def test_a_run_stopped_on_a_signal_counts_that_segment_in_its_time_and_commits(
        tmp_path: Path, monkeypatch) -> None:
    """A resumed run's train_seconds covers every segment, each commit that trained it named."""
    from omegaconf import OmegaConf

    from sagan_plugin import train
    from sagan_plugin.overrides import parse_overrides
    from sagan_plugin.stopping import Interrupted

    study = tmp_path / "one.yaml"
    study.write_text("data: procedural\nsteps: 2\nseeds: 1\nn: 8\noverrides: "
                     "[train.batch_size=4, data.size=64, data.num_workers=0, train.save_steps=1,"
                     " train.n_dis=2]\nconfigurations: [{name: a, model: sagan, overrides: "
                     "[model.ngf=4, model.ndf=4]}]\n")
    options = parse_overrides(study_module.CompareOptions,
                              [f"study={study}", f"runs={tmp_path / 'runs'}"], "compare")
    job = study_module.plan(options)[1][0]
    real_run = train.run

    def stopped_after_step_1(cfg):
        real_run(OmegaConf.merge(cfg, {"train": {"steps": 1}}))
        raise Interrupted(signal.SIGINT, 1, "there")

    monkeypatch.setattr(train, "run", stopped_after_step_1)
    with pytest.raises(Interrupted):
        study_runs._train_and_score(replace(job, commit="aaa"))
    timing = json.loads((Path(job.run_dir) / study_runs.TIMING_FILE).read_text())
    assert timing["steps"] == 1 and timing["seconds"] > 0 and timing["commits"] == ["aaa"]
    monkeypatch.setattr(train, "run", real_run)
    result = study_runs._train_and_score(replace(job, commit="bbb"))
    assert result["trained_at"] == ["aaa", "bbb"] and result["commit"] == "bbb"
    assert result["train_seconds"] > timing["seconds"]
    assert result["g_steps_per_s"] == pytest.approx(2 / result["train_seconds"])
    # What the report quotes of the run: its eval's scores, its nets' sizes, D's image rate.
    from sagan_plugin.config import build_models, compose

    scored = json.loads((Path(job.run_dir) / "eval" / "study_n8.json").read_text())["rows"][-1]
    assert [result[k] for k in ("step", "fid", "kid", "kid_std")] == [
        scored[k] for k in ("step", "fid", "kid", "kid_std")]
    netG, netD = build_models(compose(job.argv))
    assert (result["params_G"], result["params_D"]) == (
        sum(p.numel() for p in netG.parameters()), sum(p.numel() for p in netD.parameters()))
    assert result["n_dis"] == 2 and result["d_real_images"] == 2 * 2 * 4
    assert result["d_images_per_s"] == pytest.approx(result["g_steps_per_s"] * 2 * 4)
    # Scored again with another n (a finished run, its result stale): it is not trained again.
    monkeypatch.setattr(train, "run", lambda cfg: pytest.fail("a finished run was trained"))
    again = study_runs._train_and_score(replace(job, n=4, commit="ccc"))
    assert again["trained_at"] == ["aaa", "bbb"] and again["commit"] == "ccc"
    assert again["train_seconds"] == result["train_seconds"] and again["n"] == 4


def _alive_in_group(pgid: int) -> list[int]:
    """The processes of a process group that have not exited (zombies left unreaped by a
    container's init have)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited while we looked
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.parametrize("signum, to_group", [
    (signal.SIGINT, True),    # Ctrl-C in a terminal
    (signal.SIGTERM, False),  # kill PID, docker stop: the main process alone
    (signal.SIGTERM, True),   # timeout, Slurm: the whole process group
])
def test_a_signal_stops_a_parallel_study_after_the_runs_step_and_starts_no_other(
        tmp_path: Path, signum: int, to_group: bool) -> None:
    """Two runs train in workers, two wait: the signal stops the two after their step, saved,
    the waiting ones never start, and no worker outlives the study (after a Ctrl-C the waiting
    ones used to train to the end; a SIGTERM to the main process alone left its workers
    training)."""
    study, runs = tmp_path / "long.yaml", tmp_path / "runs"
    study.write_text("data: procedural\nsteps: 400\nseeds: 2\nn: 8\noverrides: "
                     "[train.batch_size=4, data.size=64, data.num_workers=0]\nconfigurations: "
                     "[{name: a, model: sagan, overrides: [model.ngf=4, model.ndf=4]}, "
                     "{name: b, model: sagan, overrides: [model.ngf=4, model.ndf=4, "
                     "model.attention=0]}]\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "sagan_plugin", "compare", f"study={study}", "parallel=2",
         f"runs={runs}", f"out={tmp_path / 'out'}", "device=cpu"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=interruptible)
    logs = [runs / "long" / f"a_s{seed}.log" for seed in (0, 1)]
    deadline = time.monotonic() + 300
    while not all(log.is_file() and "/400" in log.read_text() for log in logs):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    (os.killpg if to_group else os.kill)(process.pid, signum)
    try:
        out, err = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:  # the waiting runs started: leave no study behind
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"the study went on training after {signal.Signals(signum).name}")
    deadline = time.monotonic() + 10  # every process of the session ends with the main one
    while _alive_in_group(process.pid):
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("a worker outlived the study")
        time.sleep(0.2)
    assert process.returncode == 128 + signum, err
    assert out.count(f"stopped by {signal.Signals(signum).name} after step") == 2, out
    for seed in (0, 1):
        assert list((runs / "long" / f"a_s{seed}" / "checkpoints" / "netG").glob("*.pth"))
        assert not (runs / "long" / f"b_s{seed}").exists()
