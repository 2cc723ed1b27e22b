"""`sagan-plugin compare study=NAME`: train configurations x seeds, score them all alike.

    sagan-plugin compare study=fashion_mnist_32_cpu          (or python benchmarks/compare.py)
    sagan-plugin compare study=fashion_mnist_32 parallel=4 steps=20000 seeds=3

A study is a preset, registry/studies/NAME.yaml: a data set, a budget (generator steps), seeds
and the configurations to compare, each a model family with its own preset and overrides. Every
run is scored the same way: FID and KID of n images of its generator (EMA if any) against the
same cached real statistics, plus an FID curve every `curve_every` steps while it trains.

Run folders live under runs/studies/<study>/<configuration>_s<seed> (scratch); a run whose
result file exists is not retrained, an interrupted one continues from its last checkpoint.
What a README may quote goes to results/<study>/ (study_report.py): the JSON with the machine,
torch and commit, the learning curves, the sample grid and the attention gammas.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sagan_plugin.checkpoint import checkpoint_steps
from sagan_plugin.config import build_models, compose, parse_overrides, resolve_device
from sagan_plugin.errors import UsageError
from sagan_plugin.files import write_json
from sagan_plugin.machine import git_commit
from sagan_plugin.presets import load_preset, preset_names
from sagan_plugin.schema import at_least, option

RESULT_FILE = "study_run.json"
TIMING_FILE = "study_timing.json"
GPU_MEMORY_PER_RUN = 6 * 2**30  # a 32 px run at batch 64 with Inception scoring, and room


@dataclass
class Configuration:
    name: str = MISSING
    model: str = MISSING
    group: str = "conditional"  # runs are compared within a group (conditional, unconditional)
    overrides: list[str] = field(default_factory=list)


@dataclass
class Study:
    description: str = ""
    data: str = MISSING
    steps: int = MISSING  # generator steps, the same for every configuration
    seeds: int = 3
    n: int = 10000  # images for the final FID and KID
    curve_every: int = 0  # FID every k steps while training; 0: no curve
    curve_n: int = 2000
    overrides: list[str] = field(default_factory=list)  # for every configuration
    configurations: list[Configuration] = MISSING


@dataclass
class CompareOptions:
    study: str = option(MISSING, "a preset name in registry/studies/, or a .yaml file of one")
    steps: int | None = option(None, "generator steps of every run; null: the study's",
                               at_least(1))
    seeds: int | None = option(None, "seeds per configuration; null: the study's", at_least(1))
    n: int | None = option(None, "images for FID/KID; null: the study's", at_least(2))
    parallel: int | None = option(None, "runs at once; null: 1 on a CPU, from free memory on "
                                  "a GPU", at_least(1))
    device: str = option("auto", "auto (cuda when present), cpu, cuda or cuda:N")
    runs: str = option("runs/studies", "run folders (scratch)")
    out: str = option("results", "results/<study>/: what the README quotes")


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


def study_name(spec: str) -> str:
    """A preset's name, or a YAML file's stem."""
    return Path(spec).stem if spec.endswith((".yaml", ".yml")) else spec


def load_study(spec: str) -> DictConfig:
    """The study preset `spec` (or a YAML file of one), checked against the Study schema."""
    name = study_name(spec)
    try:
        if spec != name:
            if not Path(spec).is_file():
                raise UsageError(f"study file {spec} does not exist")
            preset = OmegaConf.to_container(OmegaConf.load(spec))
        elif name in preset_names("studies"):
            preset = load_preset("studies", name)
        else:
            raise UsageError(f"unknown study {name!r}; studies: "
                             f"{', '.join(preset_names('studies'))} (or a .yaml file)")
        if not isinstance(preset, dict):
            raise UsageError(f"study {spec} must be a mapping of study fields")
        study = OmegaConf.merge(OmegaConf.structured(Study), preset)
        OmegaConf.to_container(study, throw_on_missing=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise UsageError(f"study {spec}: bad field {key}: {error.msg.splitlines()[0]}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"study file {spec} is not YAML: {str(error).splitlines()[0]}") from None
    return study


def plan(options: Any) -> tuple[DictConfig, list[Job]]:
    """The study with the command's overrides, and its runs; every run configuration is
    composed (and so checked) here, before anything trains."""
    study, name = load_study(options.study), study_name(options.study)
    for key in ("steps", "seeds", "n"):
        if options[key] is not None:
            study[key] = options[key]
    if study.steps < 1 or study.seeds < 1:
        raise UsageError(f"study {name}: steps and seeds must be at least 1, got "
                         f"steps={study.steps} seeds={study.seeds}")
    if study.n < 2:  # FID and KID of the final images
        raise UsageError(f"study {name}: n must be at least 2, got {study.n}")
    names = [c.name for c in study.configurations]
    if not names or len(set(names)) != len(names):
        raise UsageError(f"study {name}: configurations need distinct names, got "
                         f"{names}")
    jobs = []
    for configuration in study.configurations:
        for seed in range(study.seeds):
            run_dir = Path(options.runs) / name / f"{configuration.name}_s{seed}"
            argv = [f"model={configuration.model}", f"data={study.data}",
                    f"train.steps={study.steps}", f"train.seed={seed}", f"run_dir={run_dir}",
                    f"train.device={options.device}", *study.overrides,
                    *configuration.overrides]
            if study.curve_every:
                argv += [f"train.fid_every={study.curve_every}", f"train.fid_n={study.curve_n}"]
            try:
                cfg = compose(argv)
                build_models(cfg)
            except UsageError as error:
                raise UsageError(f"study {name}, configuration "
                                 f"{configuration.name}: {error}") from None
            jobs.append(Job(configuration.name, configuration.group, seed, str(run_dir), argv,
                            study.n, options.device))
    return study, jobs


def finished(job: Job) -> dict | None:
    """The run's result when it was trained and scored with this job's budget."""
    path = Path(job.run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("argv") == job.argv and result.get("n") == job.n else None


def run_job(job: Job, log_file: str | None = None) -> dict:
    """Train (or continue) one run, score it, write its result file; returns the result."""
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
    first = (checkpoint_steps(run_dir) or [0])[-1]
    if first < cfg.train.steps:
        start = time.perf_counter()
        run(cfg)
        # Only completed segments count: steps redone after a crash are timed once.
        timing["seconds"] += time.perf_counter() - start
        timing["steps"] += checkpoint_steps(run_dir)[-1] - first
        write_json(timing_file, timing)
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
        "n": job.n, "commit": job.commit, "step": scores["step"], "ema": scores["ema"],
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
    with concurrent.futures.ProcessPoolExecutor(parallel, mp_context=context) as pool:
        logs = {i: Path(jobs[i].run_dir + ".log") for i in todo}
        for log in logs.values():
            log.parent.mkdir(parents=True, exist_ok=True)
        futures = {pool.submit(run_job, jobs[i], str(logs[i])): i for i in todo}
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
    return [results[i] for i in range(len(jobs))]


def _report(i: int, jobs: list[Job], result: dict) -> None:
    print(f"[{i + 1}/{len(jobs)}] {result['configuration']} seed {result['seed']}: FID "
          f"{result['fid']:.2f}, KID {result['kid']:.4f}, {result['train_seconds']:.0f} s "
          "to train", flush=True)


def main(argv: list[str]) -> None:
    from sagan_plugin.data import build_dataset
    from sagan_plugin.files import check_writable
    from sagan_plugin.study_report import write_report

    options = parse_overrides(CompareOptions, argv, "compare")
    # Now, not when the report is written: the code that runs is what this process loaded.
    commit = git_commit(Path(__file__).parent)
    study, jobs = plan(options)
    jobs = [replace(job, commit=commit) for job in jobs]
    build_dataset(compose(jobs[0].argv).data)  # a missing data set says how to get it, now
    name = study_name(options.study)
    out = Path(options.out) / name
    for folder in (out, Path(options.runs)):
        check_writable(folder)
    device = resolve_device(options.device)
    parallel = options.parallel or default_parallel(device, len(jobs))
    print(f"study {name}: {len(study.configurations)} configurations x {study.seeds} seeds, "
          f"{study.steps} generator steps each, {parallel} at a time on {device}")
    results = execute(jobs, parallel)
    write_report(name, study, results, out, device,
                 command=" ".join(["sagan-plugin compare", *argv]), commit=commit)


if __name__ == "__main__":
    from sagan_plugin.cli import main as cli

    sys.exit(cli(["compare", *sys.argv[1:]]))
