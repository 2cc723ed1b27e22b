"""The C++ sampler refuses bad input in one line, exit 2, writing nothing: exports damaged,
edited or foreign, bad arguments (and a fuzzer of them), odd values."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from cpp_helpers import ERROR_LINE, MODELS, PROGRAM, assert_clean_error, run_ext, run_program

from sagan_plugin.export import sidecar_path


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
