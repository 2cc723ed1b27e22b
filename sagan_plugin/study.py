"""`sagan-plugin compare study=NAME`: train configurations x seeds, score them all alike.

    sagan-plugin compare study=fashion_mnist_32_cpu          (or python benchmarks/compare.py)
    sagan-plugin compare study=fashion_mnist_32 parallel=4 steps=20000 seeds=3
    sagan-plugin compare study=smoke train.batch_size=2      (run keys: for every run)

A study is a preset, registry/studies/NAME.yaml: a data set, a budget (generator steps), seeds
and the configurations to compare, each a model family with its own preset and overrides. Every
run is scored the same way: FID and KID of n images of its generator (EMA if any) against the
same cached real statistics, plus an FID curve every `curve_every` steps while it trains.

Run folders live under runs/studies/<study>/<configuration>_s<seed> (scratch); a run whose
result file exists is not retrained, an interrupted one continues from its last checkpoint, and
one whose folder holds another configuration, or more steps, is refused before anything trains
(training and scoring them: study_runs.py). What a README may quote goes to results/<study>/
(study_report.py): the JSON with the machine, torch and commit, the learning curves, the sample
grid and the attention gammas.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sagan_plugin.checkpoint import checkpoint_steps
from sagan_plugin.config import build_models, compose, resolve_device
from sagan_plugin.errors import UsageError, first_line
from sagan_plugin.machine import git_commit
from sagan_plugin.metrics.weights import resolve_weights
from sagan_plugin.overrides import parse_overrides
from sagan_plugin.presets import load_preset, preset_names
from sagan_plugin.schema import at_least, option
from sagan_plugin.study_runs import Job, default_parallel, execute

# Keys that the study sets for each run, and the study field or compare option that sets them:
# an override of one would make runs share a folder (run_dir) or a seed, or differ in budget.
SET_PER_RUN = {"model": "the configuration's model field", "data": "the study's data field",
               "run_dir": "compare's runs= (RUNS/<study>/<configuration>_s<seed>)",
               "train.seed": "its seed number (0 to seeds - 1)",
               "train.steps": "the study's steps (compare steps=N)",
               "train.device": "compare's device=", "train.fid_every": "the study's curve_every",
               "train.fid_n": "the study's curve_n"}


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


def study_name(spec: str) -> str:
    """A preset's name, or a YAML file's stem."""
    return Path(spec).stem if spec.endswith((".yaml", ".yml")) else spec


def load_study(spec: str) -> DictConfig:
    """The study preset `spec` (or a YAML file of one), checked against the Study schema."""
    name = study_name(spec)
    try:
        if spec != name:
            if not Path(spec).is_file():
                preset_too = f" (the preset is study={name})" if name in preset_names(
                    "studies") else ""
                raise UsageError(f"study file {spec} does not exist{preset_too}")
            preset = OmegaConf.to_container(OmegaConf.load(spec))
        elif name in preset_names("studies"):
            preset = load_preset("studies", name)
        else:
            raise UsageError(f"unknown study {name!r}; studies: "
                             f"{', '.join(preset_names('studies'))} (or a .yaml file)")
        if not isinstance(preset, dict):
            raise UsageError(f"study {spec} must be a mapping of study fields")
        _check_overrides(preset.get("overrides", []), f"study {spec}")
        _check_configurations(preset.get("configurations"), spec)
        study = OmegaConf.merge(OmegaConf.structured(Study), preset)
        OmegaConf.to_container(study, throw_on_missing=True)
        OmegaConf.resolve(study)  # ${...} in the file (overrides too): its errors are a field's
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise UsageError(f"study {spec}: bad field {key}: {error.msg.splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as error:  # a binary file, a folder named .yaml
        raise UsageError(f"cannot read study file {spec}: "
                         f"{getattr(error, 'strerror', None) or first_line(error)}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UsageError(f"study file {spec} is not YAML{where}: "
                         f"{str(error).splitlines()[0]}") from None
    return study


def _check_configurations(configurations: Any, spec: str) -> None:
    """Each configuration a mapping of Configuration's fields, overrides a list of key=value:
    refused naming the configuration (the schema's own errors name neither)."""
    fields = list(Configuration.__dataclass_fields__)
    if not isinstance(configurations, list) or not configurations:
        raise UsageError(f"study {spec}: configurations must be a list of at least one "
                         f"mapping of {', '.join(fields)}")
    for i, configuration in enumerate(configurations):
        which = f"study {spec}, configuration {i + 1}"
        if not isinstance(configuration, dict):
            raise UsageError(f"{which}: expected a mapping of {', '.join(fields)}, got "
                             f"{configuration!r}")
        which += f" ({configuration.get('name', 'unnamed')})"
        unknown = sorted(set(configuration) - set(fields))
        if unknown:
            raise UsageError(f"{which}: unknown field {unknown[0]}; fields: {', '.join(fields)}")
        _check_overrides(configuration.get("overrides", []), which)


def _check_overrides(overrides: Any, which: str) -> None:
    """A list of key=value strings, none of them a key that the study sets for each run."""
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise UsageError(f"{which}: overrides must be a list of key=value, got {overrides!r}")
    for token in overrides:
        key = token.partition("=")[0]
        if key in SET_PER_RUN:
            raise UsageError(f"{which}: {key} is set for each run by {SET_PER_RUN[key]}, "
                             f"not by an override ({token})")


def plan(options: Any, run_overrides: list[str] = ()) -> tuple[DictConfig, list[Job]]:
    """The study with the command's options, and its runs; run_overrides (key=value of the
    run configuration) apply to every run, after the study's own. Every run configuration is
    composed (and so checked) here, and so is what its run folder already holds, before
    anything trains."""
    study, name = load_study(options.study), study_name(options.study)
    _check_overrides(list(run_overrides), "compare")
    for key in ("steps", "seeds", "n"):
        if options[key] is not None:
            study[key] = options[key]
    if study.steps < 1 or study.seeds < 1:
        raise UsageError(f"study {name}: steps and seeds must be at least 1, got "
                         f"steps={study.steps} seeds={study.seeds}")
    if study.n < 2:  # FID and KID of the final images
        raise UsageError(f"study {name}: n must be at least 2, got {study.n}")
    if study.curve_every < 0 or (study.curve_every and study.curve_n < 2):
        raise UsageError(f"study {name}: curve_every must be at least 0 and curve_n at least "
                         f"2, got curve_every={study.curve_every} curve_n={study.curve_n}")
    names = [c.name for c in study.configurations]
    odd = [n for n in names if n in ("", ".", "..") or "/" in n or "\0" in n]
    if odd:  # a name is a folder under runs=: ../x or /x would put a run elsewhere
        raise UsageError(f"study {name}: configuration name {odd[0]!r} is not a plain folder "
                         "name (no /, not empty, . or ..)")
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
                    *configuration.overrides, *run_overrides]
            if study.curve_every:
                argv += [f"train.fid_every={study.curve_every}", f"train.fid_n={study.curve_n}"]
            try:
                cfg = compose(argv)
                build_models(cfg)
                _check_run_folder(run_dir, cfg)
            except UsageError as error:
                raise UsageError(f"study {name}, configuration "
                                 f"{configuration.name}: {error}") from None
            jobs.append(Job(configuration.name, configuration.group, seed, str(run_dir), argv,
                            study.n, options.device))
    return study, jobs


