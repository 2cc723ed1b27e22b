"""The C++ sampler (program and pybind11 module) against the Python recipe: the same images,
its outputs, and the checks of its inputs (tests/test_cpp_bad_input.py: damaged exports and bad
arguments)."""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from cpp_helpers import ERROR_LINE, MODELS, PROGRAM, assert_clean_error, run_ext, run_program
from PIL import Image

from sagan_plugin.export import sidecar_path
from sagan_plugin.runs import load_generator
from sagan_plugin.sample import image_grid, sample, to_uint8


@pytest.mark.parametrize("fmt, flags", [("torchscript", []), ("aoti", []),
                                        ("aoti", ["--no-tf32"])])  # a CUDA setting: no change
def test_program_matches_python_recipe(program, conditional_run, tmp_path, fmt, flags):
    model = conditional_run / "export" / MODELS[fmt]
    result = run_program("--model", model, "--n", 11, "--seed", 4, "--classes", "9,0,3",
                         "--batch", 4, "--device", "cpu", "--out", tmp_path / "grid.png",
                         "--save-tensor", tmp_path / "images.pt", *flags)
    assert result.returncode == 0, result.stderr
    assert "images/s" in result.stdout
    expected = sample(load_generator(conditional_run).netG, 11, 4, [9, 0, 3], batch=4)
    images = torch.load(tmp_path / "images.pt")
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)
    # Same tensor -> same PNG pixels (a 1e-5 difference may flip a rounding by one level).
    grid = np.asarray(Image.open(tmp_path / "grid.png")).astype(int)
    assert np.abs(grid - image_grid(to_uint8(expected)).numpy()).max() <= 1


def test_program_defaults_are_the_python_recipes(program, ext, conditional_run, tmp_path):
    # No --n, --seed, --classes or --batch: as `sagan-plugin sample`, 64 images of seed 0 with
    # label i % num_classes, in a grid of 8 x 8; the module's sample() has the same defaults.
    model = conditional_run / "export" / "generator.pt"
    result = run_program("--model", model, "--device", "cpu", "--out", tmp_path / "grid.png",
                         "--save-tensor", tmp_path / "images.pt")
    assert result.returncode == 0, result.stderr
    expected = sample(load_generator(conditional_run).netG, 64, 0)
    images = torch.load(tmp_path / "images.pt")
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)
    grid = np.asarray(Image.open(tmp_path / "grid.png")).astype(int)
    expected_grid = image_grid(to_uint8(expected)).numpy()
    assert grid.shape == expected_grid.shape and np.abs(grid - expected_grid).max() <= 1
    assert torch.equal(ext.Generator(str(model), "cpu").sample(64), images)


def test_program_writes_one_png_per_image(program, unconditional_run, tmp_path):
    model = unconditional_run / "export" / "generator.pt"
    # Missing folders are made, for the images and for the tensor alike.
    result = run_program("--model", model, "--n", 3, "--seed", 1, "--out", f"{tmp_path}/pngs/",
                         "--save-tensor", tmp_path / "new" / "images.pt")
    assert result.returncode == 0, result.stderr
    images = torch.load(tmp_path / "new" / "images.pt")
    torch.testing.assert_close(images, sample(load_generator(unconditional_run).netG, 3, 1),
                               rtol=0, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == [
        "000000.png", "000001.png", "000002.png"]
    for i, pixels in enumerate(to_uint8(images).permute(0, 2, 3, 1)):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "pngs" / f"{i:06d}.png")),
                              pixels.numpy())


def test_an_existing_folder_without_a_slash_gets_one_png_per_image(program, unconditional_run,
                                                                    tmp_path):
    (tmp_path / "pngs").mkdir()
    result = run_program("--model", unconditional_run / "export" / "generator.pt", "--n", 2,
                         "--out", tmp_path / "pngs")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["000000.png", "000001.png"]


def legacy_copy(source: Path, legacy: Path, **changes: object) -> Path:
    """A TorchScript export as made before the shape was embedded, its sidecar edited."""
    torch.jit.load(str(source)).save(str(legacy))  # no sagan.json inside, as before
    embedded = {"sagan.json": ""}
    torch.jit.load(str(legacy), _extra_files=embedded)
    assert embedded["sagan.json"] in ("", b"")
    sidecar = json.loads(sidecar_path(source).read_text())
    sidecar["sha256"] = hashlib.sha256(legacy.read_bytes()).hexdigest()
    sidecar_path(legacy).write_text(json.dumps(sidecar | changes))
    return legacy


def test_an_export_made_before_the_shape_was_embedded_still_samples(program, conditional_run,
                                                                     tmp_path):
    source = conditional_run / "export" / "generator.pt"
    legacy = legacy_copy(source, tmp_path / "legacy.pt")
    for model, name in ((source, "now.pt"), (legacy, "legacy_images.pt")):
        result = run_program("--model", model, "--n", 3, "--save-tensor", tmp_path / name)
        assert result.returncode == 0, result.stderr
    assert torch.equal(torch.load(tmp_path / "now.pt"), torch.load(tmp_path / "legacy_images.pt"))


