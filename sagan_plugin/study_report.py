"""What a study leaves in results/<study>/: the JSON, learning curves, samples, gammas, and
the README's table (rendered from the JSON alone, so the README can be checked against it).

    study.json      settings, machine, torch, commit, command; every run and a summary
    fid_curve.png   FID vs generator step, a line per configuration, a band for the seeds
    samples.png     a row per configuration: seed-0 run, the same noise and classes
    gamma.png       the attention layers' gamma over training (G and D)
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from sagan_plugin.errors import UsageError
from sagan_plugin.files import check_writable, json_bytes, write_together
from sagan_plugin.machine import describe

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURE_DPI = 100
CURVE_SIZE = (8.0, 5.0)  # inches: 800 x 500 pixels
GAMMA_SIZE = (10.0, 4.0)
SAMPLES_WIDTH = 10.0
SAMPLE_ROW_HEIGHT = 1.0
SAMPLES_PER_ROW = 10
TABLE_BEGIN = "<!-- study:{name} -->"
TABLE_END = "<!-- /study -->"
PICTURES = ("fid_curve.png", "samples.png", "gamma.png")
REPORT_FILE = "study.json"


def read_scalars(run_dir: Path) -> dict[str, Any]:
    """The FID curve and the attention gammas a run logged to TensorBoard, by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def series(folder: str, tag: str) -> list[list[float]]:
        path = Path(run_dir) / "data" / folder
        if not path.is_dir():
            return []
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        if tag not in events.Tags()["scalars"]:
            return []
        by_step = {e.step: e.value for e in events.Scalars(tag)}  # a resumed run: last wins
        return [[step, by_step[step]] for step in sorted(by_step)]

    return {"curve": series("eval_fid", "eval/fid"),
            "gamma": {"G": series("gamma_G", "attention"), "D": series("gamma_D", "attention")}}


def _spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict]) -> list[dict]:
    """Per configuration, in study order: mean and standard deviation over its seeds."""
    by_name: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_name[run["configuration"]].append(run)
    rows = []
    for name, group in by_name.items():
        first = group[0]
        fid, fid_std = _spread([r["fid"] for r in group])
        kid, kid_std = _spread([r["kid"] for r in group])
        speeds = [r["g_steps_per_s"] for r in group if r["g_steps_per_s"]]
        rows.append({
            "configuration": name, "group": first["group"], "model": first["model"],
            "num_classes": first["num_classes"], "seeds": len(group),
            "fid_mean": fid, "fid_std": fid_std, "kid_mean": kid, "kid_std": kid_std,
            "generator_steps": first["generator_steps"], "d_real_images": first["d_real_images"],
            "batch_size": first["batch_size"], "n_dis": first["n_dis"],
            "g_steps_per_s": statistics.fmean(speeds) if speeds else None,
            "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in group),
            "params_G": first["params_G"], "params_D": first["params_D"],
        })
    return rows


def results_table(payload: dict) -> str:
    """The README's markdown table for one study's JSON."""
    lines = ["| group | configuration | FID | KID x1e3 | G steps | D real images | "
             "G steps/s | G / D params |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in payload["summary"]:
        speed = f"{row['g_steps_per_s']:.2f}" if row["g_steps_per_s"] else "-"
        fid = _mean_and_spread(row["fid_mean"], row["fid_std"], row["seeds"], digits=2)
        kid = _mean_and_spread(1e3 * row["kid_mean"], 1e3 * row["kid_std"], row["seeds"], digits=1)
        lines.append(
            f"| {row['group']} | {row['configuration']} | {fid} | {kid} | "
            f"{row['generator_steps']} | {row['d_real_images']:,} | {speed} | "
            f"{row['params_G'] / 1e6:.2f}M / {row['params_D'] / 1e6:.2f}M |")
    machine = payload["machine"]
    where = machine.get("gpu") or f"{machine['cpu']} ({machine['cores']} cores)"
    settings = payload["settings"]
    lines.append("")
    over = (f"mean ± standard deviation over {settings['seeds']} seeds"
            if settings["seeds"] > 1 else "one seed")
    lines.append(f"{payload['study']}: {settings['data']}, {over}, "
                 f"FID/KID of n={settings['n']} images; {where}, "
                 f"torch {machine['torch']}, commit {_short(payload['commit'])}, "
                 f"{payload['date']}.")
    return "\n".join(lines)


def _mean_and_spread(mean: float, std: float, seeds: int, digits: int) -> str:
    """`mean ± std`; one seed has no spread to show."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if seeds > 1 else f"{mean:.{digits}f}"


def _short(commit: str | None) -> str:
    if not commit:
        return "unknown"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def readme_block(payload: dict) -> str:
    return "\n".join([TABLE_BEGIN.format(name=payload["study"]), results_table(payload),
                      TABLE_END])


def update_readme(text: str, payloads: list[dict]) -> str:
    """The README with each study's block (between its markers) rendered from its JSON."""
    for payload in payloads:
        begin = TABLE_BEGIN.format(name=payload["study"])
        if begin not in text:
            raise ValueError(f"the README has no {begin} ... {TABLE_END} block")
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(TABLE_END)
        text = head + readme_block(payload) + tail
    return text


def _figure(size: tuple[float, float]) -> Figure:
    """A figure outside pyplot: nothing global to close; savefig renders it with Agg."""
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=FIGURE_DPI)


