"""The C++ sampler (program and pybind11 module) against the Python recipe, and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from sagan_plugin.export import sidecar_path
from sagan_plugin.runs import load_generator
from sagan_plugin.sample import image_grid, sample, to_uint8

BUILD = REPO / "cpp" / "build"
PROGRAM = BUILD / "sagan_sample"
MODELS = {"torchscript": "generator.pt", "aoti": "generator.pt2"}


@pytest.fixture(scope="session")
def program() -> Path:
    """cpp/ built once per session through the Makefile (a no-op when up to date)."""
    subprocess.run(["make", "-s", "cpp"], cwd=REPO, check=True, capture_output=True,
                   timeout=900)
    return PROGRAM


@pytest.fixture(scope="session")
def ext(program):
    sys.path.insert(0, str(BUILD))
    import sagan_sample_ext

    return sagan_sample_ext


def run_program(*args: object, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(PROGRAM), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def assert_clean_error(result: subprocess.CompletedProcess, message: str = "") -> None:
    """Exit 2 with exactly one line `error: ...` on stderr: no crash, no backtrace."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]


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


def run_ext(script: str) -> list[str]:
    """Runs `script` with sagan_sample_ext as E in a fresh Python, which an abort cannot take
    down with the tests; returns its output lines."""
    result = subprocess.run(
        [sys.executable, "-c", "import torch, sagan_sample_ext as E\n" + script],
        capture_output=True, text=True, timeout=300,
        env=os.environ | {"PYTHONPATH": str(BUILD)})
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    return result.stdout.splitlines()


ERROR_LINE = """
def error(f):
    try:
        f()
        print("no error")
    except Exception as e:
        print(type(e).__name__, len(str(e).splitlines()), str(e).splitlines()[0])
"""


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
    """Its kernels' index arithmetic is sized for the largest batch it was compiled for: the
    sampler refuses a larger one, in sample() before any work and in forward()."""
    from sagan_plugin import export

    monkeypatch.setattr(export, "MAX_BATCH", 8)
    model = export.export_generator(conditional_run, "aoti", out=tmp_path / "G.pt2")
    assert json.loads(sidecar_path(model).read_text())["max_batch"] == 8
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
        n = int(before / 2 / (sampling + written) * 1.1)
        if out == tmp_path / "grid.png" and n > 500_000:
            continue  # a machine this big: the grid's own limit comes first
        result = run_program("--model", model, "--n", n, "--out", out)
        assert_clean_error(result, f"--n {n} images of 3x32x32 need about")
        most = int(result.stderr.split("sample at most ")[1].split()[0])
        # Other processes move MemAvailable meanwhile: the program's reading lies between ours.
        after = _available_memory()
        low, high = (min(before, after) / 2 / (sampling + written),
                     max(before, after) / 2 / (sampling + written))
        assert 0.98 * low < most < 1.02 * high, (most, before, after)
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