@pytest.mark.parametrize("fmt", ["torchscript", "aoti"])
def test_python_module_returns_the_programs_tensor(ext, conditional_run, tmp_path, fmt):
    model = conditional_run / "export" / MODELS[fmt]
    result = run_program("--model", model, "--n", 6, "--seed", 2, "--class", 5, "--batch", 4,
                         "--save-tensor", tmp_path / "images.pt")
    assert result.returncode == 0, result.stderr
    generator = ext.Generator(str(model), "cpu")
    assert generator.info["num_classes"] == 10 and generator.info["format"] == fmt
    sidecar = json.loads(sidecar_path(model).read_text())
    assert generator.info == {key: sidecar[key] for key in generator.info}
    images = generator.sample(6, seed=2, classes=[5], batch=4)
    assert torch.equal(images, torch.load(tmp_path / "images.pt"))
    assert torch.equal(ext.image_grid(ext.to_uint8(images)), image_grid(to_uint8(images)))
    with pytest.raises(ValueError, match="class 10 is out of range"):
        generator.sample(2, classes=[10])


@pytest.mark.parametrize("fmt", ["torchscript", "aoti"])
def test_forward_checks_its_inputs_before_running_the_model(ext, conditional_run, fmt):
    # An out-of-range label in an AOTInductor kernel aborts the process: refused first.
    model = conditional_run / "export" / MODELS[fmt]
    lines = run_ext(ERROR_LINE + f"""
g = E.Generator({str(model)!r}, "cpu")
z = torch.randn(2, 128)
error(lambda: g.forward(z, torch.full((2,), 10)))
error(lambda: g.forward(z, torch.full((2,), -1)))
error(lambda: g.forward(z, torch.tensor([9, -1])))
error(lambda: g.forward(z, torch.zeros(2)))
error(lambda: g.forward(z, torch.zeros(3, dtype=torch.long)))
error(lambda: g.forward(torch.randn(2, 64), torch.zeros(2, dtype=torch.long)))
error(lambda: g.forward(z.double(), torch.zeros(2, dtype=torch.long)))
print(tuple(g.forward(torch.randn(0, 128), torch.zeros(0, dtype=torch.long)).shape))
print(tuple(g.forward(torch.randn(128, 2).t(), torch.full((2,), 9)).shape))
""")
    assert lines == [
        "UsageError 1 y holds label 10, out of range: the model has 10 classes (0..9)",
        "UsageError 1 y holds label -1, out of range: the model has 10 classes (0..9)",
        "UsageError 1 y holds label -1, out of range: the model has 10 classes (0..9)",
        "UsageError 1 y must be an int64 tensor of shape (2,), as many labels as z has rows, "
        "got Float of shape [2]",
        "UsageError 1 y must be an int64 tensor of shape (2,), as many labels as z has rows, "
        "got Long of shape [3]",
        "UsageError 1 z must be a float32 tensor of shape (N, 128), got Float of shape [2, 64]",
        "UsageError 1 z must be a float32 tensor of shape (N, 128), got Double of shape [2, 128]",
        "(0, 3, 32, 32)",
        "(2, 3, 32, 32)",
    ]


def test_an_aoti_package_refuses_batches_larger_than_it_was_exported_for(
        ext, conditional_run, tmp_path, monkeypatch):
    """Its kernels' index arithmetic is sized for the largest batch it was compiled for
    (export's max_batch): the sampler refuses a larger one, in sample() before any work and in
    forward()."""
    from sagan_plugin import export

    model = export.export_generator(conditional_run, "aoti", out=tmp_path / "G.pt2", max_batch=8)
    assert json.loads(sidecar_path(model).read_text())["max_batch"] == 8
    # The bound is the compiled one, not only the sidecar's: AOTInductor's own input check (on
    # when AOTI_RUNTIME_CHECK_INPUTS is set as a package first runs) refuses batch 9.
    monkeypatch.setenv("AOTI_RUNTIME_CHECK_INPUTS", "1")
    package = export.load_export(model, "aoti")
    z, y = torch.randn(9, 128), torch.zeros(9, dtype=torch.long)
    assert package(z[:8], y[:8]).shape == (8, 3, 32, 32)
    with pytest.raises(RuntimeError, match="expected to be <= 8, but got: 9"):
        package(z, y)
    result = run_program("--model", model, "--n", 20, "--batch", 9, "--out", tmp_path / "a.png")
    assert_clean_error(result, "batch 9 is more than this AOTInductor package takes: it was "
                               "exported for batches of at most 8")
    assert not (tmp_path / "a.png").exists()
    result = run_program("--model", model, "--n", 20, "--batch", 8, "--save-tensor",
                         tmp_path / "images.pt")
    assert result.returncode == 0, result.stderr
    assert torch.load(tmp_path / "images.pt").shape == (20, 3, 32, 32)
    assert run_ext(ERROR_LINE + f"""
g = E.Generator({str(model)!r}, "cpu")
print(g.info["max_batch"], tuple(g.sample(5, batch=100).shape))  # chunks of 5 <= 8: fine
error(lambda: g.forward(torch.randn(9, 128), torch.zeros(9, dtype=torch.long)))
""") == ["8 (5, 3, 32, 32)",
         "UsageError 1 z has 9 rows, but this AOTInductor package was exported for batches of "
         "at most 8"]

    # A sidecar without the field (a package made before it was written) means 65536, the
    # limit every package has had: so one edited to drop a smaller limit is refused.
    sidecar = json.loads(sidecar_path(model).read_text())
    del sidecar["max_batch"]
    sidecar_path(model).write_text(json.dumps(sidecar))
    result = run_program("--model", model, "--n", 2, "--out", tmp_path / "b.png")
    assert_clean_error(result, "says max_batch=65536, the model itself max_batch=8")


