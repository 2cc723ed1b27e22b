"""benchmarks/gpu_suite.sh on a CPU: its dry run plans every stage, bad input is one line;
and the benchmark scripts it runs, where a CPU can check them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, interruptible

SCRIPT = REPO / "benchmarks" / "gpu_suite.sh"
STAGE_COMMANDS = {
    "setup": ["pip install -q --no-index --no-deps", "-e .", "compact_inception.py unpack"],
    "bench": ["bench_attention.py --device cuda", "bench_train.py --device cuda", "--trace",
              "ddp_estimate.py --train-json"],
    "cpp": ["cmake -S cpp", "cpp_check.py --build cpp/build-cuda --device cuda",
            "bench_sample.py --device cuda --cpp-build"],
    "eval": ["bench_eval.py --device cuda"],
    "study": ["compare.py study=fashion_mnist_32", "device=cuda"],
}


def bash_array(name: str) -> list[str]:
    """The words of `NAME=(...)` in the script: what its checks expect to find."""
    match = re.search(rf"^{name}=\(([^)]*)\)", SCRIPT.read_text(), re.MULTILINE)
    assert match, name
    return match.group(1).split()


@pytest.fixture
def carried(tmp_path):
    """A stand-in for .whl/: empty files named as the real ones (the dry run checks names)."""
    root = tmp_path / "whl"
    for folder in ("build", "deb", "data", "fid"):
        (root / folder).mkdir(parents=True)
    for array, folder in (("BINARY_WHEELS", ""), ("SDIST_WHEELS", ""), ("BUILD_WHEELS", "build")):
        for pin in bash_array(array):
            name, version = pin.split("==")
            (root / folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").touch()
    for deb in bash_array("DEBS"):
        (root / "deb" / f"{deb}_1.0_amd64.deb").touch()
    for data in bash_array("FASHION_MNIST"):
        (root / "data" / f"{data}.xz").touch()
    weights = re.search(r"^WEIGHTS=\$WHL/(\S+)", SCRIPT.read_text(), re.MULTILINE).group(1)
    (root / weights).touch()
    return root


def suite(*args: str, whl=None, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "SUITE_HOST_PYTHON": sys.executable, **env}
    if whl is not None:
        environment["SUITE_WHL"] = str(whl)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=environment, timeout=60, cwd=REPO)


def test_dry_run_plans_every_stage(carried):
    result = suite("--dry-run", "setup", "bench", "cpp", "eval", "study", whl=carried)
    assert result.returncode == 0, result.stdout + result.stderr
    for stage, commands in STAGE_COMMANDS.items():
        for command in commands:
            assert command in result.stdout, (stage, command, result.stdout)
    assert "all checks passed" in result.stdout
    # The machine's torch stays: nothing the suite installs is torch itself.
    for line in result.stdout.splitlines():
        if "pip install" in line:
            assert "--no-deps" in line and not re.search(r"\btorch[=<>]", line), line


@pytest.mark.parametrize("stage", ["bench", "cpp", "eval", "study"])
def test_dry_run_of_one_stage_plans_setup_and_it(carried, stage):
    result = suite("--dry-run", stage, whl=carried)
    assert result.returncode == 0, result.stdout + result.stderr
    for command in STAGE_COMMANDS["setup"] + STAGE_COMMANDS[stage]:
        assert command in result.stdout, (command, result.stdout)
    others = [c for s, cs in STAGE_COMMANDS.items() if s not in ("setup", stage) for c in cs]
    assert not [c for c in others if c in result.stdout and c != "--trace"]


def test_a_rehearsal_on_cpu_runs_every_command_there(carried):
    result = suite("--dry-run", "bench", "cpp", "eval", "study", whl=carried, SUITE_DEVICE="cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    planned = [line for line in result.stdout.splitlines() if line.startswith("+ [")]
    assert planned and "cuda" not in "".join(planned)
    assert "--build cpp/build-cpu --device cpu" in result.stdout and "device=cpu" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["benchh"], "unknown stage 'benchh'"),
    (["--dry-run", "bench", "studdy"], "unknown stage 'studdy'"),
    (["--fast", "bench"], "unknown option '--fast'"),
    ([], "no stage given"),
    (["wheels", "bench"], "'wheels' runs alone"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = suite(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert result.stdout == ""


def test_dry_run_reports_a_missing_wheel(carried):
    next(carried.glob("torch_mimicry-*.whl")).unlink()
    (carried / "stray-1.0-py3-none-any.whl").touch()  # would be installed too: refused
    result = suite("--dry-run", "eval", whl=carried)
    assert result.returncode == 1
    assert "0 wheels of torch-mimicry==0.1.16" in result.stdout
    assert "exactly the pinned ones" in result.stdout


def test_dry_run_refuses_a_call_longer_than_the_limit(carried):
    result = suite("--dry-run", "bench", whl=carried, SUITE_CALL_MINUTES="12")
    assert result.returncode == 1 and "at most 10 minutes" in result.stdout


def test_dry_run_checks_the_study_options(carried):
    result = suite("--dry-run", "study", whl=carried, SUITE_STUDY_ARGS="steps=10 speed=9")
    assert result.returncode == 1 and "compare has no option speed=" in result.stdout


def test_wheels_dry_run_downloads_for_the_device_python(tmp_path):
    result = suite("--dry-run", "wheels", whl=tmp_path / "whl")
    if shutil.which("apt-get"):
        assert result.returncode == 0, result.stdout + result.stderr
    download = [line for line in result.stdout.splitlines() if "pip download" in line]
    assert download and all("--python-version 3.12" in line and "--no-deps" in line
                            and "manylinux" in line for line in download)
    assert "apt-get download" in result.stdout and "compact_inception.py pack" in result.stdout
    assert not re.search(r"\btorch==", result.stdout)
    assert not (tmp_path / "whl").exists()  # a dry run writes nothing


def _script_function(name: str, **env: str) -> subprocess.CompletedProcess:
    """One of the script's functions alone, run under `env` (empty values unset)."""
    body = re.search(rf"^{name}\(\) \{{.*?^\}}", SCRIPT.read_text(), re.MULTILINE | re.DOTALL)
    return subprocess.run(["bash", "-c", f"{body.group(0)}\n{name}"], capture_output=True,
                          text=True, env={k: v for k, v in {**os.environ, **env}.items() if v})