def broken_copies(conditional_run: Path, folder: Path) -> dict[str, Path]:
    """Models that must be refused: each a file next to a (possibly wrong) sidecar."""
    source = conditional_run / "export" / "generator.pt"
    sidecar = json.loads(sidecar_path(source).read_text())
    models = {}

    def add(name: str, data: bytes, **changes: object) -> None:
        path = folder / name
        path.write_bytes(data)
        fields = sidecar | {"sha256": hashlib.sha256(data).hexdigest()} | changes
        sidecar_path(path).write_text(json.dumps(fields))
        models[name] = path

    add("garbage.pt", b"not a model at all\n" * 50)
    add("garbage.pt2", b"PK\x03\x04 not a zip either" * 20, format="aoti")
    add("wrong_sha.pt", source.read_bytes() + b"\0", sha256=sidecar["sha256"])
    add("wrong_kind.pt", source.read_bytes(), kind="something else")
    add("no_nz.pt", source.read_bytes(), nz="many")
    add("bad_format.pt", source.read_bytes(), format="onnx")
    add("float_nz.pt", source.read_bytes(), nz=128.0)
    add("sidecar_folder.pt", source.read_bytes())
    sidecar_path(folder / "sidecar_folder.pt").unlink()
    sidecar_path(folder / "sidecar_folder.pt").mkdir()
    add("cuda_package.pt2", source.read_bytes(), format="aoti", device="cuda")
    # A sidecar edited by hand: its sha256 still matches, the model inside says otherwise.
    add("edited_nz.pt", source.read_bytes(), nz=sidecar["nz"] * 2)
    add("edited_resolution.pt", source.read_bytes(), resolution=64)
    add("edited_channels.pt", source.read_bytes(), channels=1)
    package = source.with_suffix(".pt2")
    add("edited_classes.pt2", package.read_bytes(), format="aoti", num_classes=20)
    add("edited_max_batch.pt2", package.read_bytes(), format="aoti", max_batch=1 << 20)
    shutil.copy(source, folder / "no_sidecar.pt")
    models["no_sidecar.pt"] = folder / "no_sidecar.pt"
    (folder / "not_json.pt").write_bytes(source.read_bytes())
    sidecar_path(folder / "not_json.pt").write_text("{ nope")
    models["not_json.pt"] = folder / "not_json.pt"
    return models


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("folder", "is a folder (expected a .pt or .pt2"),
    ("garbage.pt", "cannot load"),
    ("garbage.pt2", "cannot load"),
    ("wrong_sha.pt", "changed after export, or the sidecar is another export's"),
    ("wrong_kind.pt", "not the sidecar"),
    ("no_nz.pt", "nz"),
    ("float_nz.pt", 'field "nz" must be an integer, got 128.0'),
    ("sidecar_folder.pt", "sidecar_folder.pt.json is not a regular file"),
    ("/dev/null", "model file /dev/null is not a regular file"),
    ("bad_format.pt", "format must be"),
    ("cuda_package.pt2", "compiled for cuda"),
    ("no_sidecar.pt", "no sidecar"),
    ("not_json.pt", "not valid JSON"),
    ("edited_nz.pt", "says nz=256, the model itself nz=128 (the sidecar was edited"),
    ("edited_resolution.pt", "says resolution=64, the model itself resolution=32"),
    ("edited_channels.pt", "says channels=1, the model itself channels=3"),
    ("edited_classes.pt2", "says num_classes=20, the model itself num_classes=10"),
    ("edited_max_batch.pt2", "says max_batch=1048576, the model itself max_batch=65536"),
])
def test_program_refuses_bad_models(program, conditional_run, tmp_path, case, message):
    models = broken_copies(conditional_run, tmp_path)
    (tmp_path / "folder").mkdir()
    model = models.get(case, tmp_path / ("folder" if case == "folder" else "missing.pt"))
    model = case if case.startswith("/") else model
    result = run_program("--model", model, "--n", 2, "--device", "cpu", "--out",
                         tmp_path / "grid.png")
    assert_clean_error(result, message)
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU")
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_a_cuda_package_on_a_machine_without_a_gpu_is_not_sent_to_the_cpu(
        program, conditional_run, tmp_path, device):
    """--device cpu would only be refused in turn (the package holds CUDA kernels)."""
    result = run_program("--model", broken_copies(conditional_run, tmp_path)["cuda_package.pt2"],
                         "--n", 2, "--device", device, "--out", tmp_path / "grid.png")
    assert_clean_error(result, "no CUDA GPU is available to this torch build (the package is "
                               "compiled for cuda: sample it on a GPU, or export it again with "
                               "device=cpu)")