def _mean_band(series: list[list[list[float]]]) -> tuple[list, list, list, list]:
    """Steps every seed reached, with the mean, min and max over seeds."""
    steps = sorted(set.intersection(*(set(s for s, _ in one) for one in series)))
    values = [[dict((s, v) for s, v in one)[step] for one in series] for step in steps]
    return (steps, [statistics.fmean(v) for v in values], [min(v) for v in values],
            [max(v) for v in values])


def _plot_mean_bands(axes: Axes, series_by_run: list[tuple[str, list]], **line_style: Any) -> bool:
    """Per configuration, the mean of its runs' [step, value] series with a min-max band over
    seeds; runs that logged nothing are skipped. Returns whether anything was drawn, as a
    legend with no lines is only noise."""
    by_name: dict[str, list] = defaultdict(list)
    for name, series in series_by_run:
        if series:
            by_name[name].append(series)
    for name, group in by_name.items():
        steps, mean, low, high = _mean_band(group)
        axes.plot(steps, mean, label=name, **line_style)
        axes.fill_between(steps, low, high, alpha=0.2)
    return bool(by_name)


def plot_curves(runs: list[dict]) -> Figure:
    figure = _figure(CURVE_SIZE)
    axes = figure.add_subplot()
    drawn = _plot_mean_bands(axes, [(r["configuration"], r["curve"]) for r in runs],
                             marker="o")
    axes.set(xlabel="generator step", ylabel="FID (training-time curve)",
             title="FID while training: mean over seeds, band from min to max")
    if drawn:
        axes.legend()
    axes.grid(alpha=0.3)
    return figure


def plot_gamma(runs: list[dict]) -> Figure:
    figure = _figure(GAMMA_SIZE)
    for k, net in enumerate(("G", "D")):
        axes = figure.add_subplot(1, 2, k + 1)
        drawn = _plot_mean_bands(axes, [(r["configuration"], r["gamma"][net]) for r in runs])
        axes.set(xlabel="generator step", ylabel="gamma", title=f"attention gamma in {net}")
        if drawn:
            axes.legend(fontsize="small")
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_samples(runs: list[dict], device: torch.device) -> Figure:
    """A row per configuration from its seed-0 run: noise seed 0, labels 0, 1, 2, ..."""
    from sagan_plugin.runs import load_generator
    from sagan_plugin.sample import sample, to_uint8

    first_runs = [r for r in runs if r["seed"] == 0]
    figure = _figure((SAMPLES_WIDTH, SAMPLE_ROW_HEIGHT * len(first_runs)))
    for k, run in enumerate(first_runs):
        netG = load_generator(Path(_run_dir(run)), device=device).netG
        images = to_uint8(sample(netG, SAMPLES_PER_ROW, seed=0, device=device))
        strip = torch.cat(list(images.permute(0, 2, 3, 1)), dim=1)  # (R, 10R, C)
        axes = figure.add_subplot(len(first_runs), 1, k + 1)
        axes.imshow(strip.numpy(), interpolation="nearest")
        axes.set_xticks([]), axes.set_yticks([])
        axes.set_ylabel(run["configuration"], rotation=0, ha="right", va="center")
    figure.subplots_adjust(left=0.25, right=0.98, top=0.98, bottom=0.02, hspace=0.1)
    return figure


def _run_dir(run: dict) -> str:
    return next(a.removeprefix("run_dir=") for a in run["argv"] if a.startswith("run_dir="))


def check_report(out: Path) -> None:
    """Prove that every file of the report can be written in out, before any is."""
    check_writable(out, "study output folder")
    for name in (*PICTURES, REPORT_FILE):
        if (out / name).is_dir():
            raise UsageError(f"cannot write {out / name}: a folder is in the way")


def write_report(name: str, study: DictConfig, runs: list[dict], out: Path,
                 device: torch.device, command: str, commit: str | None) -> dict:
    """study.json and the three pictures in out/, all or none (checked, then drawn, then
    written together: see write_together); returns the JSON's content. `commit` is the code
    of this invocation, which scored every run; each run records the ones that trained it
    (trained_at: one per training segment's commit, when it was resumed on other code)."""
    check_report(out)
    payload = {
        "study": name, "settings": OmegaConf.to_container(study), "command": command,
        "machine": describe(device), "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "budget": "every configuration trains the same number of generator steps; "
                  "d_real_images = steps x n_dis x batch size (the real images D sees)",
        "summary": summarize(runs), "runs": runs, "files": list(PICTURES),
    }
    figures = dict(zip(PICTURES, (plot_curves(runs), plot_samples(runs, device),
                                  plot_gamma(runs)), strict=True))
    # The JSON is renamed first: should a rename fail even so, no new picture is left
    # beside an old JSON (the record the README quotes).
    write_together({
        out / REPORT_FILE: lambda f: f.write(json_bytes(payload)),
        **{out / file: lambda f, figure=figure: figure.savefig(f, format="png", dpi=FIGURE_DPI)
           for file, figure in figures.items()}})
    print(results_table(payload))
    print(f"wrote {out}/{REPORT_FILE}, {', '.join(PICTURES)}")
    return payload
