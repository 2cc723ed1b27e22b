"""The runs of a study: each trained (or continued) and scored, here or in worker processes.

A run's folder holds its result (study_run.json: scores, settings, timing, the commits that
trained and scored it) once it is done; a job whose result matches is not run again. With
parallel=N the runs train in spawned worker processes (CUDA does not survive a fork), each
printing its progress bar to <run folder>.log; a Ctrl-C or SIGTERM, to the main process or
to them all, stops those in progress after their step, saved, and starts no other.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sagan_plugin.checkpoint import checkpoint_steps
from sagan_plugin.config import build_models, compose
from sagan_plugin.errors import UsageError
from sagan_plugin.files import write_json
from sagan_plugin.stopping import EXIT_CODES, Interrupted, Terminated, follow_study, sigterm_raises

RESULT_FILE = "study_run.json"
TIMING_FILE = "study_timing.json"
GPU_MEMORY_PER_RUN = 6 * 2**30  # a 32 px run at batch 64 with Inception scoring, and room


@dataclass
class Job:
    """One run of a study: a configuration trained with one seed."""

    configuration: str
    group: str
    seed: int
    run_dir: str
    argv: list[str]  # model=, data= and overrides for config.compose
    n: int
    device: str
    commit: str | None = None  # of the code that trains and scores it (read at the start)


def _trained_as(argv: list[str]) -> list[str]:
    """What a run's result depends on: its argv, but for the device it ran on."""
    return [token for token in argv if not token.startswith("train.device=")]