@pytest.mark.parametrize("args, message", [
    (["--class", 10], "class 10 is out of range"),
    (["--classes", "1,-1"], "class -1 is out of range"),
    (["--n", 0], "n must be a positive"),
    (["--n", -4], "n must be a positive"),
    (["--batch", 0], "batch must be a positive"),
    (["--device", "cuda"], "no CUDA GPU" if not torch.cuda.is_available() else ""),
    (["--device", "tpu"], "device must be"),
    (["--device", "cpu:0"], 'device must be auto, cpu, cuda or cuda:<index>, got "cpu:0"'),
    (["--device", "cuda:01"], "device must be auto, cpu"),
    (["--out", "/proc/grid.png"], "cannot write to output directory /proc"),
    (["--out", "/dev/null/grid.png"], "/dev/null is not a folder"),
    (["--save-tensor", "/dev/null/t.pt"], "/dev/null is not a folder"),
    (["--out", "{tmp}/grid.jpg"], ".png"),
    (["--save-tensor", "{tmp}/images.npy"], ".pt"),
    (["--class", 1, "--classes", "2,3"], "excludes"),
    (["--n", "lots"], "--n"),
    (["--n", ""], '--n: expected a decimal integer in [-2^63, 2^63 - 1], got ""'),
    (["--n", "9999999999999999999999"], "--n: expected a decimal integer"),
    (["--n", "0x10"], "--n: expected a decimal integer"),
    (["--batch", " 4"], "--batch: expected a decimal integer"),
    (["--class", ""], "--class: expected a decimal integer"),
    (["--classes", ""], '--classes: expected integers like 3 or 0,3,7, got ""'),
    (["--classes", "0,,3"], '--classes: expected integers like 3 or 0,3,7, got "0,,3"'),
    (["--classes", "3,"], "--classes: expected integers"),
    (["--classes", "99999999999999999999"], "--classes: expected integers"),
    (["--colour", "red"], "colour"),
    (["--seed", -1], "--seed"),
    (["--seed", 2**63], "--seed"),
    (["--n", 10**12, "--out", "{tmp}/pngs/"], "--n 1000000000000 images of 3x32x32 need about"),
    (["--n", 10**12], "is too large for one PNG; use --out DIR/"),
    (["--out", ""], "nothing to write: give --out"),
])
def test_program_refuses_bad_arguments(program, conditional_run, tmp_path, args, message):
    model = conditional_run / "export" / "generator.pt"
    args = [str(a).format(tmp=tmp_path) for a in args]
    if "--out" not in args and "--save-tensor" not in args:
        args += ["--out", f"{tmp_path}/grid.png"]
    assert_clean_error(run_program("--model", model, "--n", 2, *args), message)
    assert not any(tmp_path.iterdir())


def test_the_last_of_repeated_options_wins(program, conditional_run, tmp_path):
    model = conditional_run / "export" / "generator.pt"
    # Class 10 is out of range: taken, it would be refused. (The tiny test model's images may
    # not depend on the class.)
    result = run_program("--model", model, "--n", 5, "--n", 3, "--classes", 10, "--classes",
                         "2,3", "--save-tensor", tmp_path / "images.pt")
    assert result.returncode == 0, result.stderr
    assert torch.load(tmp_path / "images.pt").shape[0] == 3


def test_unconditional_model_refuses_classes(program, unconditional_run):
    model = unconditional_run / "export" / "generator.pt"
    result = run_program("--model", model, "--class", 0, "--out", "unused.png")
    assert_clean_error(result, "unconditional")


def fuzz_arguments(rng: random.Random, good: list[Path], bad: list[Path], tmp: Path) -> list[str]:
    values = {
        "--n": ["1", "2", "3", "0", "-2", "abc", "2.5", "99999999999999999999999", ""],
        "--class": ["0", "9", "10", "-1", "x", "3"],
        "--classes": ["0,3", "1,,2", "11", "a,b", "", "2,2,2"],
        "--seed": ["0", "42", "-1", "18446744073709551615", "1e3", "7"],
        "--device": ["cpu", "auto", "cuda", "cuda:1", "tpu", "", "cpu:0"],
        "--batch": ["1", "2", "0", "-5", "big", "64"],
        "--out": [f"{tmp}/g.png", f"{tmp}/dir/", f"{tmp}/x.jpg", "/proc/x.png",
                  f"{tmp}/no/such/x.png", ""],
        "--save-tensor": [f"{tmp}/t.pt", f"{tmp}/t.txt", "/proc/t.pt", f"{tmp}/"],
        "--no-tf32": [],
        "--bogus": ["1"],
        "-x": [],
    }
    args = []
    if rng.random() < 0.9:
        args += ["--model", str(rng.choice(good if rng.random() < 0.6 else bad))]
    for flag in rng.sample(sorted(values), rng.randint(0, 4)):
        args.append(flag)
        if values[flag] and rng.random() < 0.93:  # sometimes the value is missing
            args.append(rng.choice(values[flag]))
    if "--out" not in args and rng.random() < 0.7:  # without an output nothing is sampled
        args += ["--out", f"{tmp}/g.png"]
    return args


