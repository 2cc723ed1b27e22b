"""Export to TorchScript and AOTInductor: folded spectral norm, the check, the sidecar."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from conftest import run_cli
from run_helpers import STEP, make_run
from torch.nn.utils import parametrize

from sagan_plugin import export
from sagan_plugin.checkpoint import checkpoint_path
from sagan_plugin.errors import UsageError
from sagan_plugin.files import file_digest
from sagan_plugin.runs import load_generator

# conditional_run and unconditional_run (conftest.py) are run_helpers.exported_run's runs.


def test_fold_spectral_norm_keeps_outputs_and_removes_parametrizations(conditional_run):
    reference = load_generator(conditional_run).netG
    folded = export.fold_spectral_norm(load_generator(conditional_run).netG)
    assert not any(parametrize.is_parametrized(m) for m in folded.modules())
    z, y = export.check_inputs(reference, 6, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(folded(z, y), reference(z, y), rtol=0, atol=1e-6)


def test_folding_in_training_mode_would_change_the_weights(conditional_run):
    # Why fold_spectral_norm calls eval() first: a training-mode access runs a power iteration.
    netG = load_generator(conditional_run).netG
    before = netG.linear.weight.detach().clone()
    netG.train()
    assert not torch.equal(netG.linear.weight.detach(), before)


@pytest.mark.parametrize("fmt", ["torchscript", "aoti"])
def test_export_matches_eager_at_any_batch_and_has_a_true_sidecar(conditional_run, fmt):
    artefact = conditional_run / "export" / f"generator{export.FORMATS[fmt]}"
    sidecar = json.loads(export.sidecar_path(artefact).read_text())
    assert sidecar == sidecar | {
        "kind": export.EXPORT_KIND, "format": fmt, "nz": 128, "num_classes": 10,
        "resolution": 32, "channels": 3, "output_range": [-1.0, 1.0], "step": STEP,
        "ema": True, "device": "cpu", "torch_version": torch.__version__,
        "sha256": file_digest(artefact), "file": artefact.name}
    assert sidecar["check"]["batches"] == list(export.CHECK_BATCHES)
    assert 0 <= sidecar["check"]["max_abs_diff"] <= sidecar["check"]["tolerance"] == \
        export.CHECK_TOLERANCE["cpu"]
    reference = load_generator(conditional_run).netG
    z, y = export.check_inputs(reference, 7, torch.device("cpu"))
    with torch.inference_mode():
        expected = reference(z, y)
        got = export.load_export(artefact, fmt)(z, y)
    torch.testing.assert_close(got, expected, rtol=0, atol=export.CHECK_TOLERANCE["cpu"])


def test_export_uses_ema_weights(conditional_run):
    ema = load_generator(conditional_run, prefer_ema=True).netG
    raw = load_generator(conditional_run, prefer_ema=False).netG
    z, y = export.check_inputs(ema, 3, torch.device("cpu"))
    exported = export.load_export(conditional_run / "export" / "generator.pt", "torchscript")
    with torch.inference_mode():
        assert torch.equal(exported(z, y), ema(z, y))
        assert not torch.allclose(exported(z, y), raw(z, y))


def test_an_export_of_the_raw_generator_holds_the_raw_weights(conditional_run, tmp_path):
    """ema=false exports G itself, and its sidecar says so."""
    raw = load_generator(conditional_run, prefer_ema=False).netG
    artefact = export.export_generator(conditional_run, "torchscript", tmp_path / "raw.pt",
                                       prefer_ema=False)
    assert json.loads(export.sidecar_path(artefact).read_text())["ema"] is False
    z, y = export.check_inputs(raw, 3, torch.device("cpu"))
    with torch.inference_mode():
        torch.testing.assert_close(export.load_export(artefact, "torchscript")(z, y), raw(z, y),
                                   rtol=0, atol=export.CHECK_TOLERANCE["cpu"])


def test_the_sidecar_says_ema_false_for_a_run_without_ema_weights(conditional_run, tmp_path):
    """ema=true (the default) asks for the EMA; a run that has none exports G, and says so."""
    run = tmp_path / "run"
    shutil.copytree(conditional_run, run, ignore=shutil.ignore_patterns("export"))
    path = checkpoint_path(run, STEP)
    state = torch.load(path, weights_only=True)
    del state["ema_state_dict"]
    torch.save(state, path)
    artefact = export.export_generator(run, "torchscript")
    assert json.loads(export.sidecar_path(artefact).read_text())["ema"] is False


def test_the_check_runs_the_artefact_at_batches_it_was_not_traced_with(conditional_run):
    """An export that is right only at its tracing batch (2) must fail its check."""
    reference = export.SamplingModule(load_generator(conditional_run).netG)
    seen = []

    def traced_for_two(z, y):
        seen.append(len(z))
        return reference(z, y) if len(z) == 2 else torch.zeros_like(reference(z, y))

    with pytest.raises(export.ExportCheckFailed, match="export check failed"):
        export.check_export(traced_for_two, reference, torch.device("cpu"))
    assert seen and 2 not in seen


def test_unconditional_export_ignores_labels(unconditional_run):
    artefact = unconditional_run / "export" / "generator.pt"
    assert json.loads(export.sidecar_path(artefact).read_text())["num_classes"] == 0
    exported = export.load_export(artefact, "torchscript")
    z = torch.randn(4, 128)
    with torch.inference_mode():
        torch.testing.assert_close(exported(z, torch.zeros(4, dtype=torch.int64)),
                                   exported(z, torch.arange(4)), rtol=0, atol=0)


def test_torchscript_export_shows_no_deprecation_or_tracer_warning(conditional_run, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export.export_generator(conditional_run, "torchscript", tmp_path / "G.pt")
        export.load_export(tmp_path / "G.pt", "torchscript")
    known = (DeprecationWarning, torch.jit.TracerWarning)
    assert not [w for w in caught if issubclass(w.category, known)]


def test_failed_check_writes_nothing(conditional_run, tmp_path, monkeypatch):
    load = export.load_export

    def off_by_a_bit(path, fmt, device=None):
        module = load(path, fmt, device)
        return lambda z, y: module(z, y) + 3 * export.CHECK_TOLERANCE["cpu"]

    monkeypatch.setattr(export, "load_export", off_by_a_bit)
    with pytest.raises(export.ExportCheckFailed, match="export check failed"):
        export.export_generator(conditional_run, "torchscript", tmp_path / "G.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["format=torchscript"], "run=... is required"),
    (["run={run}", "format=onnx"], "format must be one of"),
    (["run={run}", "format=aoti", "out={tmp}/G.pt"], "must end in .pt2"),
    (["run={tmp}/nothing"], "does not exist"),
    (["run={run}", "step=3"], "no checkpoint at step 3"),
    (["run={run}", "colour=red"], "colour"),
    (["run={run}", "device=tpu"], "not a device"),
    (["run={run}", "out=/proc/G.pt"], "cannot write"),
])
def test_bad_export_input_is_a_usage_error(conditional_run, tmp_path, argv, message):
    argv = [a.format(run=conditional_run, tmp=tmp_path) for a in argv]
    with pytest.raises(UsageError, match=message):
        export.main(argv)


@pytest.mark.parametrize("fmt, max_batch, message", [
    ("aoti", 4, "max_batch must be in [5, 65536], got 4"),
    ("aoti", "8", "max_batch must be in [5, 65536], got '8'"),
    ("aoti", True, "max_batch must be in [5, 65536], got True"),
    ("torchscript", 8, "max_batch applies to format=aoti only"),
])
def test_a_bad_max_batch_from_python_is_refused_before_compiling(conditional_run, tmp_path,
                                                                 fmt, max_batch, message):
    """As the command line refuses it, in export_module too (bench_sample calls it)."""
    out = tmp_path / f"G{export.FORMATS[fmt]}"
    with pytest.raises(UsageError) as refused:
        export.export_generator(conditional_run, fmt, out, max_batch=max_batch)
    assert str(refused.value).startswith(message)
    netG = load_generator(conditional_run).netG
    for bad in (max_batch, 0):  # 0 once meant the default
        with pytest.raises(UsageError, match="max_batch"):
            export.export_module(netG, netG, fmt, out, {}, max_batch=bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["torchscript", "aoti"])
def test_a_full_disk_while_exporting_is_one_line_and_leaves_nothing(tmp_path, fmt):
    # torchscript: was a SIGABRT in torch's zip writer; aoti: an InductorError's traceback
    run = make_run(tmp_path / "run")
    out = tmp_path / "out" / f"generator{export.FORMATS[fmt]}"
    result = run_cli("export", f"run={run}", f"format={fmt}", f"out={out}",
                     max_file_bytes=100_000)
    assert result.returncode == 1, result.stderr[-2000:]
    # The last line: a CUDA build of torch on a machine without a GPU warns before compiling.
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == f"error: {out}: File too large"
    assert list(out.parent.iterdir()) == []  # no staged folder, no sidecar


def test_the_export_check_compares_in_float32_and_restores_tf32(conditional_run):
    """On CUDA the eager generator and the artefact pick other kernels, whose TF32 rounding
    differs by more than the tolerance: the check turns TF32 off for both, and only there."""
    reference = export.SamplingModule(load_generator(conditional_run).netG)
    seen = []

    def exported(z, y):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return reference(z, y)

    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        assert export.check_export(exported, reference, torch.device("cpu")) == 0.0
        assert seen == [(False, False)] * len(export.CHECK_BATCHES)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


def test_the_check_refuses_an_artefact_a_tenth_of_a_pixel_level_off(conditional_run):
    """The CPU tolerance lies far below one level of a PNG (1/127.5): images off by a tenth
    of a level are refused."""
    reference = export.SamplingModule(load_generator(conditional_run).netG)
    with pytest.raises(export.ExportCheckFailed, match="export check failed: output differs"):
        export.check_export(lambda z, y: reference(z, y) + 0.1 / 127.5, reference,
                            torch.device("cpu"))


@pytest.mark.parametrize("wrong_at", export.CHECK_BATCHES)
def test_an_artefact_wrong_at_any_one_check_batch_is_refused(conditional_run, wrong_at):
    reference = export.SamplingModule(load_generator(conditional_run).netG)

    def exported(z, y):
        return reference(z, y) + (1e-2 if len(z) == wrong_at else 0)

    with pytest.raises(export.ExportCheckFailed, match="export check failed"):
        export.check_export(exported, reference, torch.device("cpu"))


def test_an_artefact_of_another_shape_is_refused_naming_both_shapes(conditional_run):
    reference = export.SamplingModule(load_generator(conditional_run).netG)
    with pytest.raises(export.ExportCheckFailed, match=r"export check failed at batch 1: shape "
                                           r"\(1, 3, 16, 16\) instead of \(1, 3, 32, 32\)"):
        export.check_export(lambda z, y: torch.nn.functional.avg_pool2d(reference(z, y), 2),
                            reference, torch.device("cpu"))


def test_the_check_catches_an_artefact_that_ignores_the_labels(conditional_run):
    """The check's inputs hold several classes: an artefact that draws class 0 for every
    label is refused."""
    reference = export.SamplingModule(load_generator(conditional_run).netG)
    with pytest.raises(export.ExportCheckFailed, match="export check failed"):
        export.check_export(lambda z, y: reference(z, torch.zeros_like(y)), reference,
                            torch.device("cpu"))


def test_a_fold_that_loses_the_normalisation_fails_the_check(conditional_run, tmp_path,
                                                              monkeypatch):
    """The artefact is checked against a second load of the generator, its spectral norm still
    parametrized, not against the folded net itself: a wrong fold is refused, nothing written."""
    def fold_without_normalising(netG):
        netG.eval()
        for module in netG.modules():
            if parametrize.is_parametrized(module):
                for name in list(module.parametrizations):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        return netG

    monkeypatch.setattr(export, "fold_spectral_norm", fold_without_normalising)
    with pytest.raises(export.ExportCheckFailed, match="export check failed"):
        export.export_generator(conditional_run, "torchscript", tmp_path / "G.pt")
    assert list(tmp_path.iterdir()) == []


def test_folding_a_generator_in_training_mode_puts_it_in_eval_mode_first(conditional_run):
    """A net handed over in training mode is folded as it is, in eval mode: no power
    iteration moves its weights and batch norm uses its running statistics."""
    reference = load_generator(conditional_run).netG
    folded = export.fold_spectral_norm(load_generator(conditional_run).netG.train())
    assert not folded.training
    z, y = export.check_inputs(reference, 6, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(folded(z, y), reference(z, y), rtol=0, atol=1e-6)


def test_a_failed_check_through_the_command_line_is_one_line_exit_1(conditional_run, tmp_path,
                                                                    monkeypatch, capsys):
    """Good input that the export cannot reproduce: a failure of the command (exit 1), said in
    one line as every error is, not a traceback."""
    from sagan_plugin.cli import main as cli

    load = export.load_export
    monkeypatch.setattr(export, "load_export", lambda path, fmt, device=None: (
        lambda z, y: load(path, fmt, device)(z, y) + 0.1 / 127.5))
    out = tmp_path / "G.pt"
    assert cli(["export", f"run={conditional_run}", f"out={out}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: export check failed: output differs from the eager "
                          "generator by ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []
