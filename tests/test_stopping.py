"""Real processes: SIGTERM and Ctrl-C save the step and exit non-zero, a resume is exact, one
writer per run folder, and torchrun ranks agree on the step to stop at."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_checkpoint import _assert_identical, _final_state, _train_command

from sagan_plugin.checkpoint import checkpoint_path, checkpoint_steps
from sagan_plugin.errors import UsageError
from sagan_plugin.runs import LOCK_FILE, RunLock
from sagan_plugin.stopping import (
    EXIT_CODES,
    Interrupted,
    StopRequests,
    Terminated,
    sigterm_raises,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STOPPED = re.compile(r"interrupted: stopped by (SIG\w+) after step (\d+): its checkpoint is in ")


def _wait_for(condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _long_run(run_dir: Path) -> list[str]:
    # _train_command's run, made long: it is stopped by a signal well before its end.
    return [a if not a.startswith("train.steps=") else "train.steps=100000"
            for a in _train_command(run_dir)]


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_the_step_and_a_resume_equals_an_uninterrupted_run(
        signum: int, code: int, tmp_path: Path) -> None:
    stopped = tmp_path / "stopped"
    process = subprocess.Popen(_long_run(stopped), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(lambda: checkpoint_path(stopped, 2).is_file())
    process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == code, err[-2000:]
    last_line = err.strip().splitlines()[-1]
    match = STOPPED.match(last_line)
    assert match and match.group(1) == signal.Signals(signum).name, last_line
    step = int(match.group(2))
    assert max(checkpoint_steps(stopped)) == step >= 2
    if signum != signal.SIGTERM:
        return
    # The same command, longer than the stop: it resumes at the saved step, and ends where a
    # run that was never stopped ends, bit for bit.
    end = step + 3
    command = [a if not a.startswith("train.steps=") else f"train.steps={end}"
               for a in _train_command(stopped)]
    resumed = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"restored the checkpoint of step {step}" in resumed.stdout
    straight = tmp_path / "straight"
    command = [a.replace(str(stopped), str(straight)) for a in command]
    subprocess.run(command, check=True, capture_output=True, env=ENV, timeout=600)
    _assert_identical(_final_state(stopped, end), _final_state(straight, end))


@pytest.mark.slow
def test_a_second_trainer_of_a_run_folder_is_refused_until_the_first_dies(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = subprocess.Popen(_long_run(run_dir), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=ENV)
    try:
        _wait_for(lambda: checkpoint_path(run_dir, 2).is_file())
        second = subprocess.run(_long_run(run_dir), capture_output=True, text=True, env=ENV,
                                timeout=300)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"error: run folder {run_dir} is being trained by process {first.pid} on "
            f"{os.uname().nodename} (since "), lines
        assert lines[0].endswith("wait for it to finish or stop it, or use another run_dir")
    finally:
        first.kill()  # SIGKILL: no handler runs, the kernel drops the lock
        first.wait()
    assert (run_dir / LOCK_FILE).is_file()
    with RunLock(run_dir):  # free again
        with pytest.raises(UsageError, match="is being trained by process"):
            RunLock(run_dir).__enter__()  # and held while entered (another open file)


def _rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the workers torchrun started (its children), from their environment."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        values = dict(v.split(b"=", 1) for v in environ if b"=" in v)
        if parent == launcher.pid and b"RANK" in values:
            ranks[int(values[b"RANK"])] = int(entry.name)
    return ranks


@pytest.mark.slow
def test_torchrun_ranks_stop_after_the_same_step_when_one_is_signalled(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "sagan_plugin", "train", "model=sagan",
               "data=procedural", "model.ngf=4", "model.ndf=4", "data.size=32",
               "data.num_workers=0", "train.batch_size=8", "train.steps=100000",
               "train.save_steps=2", f"run_dir={run_dir}"]
    launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=ENV)
    _wait_for(lambda: checkpoint_path(run_dir, 2).is_file())
    ranks = _rank_pids(launcher)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGTERM)  # rank 1 alone: rank 0 learns of it from the all-reduce
    _, err = launcher.communicate(timeout=300)
    stops = STOPPED.findall(err)  # a progress bar may precede one on its line
    assert len(stops) == 2, err[-3000:]  # both ranks stopped ...
    steps = {int(step) for _, step in stops}
    assert len(steps) == 1, steps  # ... after the same step,
    assert max(checkpoint_steps(run_dir)) == steps.pop()  # which rank 0 saved
    assert launcher.returncode != 0


def test_the_lock_file_names_its_holder_only_while_held(tmp_path: Path) -> None:
    """A finished run empties train.lock: a stale name would blame a process long gone."""
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().startswith(f"process {os.getpid()} on ")
    assert (tmp_path / LOCK_FILE).read_text() == ""


def test_a_holder_killed_with_its_name_in_the_lock_file_is_replaced_not_appended_to(
        tmp_path: Path) -> None:
    """SIGKILL skips the emptying: the next holder's name replaces the dead one's, so that a
    refused run names one process, the live one, in its one-line error."""
    (tmp_path / LOCK_FILE).write_text("process 1 on gone (since 2020-01-01 00:00:00)\n")
    with RunLock(tmp_path):
        lines = (tmp_path / LOCK_FILE).read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"process {os.getpid()} on "), lines


def test_stop_requests_record_signals_then_a_second_ctrl_c_stops_at_once() -> None:
    """While entered, SIGTERM and Ctrl-C are recorded, not acted on; a second Ctrl-C raises
    KeyboardInterrupt; on leaving, the handlers that were there are back."""
    before = {signum: signal.getsignal(signum) for signum in EXIT_CODES}
    with StopRequests() as stop:
        assert stop.signum is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert {signum: signal.getsignal(signum) for signum in EXIT_CODES} == before


def test_stop_requests_can_be_entered_outside_the_main_thread() -> None:
    """Training from another thread (a notebook's, a server's) is allowed: signals reach the
    main thread alone, so no handler is installed there."""
    errors = []

    def train() -> None:
        try:
            with StopRequests():
                pass
        except Exception as error:
            errors.append(error)

    thread = threading.Thread(target=train)
    thread.start()
    thread.join()
    assert errors == []


def _data_worker(stop: StopRequests, ready, parent) -> None:
    # the handlers of a worker started by spawn or forkserver, not the trainer's
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    stop.worker_init(0)
    ready.set()
    # Signals sent before the ping are handled before the ping is read: an answer means the
    # worker outlived them, however slow the machine.
    parent.send(parent.recv())
    time.sleep(60)


def test_data_workers_ignore_ctrl_c_and_sigterm_until_training_is_over() -> None:
    """A Ctrl-C or SIGTERM sent to the process group reaches the DataLoader's workers: they
    serve the step being finished; once training is over a SIGTERM ends them, as
    multiprocessing's clean-up sends it."""
    context = multiprocessing.get_context("fork")
    (ready, (here, there)), worker = (context.Event(), context.Pipe()), None
    try:
        with StopRequests() as stop:
            worker = context.Process(target=_data_worker, args=(stop, ready, there))
            worker.start()
            assert ready.wait(30)
            for signum in (signal.SIGINT, signal.SIGTERM):
                os.kill(worker.pid, signum)
            here.send("ping")
            assert here.poll(10) and here.recv() == "ping"  # still serving
        os.kill(worker.pid, signal.SIGTERM)
        worker.join(10)
        assert worker.exitcode == 0
    finally:
        if worker is not None and worker.is_alive():
            worker.kill()
            worker.join()


def test_sigterm_raises_once_then_is_ignored_and_the_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        with sigterm_raises():
            with pytest.raises(Terminated):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
            os.kill(os.getpid(), signal.SIGTERM)  # a second one, while stopping: ignored
            time.sleep(0.1)
        assert signal.getsignal(signal.SIGTERM) == before
    finally:
        signal.signal(signal.SIGTERM, before)


def test_interrupted_names_its_checkpoint_and_crosses_processes_whole() -> None:
    """A study's worker hands the exception to the main process by pickling it."""
    stopped = pickle.loads(pickle.dumps(Interrupted(signal.SIGTERM, 4, "/runs/a/checkpoints")))
    assert (stopped.signum, stopped.step, stopped.exit_code) == (signal.SIGTERM, 4, 143)
    assert str(stopped) == ("stopped by SIGTERM after step 4: its checkpoint is in "
                            "/runs/a/checkpoints; run the same command again to resume")