def test_argument_fuzzer_never_crashes(program, conditional_run, unconditional_run, tmp_path):
    """60 runs of mixed valid and invalid flags: each exits 0 or with a one-line error."""
    good = [conditional_run / "export" / name for name in MODELS.values()]
    good.append(unconditional_run / "export" / "generator.pt")
    bad = list(broken_copies(conditional_run, tmp_path).values()) + [tmp_path / "missing.pt"]
    rng = random.Random(20240601)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(60):
        args = fuzz_arguments(rng, good, bad, tmp_path)
        result = run_program(*args)
        assert result.returncode >= 0, (args, result.returncode, result.stderr)  # no signal
        if result.returncode == 0:
            assert "images/s" in result.stdout, (args, result.stdout)
            outcomes["ok"] += 1
        else:
            assert_clean_error(result)
            outcomes["error"] += 1
    assert outcomes["ok"] >= 3 and outcomes["error"] >= 30, outcomes  # both kinds exercised


def test_a_grid_of_2_63_images_is_refused_at_once(program, conditional_run, tmp_path):
    # Counting the grid's columns up to ceil(sqrt(n)) overflowed for n near 2^63: no end.
    result = run_program("--model", conditional_run / "export" / "generator.pt", "--n",
                         2**63 - 1, "--out", tmp_path / "grid.png", timeout=30)
    assert_clean_error(result, "images of 32x32 (103258017002x103258017002 pixels) is too large "
                               "for one PNG")
    assert not any(tmp_path.iterdir())


def rewritten_export(source: Path, model: Path, member) -> Path:
    """A copy of an export whose zip members pass through member(name, data) (None drops one),
    its sidecar's sha256 updated: the loader meets the damage, not the hash check."""
    import io
    import zipfile

    original, data = zipfile.ZipFile(source), io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        for info in original.infolist():
            content = member(info.filename, original.read(info))
            if content is not None:
                archive.writestr(info, content)
    model.write_bytes(data.getvalue())
    sidecar = json.loads(sidecar_path(source).read_text())
    sidecar_path(model).write_text(json.dumps(
        sidecar | {"sha256": hashlib.sha256(model.read_bytes()).hexdigest()}))
    return model


def damaged_package(conditional_run: Path, folder: Path, damage: str) -> Path:
    """The AOTInductor package without its .so, or with a spoilt kernel_metadata.json."""
    def member(name: str, data: bytes) -> bytes | None:
        if damage == "no .so" and name.endswith(".so"):
            return None
        return b"{" if damage == "bad metadata" and name.endswith("kernel_metadata.json") else data

    return rewritten_export(conditional_run / "export" / "generator.pt2",
                            folder / "damaged.pt2", member)


@pytest.mark.parametrize("damage, message", [
    ("no .so", "File not found"),
    ("bad metadata", "parse error"),  # nlohmann's exception, not a c10::Error
])
def test_a_package_that_fails_to_load_leaves_no_extracted_files(
        program, conditional_run, tmp_path, damage, message):
    """The loader unpacks the package under TMPDIR and, when it throws, leaves it there: the
    program gives it a folder of its own, removed at exit."""
    model = damaged_package(conditional_run, tmp_path, damage)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    result = subprocess.run([str(PROGRAM), "--model", str(model), "--n", "2", "--out",
                             str(tmp_path / "grid.png")], capture_output=True, text=True,
                            timeout=120, env=os.environ | {"TMPDIR": str(temporary)})
    assert_clean_error(result, f"cannot load {model} as an AOTInductor package: ")
    assert message in result.stderr
    assert not any(temporary.iterdir())
    assert not (tmp_path / "grid.png").exists()


def segments_end(library: bytes) -> int:
    """Where the last segment that dlopen maps from a 64-bit ELF file ends in it."""
    (table,) = struct.unpack_from("<Q", library, 32)  # e_phoff
    entry, count = struct.unpack_from("<HH", library, 54)  # e_phentsize, e_phnum
    segments = (struct.unpack_from("<IIQQQQ", library, table + i * entry) for i in range(count))
    return max(offset + size for kind, _, offset, _, _, size in segments if kind == 1)  # PT_LOAD