def _cuda_root(**env: str) -> str:
    result = _script_function("cuda_root", **env)
    return result.stdout.strip() if result.returncode == 0 else ""


def _fake_toolkit(root):
    (root / "include").mkdir(parents=True)
    (root / "include" / "cuda_runtime.h").touch()
    (root / "bin").mkdir()
    (root / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (root / "bin" / "nvcc").chmod(0o755)
    return root


def test_cuda_root_is_the_toolkit_not_the_folder_of_a_wrapper(tmp_path):
    """CMake and AOTInductor need the toolkit's root; a wrapper script named nvcc on the PATH
    (/usr/local/bin/nvcc on these images) must not make /usr/local pass for it."""
    toolkit = _fake_toolkit(tmp_path / "cuda-13.0")
    assert _cuda_root(CUDA_HOME=str(toolkit)) == str(toolkit)
    wrapper = tmp_path / "local" / "bin"
    wrapper.mkdir(parents=True)
    (wrapper / "nvcc").write_text(f"#!/bin/sh\nexec {toolkit}/bin/nvcc \"$@\"\n")
    (wrapper / "nvcc").chmod(0o755)
    found = _cuda_root(CUDA_HOME="", PATH=f"{wrapper}:/usr/bin:/bin")
    assert found != str(tmp_path / "local")
    assert found == "" or (Path(found) / "include" / "cuda_runtime.h").is_file()
    # A link to the real nvcc leads to its toolkit (where no standard one is installed).
    os.symlink(toolkit / "bin" / "nvcc", tmp_path / "nvcc")
    linked = _cuda_root(CUDA_HOME="", PATH=f"{tmp_path}:/usr/bin:/bin")
    assert linked in (str(toolkit), "/usr/local/cuda")


def test_results_come_back_without_checkpoints_or_exports(tmp_path):
    """Only figures, logs and images: a CUDA .pt2 and cpp_check's run would use up the 16 MiB
    that one returned file may have."""
    results = tmp_path / "work" / "results"
    kept = ["bench_train_cuda.json", "logs/cpp_build.log", "cpp/cpp_aoti.png",
            "cpp/run/config.yaml", "study/fid_curve.png"]
    dropped = ["cpp/run/checkpoints/netG/netG_20_steps.pth", "cpp/run/export/generator.pt2",
               "cpp/run/export/generator.pt", "cpp/cpp_aoti.pt", "trace/bench_train_trace.json.gz"]
    for name in kept + dropped:
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text(name)
    out = tmp_path / "out"
    result = _script_function("pack", WORK=str(tmp_path / "work"), R=str(results),
                              OUT_DIR=str(out))
    assert result.returncode == 0, result.stderr
    listing = subprocess.run(["tar", "-tzf", str(out / "results.tar.gz")], capture_output=True,
                             text=True, check=True).stdout.split()
    packed = {name.removeprefix("results/") for name in listing if not name.endswith("/")}
    assert packed == set(kept)
    assert (out / "bench_train_trace.json.gz").is_file()  # the trace comes back on its own


def _ddp_estimate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "ddp_estimate.py"),
                           "--resolution", "32", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_ddp_estimate_scales_a_measured_step_and_refuses_a_foreign_file(tmp_path):
    """4 and 8 GPUs on paper from bench_train's JSON: the fastest of *our* rows sets the step."""
    train = tmp_path / "bench_train_cuda.json"
    train.write_text(json.dumps({"batch": 64, "width": 4, "num_classes": 10,
                                 "machine": "test GPU", "rows": [
        {"variant": "host fp32", "ms": 5.0, "images_per_s": 12800.0, "flops_per_step": 1e9},
        {"variant": "ours bf16", "ms": 20.0, "images_per_s": 3200.0, "flops_per_step": 64e9}]}))
    out = tmp_path / "estimate.json"
    # The nets whose gradients travel are the measured run's: no --width or --num-classes.
    result = _ddp_estimate("--train-json", str(train), "--gpus", "1", "4", "--bus-gbps", "1",
                           "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert "ngf=ndf=4, 10 classes" in result.stdout
    one, four = report["rows"]
    gradients = report["bytes_per_step"]["all_reduce"]
    assert report["step"]["variant"] == "ours bf16" and report["flops_per_image"] == 1e9
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=REPO, check=True).stdout.strip()
    assert report["commit"].removesuffix("-dirty") == head
    assert "ddp_estimate.py" in report["command"] and "--train-json" in report["command"]
    assert one["comm_ms"] == 0 and one["weak_efficiency"] == 1
    assert four["comm_ms"] == pytest.approx(
        1e3 * (gradients * 1.5 + report["bytes_per_step"]["broadcast"]) / 1e9)
    assert four["weak_images_per_s"] == pytest.approx(4 * 64 / (20.0 + four["comm_ms"]) * 1e3)
    # The paper's global batch 256 over 4 GPUs: 64 each, the measured step plus communication.
    assert four["strong_ms"] == pytest.approx(20.0 + four["comm_ms"])
    assert four["strong_speedup"] == pytest.approx(4 * 20.0 / four["strong_ms"])
    assert four["strong_basis"] == "assumed: linear in batch"  # the JSON has no batch scan

    result = _ddp_estimate("--train-json", str(train), "--width", "8", "--json", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "measured width 4, not --width 8" in lines[-1]

    train.write_text("{}")
    result = _ddp_estimate("--train-json", str(train), "--json", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "is not a bench_train JSON" in lines[0]


def test_strong_scaling_uses_the_batch_scan_where_it_measured_the_per_gpu_batch(tmp_path):
    """The paper's 256 on 4 and 8 GPUs is 64 and 32 per GPU: bench_train's scan timed those."""
    train = tmp_path / "bench_train_cuda.json"
    train.write_text(json.dumps({"batch": 256, "width": 4, "num_classes": 10, "machine": {
        "gpu": "test GPU", "torch": "2.11"}, "rows": [
            {"variant": "ours bf16 channels_last", "ms": 120.0, "images_per_s": 2133.0,
             "flops_per_step": 1e9},
            {"variant": "ours bf16 cl compile", "ms": 100.0, "images_per_s": 2560.0,
             "flops_per_step": 1e9}],
        "batch_scan": {"variant": "ours bf16 channels_last", "rows": [
            {"batch": 256, "ms": 120.0}, {"batch": 64, "ms": 40.0}]}}))
    out = tmp_path / "estimate.json"
    result = _ddp_estimate("--train-json", str(train), "--gpus", "1", "4", "8", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "on test GPU, torch 2.11" in result.stdout
    one, four, eight = json.loads(out.read_text())["rows"]
    assert one["weak_ms"] == 100.0 and one["strong_ms"] == 120.0  # weak: the fastest variant
    assert one["strong_basis"] == "measured: ours bf16 channels_last, batch 256"
    assert four["strong_ms"] == pytest.approx(40.0 + four["comm_ms"])
    assert four["strong_speedup"] == pytest.approx(120.0 / four["strong_ms"])
    assert four["strong_basis"] == "measured: ours bf16 channels_last, batch 64"
    # batch 32 was not scanned: the fastest variant's 256-batch step, shrunk in proportion
    assert eight["strong_ms"] == pytest.approx(100.0 * 32 / 256 + eight["comm_ms"])
    assert eight["strong_basis"] == "assumed: linear in batch"


def test_the_commit_outside_git_comes_from_the_environment(tmp_path, monkeypatch):
    """A GPU machine gets a copy of the tree without .git: SAGAN_COMMIT names the commit."""
    from sagan_plugin.machine import git_commit

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.delenv("SAGAN_COMMIT", raising=False)
    assert git_commit(tmp_path) is None
    monkeypatch.setenv("SAGAN_COMMIT", "0123abc")
    assert git_commit(tmp_path) == "0123abc"


def test_ddp_estimate_without_a_measurement_assumes_the_mfu_goal(tmp_path):
    out = tmp_path / "estimate.json"
    result = _ddp_estimate("--width", "4", "--num-classes", "10", "--assume-mfu", "0.5",
                           "--peak-tflops", "100", "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    step = report["step"]
    assert "assumed" in step["variant"] and step["batch"] == 256
    assert step["ms"] == pytest.approx(1e3 * report["flops_per_image"] * 256 / (0.5 * 100e12))
    assert "on paper" in result.stdout

    result = _ddp_estimate("--width", "4", "--num-classes", "0", "--no-flops", "--json", str(out))
    assert result.returncode == 0 and "ngf=ndf=4, 0 classes" in result.stdout, result.stderr


def _running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" not in status.read_text()


def _is_case(pid: str) -> bool:
    """Whether a process is one of bench_attention's measuring children (`--child SPEC`)."""
    try:
        return b"--child" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # gone already
        return False


@pytest.mark.parametrize("attempt", range(3))
def test_an_interrupted_benchmark_ends_with_one_line_and_leaves_nothing(tmp_path, attempt):
    """The suite stops an overlong stage with SIGINT: the log must end with what happened, and
    no measuring child may run on. The signal goes at once when the first child appears, which
    mostly lands while Popen is still starting it (subprocess.run then cannot kill it)."""
    out = tmp_path / "attention.json"
    process = subprocess.Popen([sys.executable, "benchmarks/bench_attention.py", "--device", "cpu",
                                "--json", str(out)], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    deadline = time.monotonic() + 120
    # Its first case starts. (Not any child: a CUDA torch 2.14 runs ldconfig while importing.)
    while not (child := [pid for pid in children.read_text().split() if _is_case(pid)]):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == \
        "stopped: bench_attention.py was interrupted before it finished; it wrote no JSON"
    assert not out.exists()
    time.sleep(0.2)
    assert not _running(int(child[0])), "the benchmark's measuring child outlived it"



def _bench_train(monkeypatch, tmp_path, fails) -> tuple[dict, dict]:
    """bench_train's main with `measure` stubbed: which variants fail, and the FLOPs each was
    handed. The one GPU call must not lose every row to one variant's out-of-memory error."""
    import torch

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_train

    handed = {}

    def measure(variant, width, batch, num_classes, device, repeats, warmup, flops):
        handed[variant.name] = flops
        if fails(variant):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"variant": variant.name, "ms": 10.0, "images_per_s": batch / 0.01,
                "flops_per_step": flops or 1e9 * (2 if variant.precision == "bf16" else 1)}, None

    out = tmp_path / "train.json"
    monkeypatch.setattr(bench_train, "measure", measure)
    monkeypatch.setattr(bench_train, "bf16_matmul_flops", lambda device: 1e12)
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--device", "cpu", "--batch", "4",
                                      "--processes", "1", "--compile", "--json", str(out)])
    assert bench_train.main() == 1  # a failed variant fails the step; the JSON has the rest
    return json.loads(out.read_text()), handed


def test_bench_train_keeps_every_other_row_when_a_variant_fails(monkeypatch, tmp_path, capsys):
    report, handed = _bench_train(monkeypatch, tmp_path, lambda v: v.name == "host fp32")
    host, *ours = report["rows"]
    assert host == {"variant": "host fp32", "error": "CUDA out of memory. Tried to allocate "
                    "2.00 GiB"}
    assert "host fp32: FAILED: CUDA out of memory" in capsys.readouterr().out
    assert all(row["images_per_s"] == 400.0 and "vs_host" not in row for row in ours)
    assert ours[-1]["variant"] == "ours bf16 cl compile"
    # the compiled step is handed its eager twin's count (bf16, channels_last), not counted,
    # and so is the flash one (its zero-padded query and key are no useful work)
    assert handed["ours bf16 cl compile"] == 2e9 and ours[-1]["mfu"] == 2e9 * 100 / 1e12
    assert handed["ours bf16 cl flash"] == 2e9 and handed["ours bf16 channels_last"] is None

    report, _ = _bench_train(monkeypatch, tmp_path, lambda v: v.impl == "ours")
    assert [row.get("error") is None for row in report["rows"]] == [True] + [False] * 5
    assert report["batch_scan"] is None and report["scaling"] == []


def test_bench_sample_times_the_other_paths_when_one_fails(monkeypatch, capsys):
    """A CUDA graph that will not capture, or a batch out of memory, costs its own cell only."""
    import types

    import torch

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_sample

    def out_of_memory(batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    paths = {"Python eager": lambda b: lambda z, y: z * 2, "CUDA graph bf16": out_of_memory,
             "C++ AOTInductor": lambda b: lambda z, y: z + 1}
    netG = types.SimpleNamespace(nz=4, num_classes=10)
    rates, failed = bench_sample.time_paths(paths, 8, netG, torch.device("cpu"), budget_s=0.01)
    assert set(rates) == {"Python eager", "C++ AOTInductor"}
    assert all(rate > 0 for rate in rates.values())
    assert failed == {"CUDA graph bf16": "CUDA out of memory. Tried to allocate 1.00 GiB"}
    assert "CUDA graph bf16 at batch 8: FAILED: CUDA out of memory" in capsys.readouterr().err


def test_bench_sample_keeps_the_other_paths_when_an_export_fails(monkeypatch, tmp_path, capsys):
    """An AOTInductor package that will not compile or link costs its own column only."""
    import types


    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_sample

    from sagan_plugin.export import load_export

    export = bench_sample.export_module

    def export_module(eager, folded, fmt, out, provenance, max_batch=None):
        if fmt == "aoti":
            raise RuntimeError("/usr/bin/ld: cannot find -lcuda\nmore")
        return export(eager, folded, fmt, out, provenance, max_batch)

    class Generator:  # the pybind11 module's, on the TorchScript file alone
        def __init__(self, path: str, device: str) -> None:
            self.forward = load_export(path, "torchscript")

    monkeypatch.setattr(bench_sample, "export_module", export_module)
    monkeypatch.setattr(bench_sample, "cpp_module",
                        lambda build: types.SimpleNamespace(Generator=Generator))
    out = tmp_path / "sample.json"
    monkeypatch.setattr(sys, "argv", ["bench_sample.py", "--device", "cpu", "--batches", "1,2",
                                      "--budget", "0.01", "--json", str(out)])
    assert bench_sample.main() == 1
    report = json.loads(out.read_text())
    assert {b: set(rates) for b, rates in report["images_per_s"].items()} == \
        {b: {"Python eager", "C++ TorchScript"} for b in ("1", "2")}
    assert report["failed"] == {f"C++ AOTInductor, batch {b}": "export failed: /usr/bin/ld: "
                                "cannot find -lcuda" for b in (1, 2)}
    assert "C++ AOTInductor: export FAILED: /usr/bin/ld: cannot find -lcuda" in \
        capsys.readouterr().err


def test_cpp_check_says_which_command_failed_and_still_writes_its_json(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import cpp_check

    with pytest.raises(cpp_check.CommandFailed) as failed:
        cpp_check.cli("export", f"run={tmp_path / 'none'}", "format=aoti")
    assert str(failed.value).startswith("sagan-plugin export: error: ")
    assert str(tmp_path / "none") in str(failed.value)

    def cli(*args):
        raise cpp_check.CommandFailed("sagan-plugin train: error: out of memory")

    monkeypatch.setattr(cpp_check, "cli", cli)
    monkeypatch.setattr(sys, "argv", ["cpp_check.py", "--device", "cpu", "--work", str(tmp_path)])
    assert cpp_check.main() == 1
    report = json.loads((tmp_path / "cpp_check.json").read_text())
    assert report["pass"] is False and report["formats"] == {}
    assert report["error"] == "sagan-plugin train: error: out of memory"


def test_an_interrupted_benchmark_keeps_what_it_measured_but_never_a_finished_result(
        monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import _machine

    out = tmp_path / "bench.json"

    def interrupted(so_far):
        def main():
            _machine.keep_if_interrupted(out, so_far)
            raise KeyboardInterrupt
        with pytest.raises(SystemExit) as stopped:
            _machine.run_main(main)
        assert stopped.value.code == 130
        return capsys.readouterr().err.strip().splitlines()[-1]

    monkeypatch.setattr(_machine, "_so_far", None)
    assert interrupted(lambda: None).endswith("it wrote no JSON") and not out.exists()
    assert interrupted(lambda: {"rows": [1]}).endswith(f"what it measured is in {out}")
    assert {k: v for k, v in json.loads(out.read_text()).items()
            if k in ("rows", "interrupted")} == {"rows": [1], "interrupted": True}
    finished = out.read_text()
    assert interrupted(lambda: {"rows": [2]}).endswith("it wrote no JSON")
    assert out.read_text() == finished


def test_bench_train_interrupted_keeps_the_rows_it_measured(monkeypatch, tmp_path):
    """The suite's timeout stops bench_train with SIGINT, say while it compiles: the rows of
    the variants before must reach the JSON that ddp_estimate and goals.py read."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import _machine
    import bench_train

    def measure(variant, width, batch, num_classes, device, repeats, warmup, flops):
        if variant.precision == "bf16":
            raise KeyboardInterrupt
        return {"variant": variant.name, "ms": 10.0, "images_per_s": batch / 0.01,
                "flops_per_step": 1e9}, None

    out = tmp_path / "train.json"
    monkeypatch.setattr(_machine, "_so_far", None)
    monkeypatch.setattr(bench_train, "measure", measure)
    monkeypatch.setattr(bench_train, "bf16_matmul_flops", lambda device: 1e12)
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--device", "cpu", "--batch", "4",
                                      "--json", str(out)])
    with pytest.raises(SystemExit):
        _machine.run_main(bench_train.main)
    report = json.loads(out.read_text())
    assert report["interrupted"] is True and report["batch_scan"] is None
    assert [(row["variant"], row["vs_host"]) for row in report["rows"]] == \
        [("host fp32", 1.0), ("ours fp32", 1.0)]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_link_libcuda_lets_the_linker_find_a_driver_that_has_only_libcuda_so_1(tmp_path):
    """AOTInductor links CUDA packages with -lcuda; a driver folder holding only libcuda.so.1
    (no development link, no toolkit stubs) must still link."""
    driver = tmp_path / "driver"
    driver.mkdir()
    subprocess.run(["g++", "-shared", "-fPIC", "-x", "c++", "-", "-Wl,-soname,libcuda.so.1",
                    "-o", str(driver / "libcuda.so.1")], input="int cuInit(int) { return 0; }",
                   text=True, check=True)
    link = "echo 'int main() { return 0; }' | g++ -x c++ - -lcuda -o /dev/null"
    if subprocess.run(["bash", "-c", link], capture_output=True).returncode == 0:
        pytest.skip("this machine links -lcuda by itself")
    body = re.search(r"^link_libcuda\(\) \{.*?^\}", SCRIPT.read_text(), re.MULTILINE | re.DOTALL)
    env = {**os.environ, "SUITE_DRIVER_DIRS": str(driver),
           "SUITE_LIBCUDA_LINK": str(tmp_path / "link")}
    done = subprocess.run(["bash", "-c", f"{body.group(0)}\nlink_libcuda && {link}"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"links through {tmp_path / 'link'}/libcuda.so -> {driver}/libcuda.so.1" in done.stdout
    env["SUITE_DRIVER_DIRS"] = str(tmp_path / "none")
    done = subprocess.run(["bash", "-c", f"{body.group(0)}\nlink_libcuda"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "WARNING: g++ cannot link -lcuda" in done.stdout


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))


def test_ddp_estimate_volumes_and_scaling_by_hand(benchmarks):
    """n_dis=2: D's gradients move twice per step and G's once; D's buffers go out at two
    forwards per D step, G's at one. At 1 GB/s on 4 GPUs: a ring sends 2*3/4 = 1.5 of the
    20 MB, 30 ms, plus 0.164 ms of broadcasts."""
    import ddp_estimate

    counts = {"parameters_G": 1_000_000, "buffers_G": 1_000,
              "parameters_D": 2_000_000, "buffers_D": 10_000}
    volume = ddp_estimate.bytes_per_step(counts, n_dis=2)
    assert volume == {"all_reduce": 4 * (2 * 2_000_000 + 1_000_000),
                      "broadcast": 4 * (1_000 + 2 * 2 * 10_000)}
    one, four = ddp_estimate.scaling_rows(volume, [1, 4], 1e9, {"ms": 20.0, "batch": 64}, 256)
    assert (one["all_reduce_mb"], one["comm_ms"], one["weak_efficiency"]) == (0.0, 0.0, 1.0)
    assert four["all_reduce_mb"] == 20.0 and four["ring_mb_per_gpu"] == 30.0
    assert four["comm_ms"] == pytest.approx(30.164)
    assert four["weak_ms"] == pytest.approx(50.164)
    assert four["weak_efficiency"] == pytest.approx(20 / 50.164)
    assert four["weak_images_per_s"] == pytest.approx(4 * 64 * 1e3 / 50.164)
    assert four["strong_ms"] == pytest.approx(20.0 + 30.164)  # 64 a GPU: the measured step
    assert four["strong_speedup"] == pytest.approx(80.0 / 50.164)


def test_ddp_estimate_steps_from_the_rows_that_have_figures(benchmarks, tmp_path):
    """A variant that failed (out of memory) has no figures: the fastest of the others counts."""
    import ddp_estimate

    train = tmp_path / "bench_train_cuda.json"
    train.write_text(json.dumps({"batch": 64, "width": 4, "machine": "test GPU", "rows": [
        {"variant": "host fp32", "ms": 5.0, "images_per_s": 12800.0, "flops_per_step": 1e9},
        {"variant": "ours bf16", "ms": 20.0, "images_per_s": 3200.0, "flops_per_step": 64e9},
        {"variant": "ours bf16 cl compile", "error": "CUDA out of memory"}]}))
    step = ddp_estimate.measured_step(train)
    assert (step["variant"], step["ms"], step["flops_per_image"]) == ("ours bf16", 20.0, 1e9)


def test_median_seconds_is_the_median_after_the_warmup(benchmarks, monkeypatch):
    """On a clock that each call advances by the next of 100, 100, 1, 2, 9 seconds: two
    warm-up calls (100 s each) untimed, then the median of 1, 2 and 9 (not their mean, 4)."""
    import types

    import _machine
    import torch

    clock = [0.0]
    durations = [100.0, 100.0, 1.0, 2.0, 9.0]

    def call():
        clock[0] += durations.pop(0)

    monkeypatch.setattr(_machine, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    assert _machine.median_seconds(call, torch.device("cpu"), repeats=3, warmup=2) == 2.0
    assert durations == []
    monkeypatch.setattr(_machine, "median_seconds", lambda fn, device, repeats: 0.5)
    # MFU's denominator: a size^3 product is 2 size^3 FLOPs (a multiply and an add)
    assert _machine.bf16_matmul_flops(torch.device("cpu"), size=64) == 2 * 64**3 / 0.5


def test_print_table_pads_every_column_to_its_widest_cell(benchmarks, capsys):
    import _machine

    _machine.print_table(["goal", "n"], [["a", "1.5x"], ["longer", "10"]])
    assert capsys.readouterr().out.splitlines() == [
        "goal    n   ", "------  ----", "a       1.5x", "longer    10"]


def _cpp_check(monkeypatch, tmp_path, python_off: dict, module_off: dict, failing=(),
               stopped=()):
    """cpp_check's main with the run, the exports, the program and the module stubbed: each
    format's program gives the Python recipe's images plus python_off[fmt] (float32) or the
    TF32 recipe's plus 0.125, the module the program's plus module_off[fmt]."""
    import types

    import torch

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import _machine
    import cpp_check

    recipes = [torch.zeros(24, 3, 4, 4), torch.full((24, 3, 4, 4), 0.25)]  # float32, then TF32

    def cli(command, *args):
        fmt = next((a.removeprefix("format=") for a in args if a.startswith("format=")), None)
        if fmt in failing:
            raise cpp_check.CommandFailed(f"sagan-plugin export: error: {fmt} failed")
        if (fmt or command) in stopped:  # the suite's timeout -s INT
            raise KeyboardInterrupt
        return 0.5

    def run(cmd, **kwargs):
        fmt = "aoti" if cmd[cmd.index("--model") + 1].endswith(".pt2") else "torchscript"
        tensor = (recipes[0] + python_off[fmt]) if "--no-tf32" in cmd else recipes[1] + 0.125
        torch.save(tensor, cmd[cmd.index("--save-tensor") + 1])
        return subprocess.CompletedProcess(cmd, 0, "24 images in 0.1 s, 240 images/s", "")

    class Generator:
        def __init__(self, path: str, device: str) -> None:
            self.fmt = "aoti" if path.endswith(".pt2") else "torchscript"

        def sample(self, n, seed, classes, batch):
            return recipes[0] + python_off[self.fmt] + module_off[self.fmt]

    monkeypatch.setattr(cpp_check, "cli", cli)
    monkeypatch.setattr(cpp_check, "load_generator",
                        lambda run, device: types.SimpleNamespace(netG=None))
    sampled = iter(recipes)
    monkeypatch.setattr(cpp_check, "sample", lambda *args, **kwargs: next(sampled))
    monkeypatch.setattr(cpp_check, "subprocess", types.SimpleNamespace(run=run))
    monkeypatch.setitem(sys.modules, "sagan_sample_ext", types.SimpleNamespace(
        Generator=Generator))
    monkeypatch.setattr(sys, "argv", ["cpp_check.py", "--device", "cpu", "--work", str(tmp_path)])
    monkeypatch.setattr(_machine, "_so_far", None)
    with pytest.raises(SystemExit) as ended:
        _machine.run_main(cpp_check.main)
    report = tmp_path / "cpp_check.json"
    return ended.value.code, json.loads(report.read_text()) if report.exists() else None


def test_cpp_check_passes_only_when_every_format_is_within_tolerance(monkeypatch, tmp_path):
    """Twice the CPU tolerance from Python (or between module and program) fails its format,
    and one failed format fails the check, whichever format comes last."""
    from sagan_plugin.export import CHECK_TOLERANCE

    over = 2 * CHECK_TOLERANCE["cpu"]
    code, report = _cpp_check(monkeypatch, tmp_path, {"torchscript": over, "aoti": 0.0},
                              {"torchscript": 0.0, "aoti": 0.0})
    assert code == 1 and report["pass"] is False
    assert [report["formats"][f]["pass"] for f in ("torchscript", "aoti")] == [False, True]
    assert report["formats"]["torchscript"]["max_abs_vs_python"] == pytest.approx(over)
    # the program as a user runs it, against the Python recipe with the same TF32 default
    assert report["formats"]["aoti"]["max_abs_vs_python_tf32"] == 0.125

    code, report = _cpp_check(monkeypatch, tmp_path, {"torchscript": 0.0, "aoti": 0.0},
                              {"torchscript": 0.0, "aoti": over})
    assert code == 1 and report["pass"] is False
    assert [report["formats"][f]["pass"] for f in ("torchscript", "aoti")] == [True, False]

    code, report = _cpp_check(monkeypatch, tmp_path, {"torchscript": 0.0, "aoti": 0.0},
                              {"torchscript": 0.0, "aoti": 0.0}, failing=("aoti",))
    assert code == 1 and report["pass"] is False
    assert report["formats"]["aoti"] == {"error": "sagan-plugin export: error: aoti failed"}

    # Stopped after TorchScript passed: one format is not both, and the file says it stopped.
    code, report = _cpp_check(monkeypatch, tmp_path, {"torchscript": 0.0, "aoti": 0.0},
                              {"torchscript": 0.0, "aoti": 0.0}, stopped=("aoti",))
    assert code == 130 and report["pass"] is False and report["interrupted"] is True
    assert list(report["formats"]) == ["torchscript"]

    code, report = _cpp_check(monkeypatch, tmp_path, {"torchscript": 0.0, "aoti": 0.0},
                              {"torchscript": 0.0, "aoti": 0.0})
    assert code == 0 and report["pass"] is True and "interrupted" not in report


def test_an_interrupted_cpp_check_says_where_its_json_is_and_leaves_no_earlier_verdict(
        monkeypatch, tmp_path, capsys):
    """Stopped after TorchScript, cpp_check's own JSON holds that format: the log must point to
    it. Stopped while training, an earlier check's passing JSON must not read as this one's."""
    fine = {"torchscript": 0.0, "aoti": 0.0}
    code, report = _cpp_check(monkeypatch, tmp_path, fine, fine, stopped=("aoti",))
    assert code == 130 and list(report["formats"]) == ["torchscript"]
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "stopped: cpp_check.py was interrupted before it finished; what it measured is in "
        f"{tmp_path / 'cpp_check.json'}")

    assert _cpp_check(monkeypatch, tmp_path, fine, fine)[1]["pass"] is True
    code, report = _cpp_check(monkeypatch, tmp_path, fine, fine, stopped=("train",))
    assert code == 130 and report is None
    assert capsys.readouterr().err.strip().endswith("it wrote no JSON")


def _check_flags(*words: str) -> str:
    """gpu_suite.sh's check_flags on words, run alone: what it reports."""
    body = re.search(r"^check_flags\(\) \{.*?^\}", SCRIPT.read_text(), re.MULTILINE | re.DOTALL)
    script = f'problem() {{ echo "CHECK FAILED: $*"; }}\n{body.group(0)}\ncheck_flags "$@"'
    return subprocess.run(["bash", "-c", script, "check_flags", *words], capture_output=True,
                          text=True, cwd=REPO, check=True).stdout


def test_dry_run_flag_check_finds_an_undeclared_flag_and_a_missing_script():
    assert _check_flags("python3", "benchmarks/goals.py", "--results", "R", "--device=cuda") == ""
    assert _check_flags("python3", "benchmarks/goals.py", "--results", "R", "--speed", "9") == \
        "CHECK FAILED: benchmarks/goals.py does not declare --speed\n"
    assert "CHECK FAILED: missing script benchmarks/gone.py" in _check_flags(
        "python3", "benchmarks/gone.py")


@pytest.mark.parametrize("remove, said", [
    ("deb/libstb0_1.0_amd64.deb", "missing {whl}/deb/libstb0_*.deb"),
    ("data/t10k-labels-idx1-ubyte.xz", "missing {whl}/data/t10k-labels-idx1-ubyte.xz"),
    ("fid/inception_10bit.xz", "missing {whl}/fid/inception_10bit.xz"),
    (None, "holds 2 wheels of torch-mimicry==0.1.16"),
    (None, "what travels is over 64 MiB"),
])
def test_dry_run_reports_what_is_missing_or_too_much(carried, remove, said):
    if remove:
        (carried / remove).unlink()
    elif "wheels" in said:
        (carried / "torch_mimicry-0.1.16-py2-none-any.whl").touch()  # a second one
    else:
        big = carried / "fid" / "big.bin"
        big.touch()
        os.truncate(big, 65 * 2**20)  # sparse: du -sb counts its 65 MiB all the same
    result = suite("--dry-run", "eval", whl=carried)
    assert result.returncode == 1, result.stdout
    assert said.format(whl=carried) in result.stdout, result.stdout


def test_bench_start_finds_the_hook_imported_at_every_start(monkeypatch) -> None:
    """The start-up benchmark reads the hook's import from `python -X importtime`: installed,
    the hook is imported by site, before any user code, and costs a part of site's time."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_start

    times = bench_start.import_times(starts=1)
    assert 0 < times["hook_import_us"] < times["site_us"]