def _check_run_folder(run_dir: Path, cfg: DictConfig) -> None:
    """A run folder that exists must be this run's: trained with this configuration (any
    other change is refused, as train refuses it) and not past its steps."""
    from sagan_plugin.train import check_resume

    reached = (checkpoint_steps(run_dir) or [0])[-1]
    if reached > cfg.train.steps:
        raise UsageError(f"run folder {run_dir} is at step {reached}, past steps="
                         f"{cfg.train.steps}: a study's runs are extended, not shortened; give "
                         f"steps>={reached}, or runs= another folder")
    try:
        check_resume(run_dir, cfg)
    except UsageError as error:
        raise UsageError(f"{error} (compare: runs= another folder, or delete {run_dir})"
                         ) from None


def _check_data(name: str, study: DictConfig, jobs: list[Job]) -> None:
    """Each run's data set is there (a missing one says how to get it) and holds the real
    images that score the run: found now, not once the first run has trained."""
    from sagan_plugin.data import build_dataset

    needed = {"n": study.n, **({"curve_n": study.curve_n} if study.curve_every else {})}
    sizes: dict[str, int] = {}
    for job in jobs:
        data = compose(job.argv).data
        key = OmegaConf.to_yaml(data)
        if key not in sizes:
            sizes[key] = len(build_dataset(data))
        for what, count in needed.items():
            if count > sizes[key]:
                raise UsageError(f"study {name}, configuration {job.configuration}: {what}="
                                 f"{count} is more than the {sizes[key]} images of data set "
                                 f"{data.name}; use {what}<={sizes[key]}")


def main(argv: list[str]) -> None:
    from sagan_plugin.files import check_writable
    from sagan_plugin.study_report import check_report, write_report

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("compare starts its own processes (parallel=N on one machine); run it "
                         "without torchrun, which would run the whole study once per process")
    # Keys of the run configuration (train.batch_size=2) go to every run, after the study's.
    run_overrides = [t for t in argv if "." in t.partition("=")[0]]
    options = parse_overrides(CompareOptions, [t for t in argv if t not in run_overrides],
                              "compare")
    # Now, not when the report is written: the code that runs is what this process loaded.
    commit = git_commit(Path(__file__).parent)
    study, jobs = plan(options, run_overrides)
    jobs = [replace(job, commit=commit) for job in jobs]
    name = study_name(options.study)
    _check_data(name, study, jobs)
    resolve_weights()  # the scoring's Inception weights: found now, not once the runs trained
    out = Path(options.out) / name
    check_report(out)  # before the runs train, not after
    check_writable(Path(options.runs))
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