def finished(job: Job) -> dict | None:
    """The run's result when it was trained and scored with this job's budget."""
    path = Path(job.run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if _trained_as(result.get("argv", [])) == _trained_as(job.argv) and \
        result.get("n") == job.n else None


class NotStarted(Exception):
    """A queued run that a worker did not start: the study was stopped first."""


_stopping: Any = None  # in a worker process: the study's event, set when it is stopped


def _worker_start(stopping: Any, study_signal: Any) -> None:
    """A worker leaves Ctrl-C and SIGTERM to the runs it trains (each stops after its step,
    saved) and to the main process (which stops the queue, and the runs through
    `study_signal`): an idle worker killed by one breaks the pool."""
    global _stopping
    _stopping = stopping
    follow_study(study_signal)
    for signum in EXIT_CODES:
        signal.signal(signum, signal.SIG_IGN)


def run_job(job: Job, log_file: str | None = None) -> dict:
    """Train (or continue) one run, score it, write its result file; returns the result."""
    if _stopping is not None and _stopping.is_set():
        raise NotStarted
    with contextlib.ExitStack() as stack:
        if log_file:  # a worker process: its progress bar and messages go to the run's log
            stream = stack.enter_context(open(log_file, "a", buffering=1))
            stack.enter_context(contextlib.redirect_stdout(stream))
            stack.enter_context(contextlib.redirect_stderr(stream))
        return _train_and_score(job)


def _train_and_score(job: Job) -> dict:
    from sagan_plugin.evaluate import main as evaluate
    from sagan_plugin.study_report import read_scalars
    from sagan_plugin.train import run

    cfg = compose(job.argv)
    run_dir = Path(job.run_dir)
    timing_file = run_dir / TIMING_FILE
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else \
        {"seconds": 0.0, "steps": 0}
    timing.setdefault("commits", [])
    first = (checkpoint_steps(run_dir) or [0])[-1]

    def timed_segment(start: float) -> None:
        # Segments that ended with a checkpoint at their last step: the run's own end, or a
        # stop on a signal (saved where it stopped). Steps redone after a crash count once.
        timing["seconds"] += time.perf_counter() - start
        timing["steps"] += checkpoint_steps(run_dir)[-1] - first
        if job.commit not in timing["commits"][-1:]:
            timing["commits"].append(job.commit)
        write_json(timing_file, timing)

    if first < cfg.train.steps:
        start = time.perf_counter()
        try:
            run(cfg)
        except Interrupted:
            timed_segment(start)
            raise
        timed_segment(start)
    scores_file = run_dir / "eval" / f"study_n{job.n}.json"
    evaluate([f"run={run_dir}", "metrics=fid,kid", f"n={job.n}", f"out={scores_file}",
              f"device={job.device}"])
    scores = json.loads(scores_file.read_text())["rows"][-1]
    netG, netD = build_models(cfg)
    train = cfg.train
    per_s = timing["steps"] / timing["seconds"] if timing["seconds"] else None
    result = {
        "configuration": job.configuration, "group": job.group, "seed": job.seed,
        "model": cfg.model.name, "num_classes": cfg.model.num_classes, "argv": job.argv,
        "n": job.n, "commit": job.commit, "trained_at": timing["commits"] or None,
        "step": scores["step"], "ema": scores["ema"],
        "fid": scores["fid"], "kid": scores["kid"], "kid_std": scores["kid_std"],
        "batch_size": train.batch_size, "n_dis": train.n_dis,
        "generator_steps": train.steps, "d_real_images": train.steps * train.n_dis *
        train.batch_size,
        "train_seconds": timing["seconds"], "g_steps_per_s": per_s,
        "d_images_per_s": per_s * train.n_dis * train.batch_size if per_s else None,
        "params_G": sum(p.numel() for p in netG.parameters()),
        "params_D": sum(p.numel() for p in netD.parameters()),
        **read_scalars(run_dir),
    }
    write_json(run_dir / RESULT_FILE, result)
    return result


def default_parallel(device: torch.device, jobs: int) -> int:
    """1 on a CPU; on a GPU as many as its free memory holds, one CPU core pair each."""
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    by_memory = max(1, int(free // GPU_MEMORY_PER_RUN))
    return max(1, min(jobs, by_memory, (os.cpu_count() or 2) // 2))


def _progress(job: Job, log_file: Path) -> str:
    """The newest progress-bar state in a worker's log."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return "starting"
    states = [s.strip() for s in text.replace("\r", "\n").splitlines() if s.strip()]
    return states[-1][:120] if states else "starting"


def execute(jobs: list[Job], parallel: int) -> list[dict]:
    """Run the jobs not finished yet: in this process one at a time, else in worker processes
    (spawned: CUDA does not survive a fork), printing a progress line per run."""
    results: dict[int, dict] = {}
    todo = []
    for i, job in enumerate(jobs):
        done = finished(job)
        if done is not None:
            print(f"[{i + 1}/{len(jobs)}] {job.configuration} seed {job.seed}: done before "
                  f"(FID {done['fid']:.2f})")
            results[i] = done
        else:
            todo.append(i)
    if parallel <= 1:
        for i in todo:
            job = jobs[i]
            print(f"[{i + 1}/{len(jobs)}] {job.configuration} seed {job.seed}: training",
                  flush=True)
            results[i] = run_job(job)
            _report(i, jobs, results[i])
        return [results[i] for i in range(len(jobs))]
    context = multiprocessing.get_context("spawn")
    stopping = context.Event()
    study_signal = context.Value("i", 0, lock=False)  # read by each run after each step
    with sigterm_raises(), \
            concurrent.futures.ProcessPoolExecutor(parallel, mp_context=context,
                                                   initializer=_worker_start,
                                                   initargs=(stopping, study_signal)) as pool:
        logs = {i: Path(jobs[i].run_dir + ".log") for i in todo}
        futures: dict[concurrent.futures.Future, int] = {}
        try:
            for i in todo:
                logs[i].parent.mkdir(parents=True, exist_ok=True)
                futures[pool.submit(run_job, jobs[i], str(logs[i]))] = i
            _collect(futures, jobs, logs, results)
        except BaseException as error:  # a signal, or a run's error: no queued run may start
            stopping.set()
            signalled = isinstance(error, (KeyboardInterrupt, Terminated))
            if signalled:  # and the runs in progress stop after their step
                study_signal.value = signal.SIGINT if isinstance(error, KeyboardInterrupt) \
                    else signal.SIGTERM
            running = sum(future.running() for future in futures)
            if running and not signalled:
                print(f"a run failed (its error follows once the {running} runs in progress "
                      "have finished; Ctrl-C stops them after their step, saved)",
                      file=sys.stderr, flush=True)
            pool.shutdown(wait=True, cancel_futures=True)
            _say_how_runs_stopped(futures, jobs)
            raise
    return [results[i] for i in range(len(jobs))]


def _collect(futures: dict[concurrent.futures.Future, int], jobs: list[Job],
             logs: dict[int, Path], results: dict[int, dict]) -> None:
    """Wait for the workers' runs, reporting each as it ends and the others' progress."""
    pending = set(futures)
    while pending:
        done, pending = concurrent.futures.wait(pending, timeout=30)
        for future in done:
            i = futures[future]
            try:
                results[i] = future.result()
            except UsageError as error:
                raise UsageError(f"{jobs[i].configuration} seed {jobs[i].seed}: {error} "
                                 f"(log: {logs[i]})") from None
            _report(i, jobs, results[i])
        for future in pending:
            i = futures[future]
            if future.running():
                print(f"[{i + 1}/{len(jobs)}] {jobs[i].configuration} seed {jobs[i].seed}:"
                      f" {_progress(jobs[i], logs[i])}", flush=True)


def _say_how_runs_stopped(futures: dict[concurrent.futures.Future, int],
                          jobs: list[Job]) -> None:
    """The runs that a signal stopped after a step, saved (the serial path's message)."""
    for future, i in futures.items():
        if not future.cancelled() and isinstance(future.exception(), Interrupted):
            print(f"[{i + 1}/{len(jobs)}] {jobs[i].configuration} seed {jobs[i].seed}: "
                  f"{future.exception()}", flush=True)


def _report(i: int, jobs: list[Job], result: dict) -> None:
    print(f"[{i + 1}/{len(jobs)}] {result['configuration']} seed {result['seed']}: FID "
          f"{result['fid']:.2f}, KID {result['kid']:.4f}, {result['train_seconds']:.0f} s "
          "to train", flush=True)