@pytest.mark.parametrize("fmt, record, cut", [
    # torch::jit::load read the record into a buffer of its size, 10 bytes, and made it a tensor
    # of 262144: weights from the memory past its end, sampled without an error.
    ("torchscript", "/data/1", 10),
    ("torchscript", "/constants/0", 3),  # an int64: a split size of -140680680701932
    # dlopen maps the library's segments whatever the file holds: SIGBUS in the middle of them,
    # zeros for the bytes missing from the last page (sampled without an error).
    ("aoti", ".so", "half"),
    ("aoti", ".so", "1 byte short"),
])
def test_an_archive_with_a_record_cut_short_is_refused_at_load(program, conditional_run,
                                                               tmp_path, fmt, record, cut):
    source = conditional_run / "export" / MODELS[fmt]
    name = next(n for n in zipfile.ZipFile(source).namelist() if n.endswith(record))
    data = zipfile.ZipFile(source).read(name)
    if fmt == "aoti":
        needed = segments_end(data)
        assert needed < len(data)  # the sections that are not mapped (symbols) come last
        cut = needed // 2 if cut == "half" else needed - 1
        message = (f"as an AOTInductor package: its library {name.split('/', 1)[1]} holds {cut} "
                   f"bytes where its segments take {needed} (the package is damaged; ")
    else:
        message = (f"as TorchScript: its record {name.split('/', 1)[1]} holds {cut} bytes where "
                   f"its tensor takes {len(data)} (the archive is damaged; export it again)")
    model = rewritten_export(source, tmp_path / f"cut{source.suffix}",
                             lambda n, d: d[:cut] if n == name else d)
    result = run_program("--model", model, "--n", 2, "--device", "cpu", "--out",
                         tmp_path / "grid.png")
    assert_clean_error(result, f"cannot load {model} {message}")
    assert not (tmp_path / "grid.png").exists()


def without_code(conditional_run: Path, folder: Path) -> Path:
    """The TorchScript export without one of its code files: its compiler's error on loading."""
    code = "code/__torch__/sagan_plugin/export.py"
    return rewritten_export(conditional_run / "export" / "generator.pt", folder / "no_code.pt",
                            lambda name, data: None if name.endswith(code) else data)


@pytest.mark.parametrize("case, message", [
    ("no code", "as TorchScript: Unknown type name '__torch__.sagan_plugin.export.SamplingModule'"),
    ("kind 5", "is not the sidecar of a sagan-plugin generator export"),
    ("kind null", "is not the sidecar of a sagan-plugin generator export"),
    ("format newline", 'format must be "torchscript" or "aoti", got "cpu\\n"'),
    ("device newline", 'device must be auto, cpu, cuda or cuda:<index>, got "cpu\\n"'),
    ("tensor folder", "t.pt is a folder: expected a file name ending in .pt"),
    ("name too long", ".png: File name too long"),  # was libstdc++'s "filesystem error: ..."
    # It fit, but not with the temporary name's suffix: refused only after sampling, and after
    # the grid was written.
    ("name too long with its suffix", "a.pt: File name too long (a name of 250 bytes: it is "
                                      "written under a temporary name up to 11 bytes longer "
                                      "first, and names have at most 255; keep it to 244)"),
    ("path too long with its suffix", "t.pt: File name too long (a path of 4090 bytes: it is "
                                      "written under a temporary name up to 11 bytes longer "
                                      "first, and paths have at most 4095; keep it to 4084)"),
    # Image 0 was written before image 1's rename failed.
    ("image folder", "/pngs/000001.png: that is a folder (the 2 images go to 000000.png .. "
                     "000001.png); remove it or write elsewhere"),
    # The compiler's first line was the signature called, with nothing wrong in it.
    ("call without an argument", "as TorchScript: forward(__torch__.sagan_plugin.nets.sagan_32."
                                 "SAGANGenerator32 self, Tensor z, Tensor y) -> Tensor: Argument "
                                 "y not provided."),
])
def test_program_refuses_odd_input_in_one_line(program, conditional_run, tmp_path, case,
                                               message):
    source = conditional_run / "export" / "generator.pt"
    model, args = tmp_path / "g.pt", ["--out", tmp_path / "grid.png"]
    shutil.copy(source, model)
    sidecar = json.loads(sidecar_path(source).read_text())
    changes = {"kind 5": {"kind": 5}, "kind null": {"kind": None},
               "format newline": {"format": "cpu\n"}}.get(case, {})
    sidecar_path(model).write_text(json.dumps(sidecar | changes))
    if case == "no code":
        model = without_code(conditional_run, tmp_path)
    elif case == "device newline":
        args += ["--device", "cpu\n"]
    elif case == "tensor folder":  # refused before sampling, not after the PNG is written
        (tmp_path / "t.pt").mkdir()
        args += ["--save-tensor", tmp_path / "t.pt"]
    elif case == "name too long":
        args = ["--out", tmp_path / ("a" * 300 + ".png")]
    elif case == "name too long with its suffix":
        args += ["--save-tensor", tmp_path / ("a" * 247 + ".pt")]
    elif case == "path too long with its suffix":
        folder = tmp_path
        while len(str(folder)) < 3950:
            folder /= "d" * 99
        folder.mkdir(parents=True)
        args += ["--save-tensor", folder / ("t" * (4090 - len(str(folder)) - 4) + ".pt")]
    elif case == "image folder":
        (tmp_path / "pngs" / "000001.png").mkdir(parents=True)
        args = ["--out", f"{tmp_path}/pngs/"]
    elif case == "call without an argument":
        model = rewritten_export(source, tmp_path / "wrong_call.pt", lambda name, data: (
            data.replace(b"forward(z, y, )", b"forward(z, )")
            if name.endswith("code/__torch__/sagan_plugin/export.py") else data))
    before = sorted(tmp_path.rglob("*"))
    assert_clean_error(run_program("--model", model, "--n", 2, *args), message)
    assert sorted(tmp_path.rglob("*")) == before