def test_python_module_errors_are_one_line(ext, conditional_run, tmp_path):
    model = conditional_run / "export" / "generator.pt"
    legacy = legacy_copy(model, tmp_path / "legacy.pt", nz=64)  # wrong, and nothing can tell
    lines = run_ext(ERROR_LINE + f"""
g = E.Generator({str(model)!r}, "cpu")
error(lambda: g.sample(10**12))
error(lambda: g.sample(2, seed=2**63))
error(lambda: g.sample(2, seed=-1))
print(tuple(g.sample(1, seed=2**63 - 1).shape))
error(lambda: E.image_grid(torch.zeros(3, 4, 4, dtype=torch.uint8)))
error(lambda: E.to_uint8(torch.zeros(2, 3, dtype=torch.complex64)))
error(lambda: E.Generator({str(legacy)!r}, "cpu").forward(torch.randn(2, 64),
                                                          torch.zeros(2, dtype=torch.long)))
""")
    assert lines[0].startswith("UsageError 1 n=1000000000000 images of 3x32x32 need about")
    assert lines[1:4] == [
        "UsageError 1 seed: expected an integer in [0, 2^63 - 1], got 9223372036854775808",
        "UsageError 1 seed: expected an integer in [0, 2^63 - 1], got -1",
        "(1, 3, 32, 32)"]
    assert lines[4].startswith("UsageError 1 image_grid expects a uint8 tensor of shape (N, C, H")
    assert lines[5].startswith("RuntimeError 1 "), lines[5]  # a c10::Error, without backtrace
    assert lines[6].startswith("RuntimeError 1 RuntimeError: mat1 and mat2 shapes"), lines[6]


def test_python_module_refuses_arguments_of_the_wrong_type_in_one_line(ext, conditional_run):
    # pybind11's own error: the signature and the repr of every argument, over 4 lines and more.
    model = conditional_run / "export" / "generator.pt"
    lines = run_ext(ERROR_LINE + f"""
import numpy as np
from pathlib import Path
g = E.Generator(Path({str(model)!r}), "cpu")
error(lambda: g.sample("3"))
error(lambda: g.sample(2.0))
error(lambda: g.sample(2**64))
error(lambda: g.sample(2, seed=1.5))
error(lambda: g.sample(2, classes=3))
error(lambda: g.sample(2, batch=None))
error(lambda: g.forward(np.zeros((2, 128), np.float32), torch.zeros(2, dtype=torch.long)))
error(lambda: g.forward(torch.zeros(2, 128), [1, 2]))
error(lambda: E.to_uint8(np.zeros((1, 3, 2, 2))))
error(lambda: E.image_grid(None))
error(lambda: E.Generator({str(model)!r}, None))
error(lambda: E.Generator(3))
print(tuple(g.sample(np.int64(2), seed=np.int64(1), classes=np.array([3])).shape))
""")
    int64 = "an integer in [-2^63, 2^63 - 1]"
    assert lines == [
        f"TypeError 1 n: expected {int64}, got str",
        f"TypeError 1 n: expected {int64}, got float",
        f"UsageError 1 n: expected {int64}, got 18446744073709551616",
        "TypeError 1 seed: expected an integer in [0, 2^63 - 1], got float",
        "TypeError 1 classes: expected a list of integers, got int",
        f"TypeError 1 batch: expected {int64}, got NoneType",
        "TypeError 1 z: expected a torch.Tensor, got ndarray",
        "TypeError 1 y: expected a torch.Tensor, got list",
        "TypeError 1 images: expected a torch.Tensor, got ndarray",
        "TypeError 1 images: expected a torch.Tensor, got NoneType",
        "TypeError 1 device: expected a str: auto, cpu, cuda or cuda:<index>, got NoneType",
        "TypeError 1 model: expected a path (str or os.PathLike), got int",
        "(2, 3, 32, 32)",
    ]