def test_python_module_load_errors_are_one_line(ext, conditional_run, tmp_path):
    no_code = without_code(conditional_run, tmp_path)
    no_so = damaged_package(conditional_run, tmp_path, "no .so")
    lines = run_ext(ERROR_LINE + f"""
error(lambda: E.Generator({str(no_code)!r}, "cpu"))
error(lambda: E.Generator({str(no_so)!r}, "cpu"))
error(lambda: E.Generator({str(no_code)!r}, "cpu\\n"))
""")
    assert lines[0].startswith(f"UsageError 1 cannot load {no_code} as TorchScript: Unknown type")
    assert lines[1].startswith(f"UsageError 1 cannot load {no_so} as an AOTInductor package: ")
    assert lines[2] == ('UsageError 1 device must be auto, cpu, cuda or cuda:<index>, '
                        'got "cpu\\n"')


def test_errors_escape_bytes_that_are_not_utf8(program, ext, conditional_run, tmp_path):
    """The bytes of a model's code, a path or an argument that are not UTF-8 come out as \\xHH:
    raw, they made the error undecodable (subprocess.run(text=True) and Python's str of the
    module's error raised UnicodeDecodeError). UTF-8, the é of café.pt, stays as it is."""
    code = "code/__torch__/sagan_plugin/export.py"
    model = rewritten_export(conditional_run / "export" / "generator.pt", tmp_path / "café.pt",
                             lambda name, data: data.replace(b"forward(z, y, )",
                                                             b"forward(z\xff, y, )")
                             if name.endswith(code) else data)
    found = "as TorchScript: expected a valid token but found '\\xff' here:"
    for args, message in [
        (["--model", model], f"cannot load {tmp_path}/café.pt {found}"),
        (["--model", os.fsdecode(b"/no/such/\xff\xfe.pt")],
         "model file /no/such/\\xff\\xfe.pt does not exist"),
        (["--model", model, "--n", os.fsdecode(b"\xff")],
         '--n: expected a decimal integer in [-2^63, 2^63 - 1], got "\\xff"'),
    ]:
        assert_clean_error(run_program(*args, "--out", tmp_path / "grid.png"), message)
    assert run_ext(ERROR_LINE + f"error(lambda: E.Generator({str(model)!r}, 'cpu'))") == [
        f"UsageError 1 cannot load {model} {found}"]