def test_program_names_the_error_inside_a_torchscript_model(program, conditional_run, tmp_path):
    legacy = legacy_copy(conditional_run / "export" / "generator.pt", tmp_path / "legacy.pt",
                         nz=64)
    result = run_program("--model", legacy, "--n", 2, "--out", tmp_path / "grid.png")
    assert_clean_error(result, "RuntimeError: mat1 and mat2 shapes cannot be multiplied")


def test_program_never_writes_over_the_model(program, conditional_run, tmp_path):
    export = conditional_run / "export"
    model = tmp_path / "generator.pt"
    for name in ("generator.pt", "generator.pt.json"):
        shutil.copy(export / name, tmp_path / name)
    (tmp_path / "sidecar_link.pt").symlink_to(sidecar_path(model))
    images = tmp_path / "images"
    images.mkdir()
    (images / "000001.png").write_bytes(model.read_bytes())  # a model with an image's name
    shutil.copy(sidecar_path(model), images / "000001.png.json")
    for suffix in ("", ".json"):  # a link elsewhere to the model that an image would replace
        Path(f"{tmp_path}/linked.pt{suffix}").symlink_to(f"{images}/000001.png{suffix}")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for args, message in [
        (["--model", model, "--save-tensor", model], f"--save-tensor {model} would overwrite"),
        (["--model", f"{tmp_path}/./generator.pt", "--save-tensor", model], "would overwrite"),
        (["--model", model, "--save-tensor", tmp_path / "sidecar_link.pt"],
         f"would overwrite {model}.json"),
        (["--model", images / "000001.png", "--out", f"{images}/"], "--out"),
        (["--model", tmp_path / "linked.pt", "--out", f"{images}/"],
         f"would overwrite {tmp_path}/linked.pt, the model's own file"),
    ]:
        assert_clean_error(run_program(*args, "--n", 2), message)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    # Fewer images than the model's number: nothing to fear.
    result = run_program("--model", images / "000001.png", "--n", 1, "--out", f"{images}/")
    assert result.returncode == 0, result.stderr
    assert (images / "000001.png").read_bytes() == before[images / "000001.png"]


def _available_memory() -> int:
    return next(int(line.split()[1]) * 1024 for line in
                Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemAvailable:"))


def test_program_counts_available_memory_and_the_grid(program, conditional_run, tmp_path):
    model = conditional_run / "export" / "generator.pt"
    sampling = 4 * 128 + 8 + 8 * 3 * 32 * 32  # z, label, float chunks and their concatenation
    for out, written in ((f"{tmp_path}/pngs/", 3 * 32 * 32),  # the uint8 copy
                         (tmp_path / "grid.png", 5 * 3 * 34 * 34)):  # + grid and stb's buffers
        before = _available_memory()
        n = int(before / 2 / (sampling + written) * 2)  # refused even if memory grows a lot
        if out == tmp_path / "grid.png" and n > 500_000:
            continue  # a machine this big: the grid's own limit comes first
        result = run_program("--model", model, "--n", n, "--out", out)
        assert_clean_error(result, f"--n {n} images of 3x32x32 need about")
        most = int(result.stderr.split("sample at most ")[1].split()[0])
        # Other processes (test workers) move MemAvailable meanwhile: the program's reading
        # lies near ours, far from a count of all memory or of twice the images.
        after = _available_memory()
        low, high = (min(before, after) / 2 / (sampling + written),
                     max(before, after) / 2 / (sampling + written))
        assert 0.9 * low < most < 1.1 * high, (most, before, after)
    # A grid past stb's int-sized buffers is refused whatever the memory.
    result = run_program("--model", model, "--n", 700_000, "--out", tmp_path / "grid.png")
    assert_clean_error(result, "too large for one PNG; use --out DIR/")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("out", [None, "pngs/", "new/pngs/", "grid.png"])
def test_a_failed_write_leaves_no_temporary_file(program, conditional_run, tmp_path, out):
    """Nor any of the other files, which are small enough (nor folders made for them): the
    outputs of a run are renamed into place together, once all are written."""
    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process

    model = conditional_run / "export" / "generator.pt"
    args = ["--out", f"{tmp_path}/{out}"] if out else []
    result = subprocess.run([str(PROGRAM), "--model", str(model), "--n", "8", *args,
                             "--save-tensor", str(tmp_path / "images.pt")], capture_output=True,
                            text=True, timeout=120, preexec_fn=small_files)
    assert_clean_error(result, f"cannot write {tmp_path / 'images.pt'}")
    assert not any(tmp_path.iterdir())
