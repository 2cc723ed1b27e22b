"""bf16 autocast with fp32 spectral norm, attention kernels, memory format: on CPU."""

import copy
import math
import warnings
from pathlib import Path

import pytest
import torch

from sagan_plugin.config import compose
from sagan_plugin.errors import UsageError
from sagan_plugin.nets import DISCRIMINATORS, GENERATORS, SelfAttention
from sagan_plugin.precision import (
    attention_kernel_runs,
    keep_spectral_norm_fp32,
    prepare_for_training,
)
from sagan_plugin.train import run


def test_spectral_norm_stays_fp32_under_bf16_autocast(monkeypatch) -> None:
    from torch.nn.utils.parametrizations import _SpectralNorm

    torch.manual_seed(0)
    reference = GENERATORS[32](ngf=8)
    converted = keep_spectral_norm_fp32(copy.deepcopy(reference))
    plain = copy.deepcopy(reference)  # the control: torch's spectral norm as it is
    # On CPU torch.mv is not on autocast's bf16 list (on CUDA it is), so the numbers alone
    # cannot tell: record whether autocast is on where the power iteration starts.
    seen = []
    reshape = _SpectralNorm._reshape_weight_to_matrix
    monkeypatch.setattr(_SpectralNorm, "_reshape_weight_to_matrix", lambda self, w: (
        seen.append(torch.is_autocast_enabled("cpu")), reshape(self, w))[1])
    layers = [name for name, _ in reference.named_modules() if name.endswith("conv1")]
    with torch.no_grad():  # a training-mode read of .weight runs one power iteration
        expected = {n: reference.get_submodule(n).weight for n in layers}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            seen.clear()
            got = {n: converted.get_submodule(n).weight for n in layers}
            assert seen and not any(seen)
            seen.clear()
            control = {n: plain.get_submodule(n).weight for n in layers}
            assert seen and all(seen)
    for name in layers:
        assert got[name].dtype == control[name].dtype == torch.float32
        assert torch.equal(got[name], expected[name]), name
    for a, b in zip(reference.buffers(), converted.buffers(), strict=True):
        assert torch.equal(a, b)  # the power iteration's u and v


def _spectral_norm_kinds(net: torch.nn.Module) -> set[str]:
    from torch.nn.utils.parametrizations import _SpectralNorm

    return {type(m).__name__ for m in net.modules() if isinstance(m, _SpectralNorm)}


def test_prepare_for_training_follows_the_options() -> None:
    netG, netD = GENERATORS[32](ngf=8), DISCRIMINATORS[32](ndf=8)
    prepare_for_training(netG, netD)  # the defaults leave torch's modules as they are
    assert _spectral_norm_kinds(netG) == _spectral_norm_kinds(netD) == {"_SpectralNorm"}
    assert not any(m.pad_query_key for m in netG.modules() if isinstance(m, SelfAttention))

    prepare_for_training(netG, netD, precision="bf16", sdpa_backend="flash",
                         channels_last=True)
    assert _spectral_norm_kinds(netG) == _spectral_norm_kinds(netD) == {"_FP32SpectralNorm"}
    layers = [m for net in (netG, netD) for m in net.modules() if isinstance(m, SelfAttention)]
    assert len(layers) == 2 and all(layer.pad_query_key for layer in layers)
    conv = netD.blocks[1].conv1.parametrizations.weight.original
    assert conv.is_contiguous(memory_format=torch.channels_last)


def test_power_iterations_outside_a_forward_run_in_fp32_under_autocast(monkeypatch) -> None:
    """D's step iteration and the EMA's run under the training step's autocast (on CUDA, bf16
    for torch.mv): they switch it off, as the spectral norm of a forward does."""
    from torch.nn.utils.parametrizations import _SpectralNorm

    from sagan_plugin.nets.layers import refresh_spectral_norm

    netD, seen = DISCRIMINATORS[32](ndf=8), []
    power_method = _SpectralNorm._power_method
    monkeypatch.setattr(_SpectralNorm, "_power_method", lambda self, *args: (
        seen.append(torch.is_autocast_enabled("cpu")), power_method(self, *args))[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        refresh_spectral_norm(netD)
    assert seen and not any(seen)


def test_compiled_training_steps_match_eager_ones() -> None:
    """train.compile: D's step runs its power iteration before its two passes, which then only
    read u and v, so D's spectral norm compiles into the graph (no graph break) and the
    backward goes through. aot_eager: AOTAutograd's functional graphs, without codegen."""
    from torch._dynamo.utils import counters

    from sagan_plugin.host import MetricLog

    def two_steps(compiled: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        netG = GENERATORS[32](num_classes=10, ngf=8)
        netD = DISCRIMINATORS[32](num_classes=10, ndf=8)
        # as train.precision=bf16 sets them up (fp32 spectral norm), run here in fp32
        prepare_for_training(netG, netD, precision="bf16")
        if compiled:
            torch._dynamo.reset()
            counters.clear()
            netG.compile(backend="aot_eager")
            netD.compile(backend="aot_eager")
        # SGD: Adam would turn a rounding-level gradient into a full step of either sign
        optG, optD = (torch.optim.SGD(net.parameters(), 0.01) for net in (netG, netD))
        for _ in range(2):
            x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randint(10, (4,))
            netD.train_step((x, y), netG, optD, MetricLog(), device="cpu")
            netG.train_step((x, y), netD, optG, MetricLog(), device="cpu")
        return [*netG.state_dict().values(), *netD.state_dict().values()]

    eager = two_steps(compiled=False)
    compiled = two_steps(compiled=True)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    torch._dynamo.reset()
    for a, b in zip(eager, compiled, strict=True):  # the same maths, not the same rounding
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_losses_are_computed_in_fp32_under_bf16_autocast(monkeypatch) -> None:
    """Under bf16 autocast D's logits come out in bfloat16 (its last linear layer): both steps
    hand the loss float32 logits, so the hinge terms and their means are fp32."""
    from sagan_plugin.host import MetricLog

    torch.manual_seed(0)
    netG, netD = GENERATORS[32](ngf=8), DISCRIMINATORS[32](ndf=8)  # no projection: bf16 logits
    prepare_for_training(netG, netD, precision="bf16")
    dtypes = []
    for net in (netG, netD):
        def recording(*args, _compute=net.compute_gan_loss, **kwargs):
            dtypes.extend(t.dtype for t in (*args, *kwargs.values()))
            return _compute(*args, **kwargs)

        monkeypatch.setattr(net, "compute_gan_loss", recording)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert netD(x).dtype == torch.bfloat16
        netD.train_step((x, None), netG, torch.optim.SGD(netD.parameters(), 0.0), MetricLog(),
                        device="cpu")
        netG.train_step((x, None), netD, torch.optim.SGD(netG.parameters(), 0.0), MetricLog(),
                        device="cpu")
    assert dtypes == [torch.float32] * 3


def test_attention_in_bf16_matches_fp32(monkeypatch) -> None:
    import torch.nn.functional as F

    torch.manual_seed(0)
    layer = SelfAttention(64)
    sdpa, dtypes = F.scaled_dot_product_attention, []
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, **kw: (
        dtypes.append(q.dtype), sdpa(q, k, v, **kw))[1])
    with torch.no_grad():
        layer.gamma.fill_(1.0)
        x = torch.randn(2, 64, 16, 16)
        expected = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = layer(x)
    assert dtypes == [torch.float32, torch.bfloat16]  # the product itself ran in bf16
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_padding_query_and_key_to_the_value_width_changes_no_output(dtype, tol) -> None:
    torch.manual_seed(0)
    layer = SelfAttention(64).to(dtype).eval()
    with torch.no_grad():
        layer.gamma.fill_(0.7)
        x = torch.randn(2, 64, 8, 8, dtype=dtype)
        plain = layer(x)
        layer.pad_query_key = True
        padded = layer(x)
    torch.testing.assert_close(padded, plain, rtol=0, atol=tol)


def test_flash_attention_runs_only_on_the_padded_layer() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    layer, x = SelfAttention(64), torch.randn(2, 64, 8, 8)
    expected = layer(x)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the refusing kernel says why
        with pytest.raises(RuntimeError, match="No available kernel"):
            layer(x)
        layer.pad_query_key = True
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-5)


def test_attention_kernel_probe_and_refusal(tiny_overrides: list[str]) -> None:
    cpu = torch.device("cpu")
    assert attention_kernel_runs("math", cpu)
    assert not attention_kernel_runs("flash", cpu)  # q/k width differs from v width
    assert attention_kernel_runs("flash", cpu, padded=True)
    with pytest.raises(UsageError, match="train.sdpa_backend=cudnn cannot run SAGAN's "
                                         "attention .* on cpu in fp32; use auto"):
        run(compose(tiny_overrides + ["train.sdpa_backend=cudnn"]))
    assert not Path(compose(tiny_overrides).run_dir).exists()
    with pytest.raises(UsageError, match="train.precision must be one of fp32, bf16"):
        run(compose(tiny_overrides + ["train.precision=fp16"]))


def test_sdpa_backend_flash_trains_with_the_padded_layers(tiny_overrides: list[str]) -> None:
    trainer = run(compose(tiny_overrides + ["train.steps=2", "train.sdpa_backend=flash"]))
    layers = [m for net in (trainer.netG, trainer.netD) for m in net.modules()
              if isinstance(m, SelfAttention)]
    assert len(layers) == 2 and all(layer.pad_query_key for layer in layers)


def test_bf16_channels_last_training_on_cpu_has_finite_losses(tiny_overrides: list[str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose(tiny_overrides + ["train.steps=3", "train.log_steps=1", "train.precision=bf16",
                                    "train.channels_last=true", "train.sdpa_backend=math"])
    trainer = run(cfg)
    for metric in ("errD", "errG"):
        events = EventAccumulator(str(Path(cfg.run_dir) / "data" / metric))
        events.Reload()
        values = [e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
        assert len(values) == 3 and all(math.isfinite(v) for v in values), metric
    conv = trainer.netD.blocks[1].conv1.parametrizations.weight.original
    assert conv.dtype == torch.float32  # autocast leaves the stored weights in fp32
    assert conv.is_contiguous(memory_format=torch.channels_last)


def test_bf16_steps_see_each_optimizer_step_inside_one_context() -> None:
    """The trainer enters step_context once around every step: a weight changed by one step
    must reach the next step's forward, not a bf16 copy autocast cached at the first."""
    from sagan_plugin.precision import step_context

    linear, x = torch.nn.Linear(4, 2), torch.randn(3, 4)
    with step_context(torch.device("cpu"), "bf16"):
        before = linear(x)
        with torch.no_grad():
            linear.bias.add_(1.0)  # what an optimizer step does, in place
            linear.weight.mul_(0.0)
        after = linear(x)
    assert before.dtype == after.dtype == torch.bfloat16
    assert torch.allclose(after.float(), linear.bias.expand(3, 2), atol=1e-2)


def test_bf16_steps_compute_in_bfloat16_and_fp32_ones_in_float32() -> None:
    """train.precision=bf16 is bfloat16 (fp16 would need loss scaling), fp32 is no autocast."""
    from sagan_plugin.precision import step_context

    conv, x = torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)
    with step_context(torch.device("cpu"), "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with step_context(torch.device("cpu"), "fp32"):
        assert conv(x).dtype == torch.float32


def test_sampling_inside_the_loop_may_use_any_attention_kernel_in_float32() -> None:
    """train.sdpa_backend=flash holds flash alone around the loop (for bf16); grids and FID
    sample in float32, which CUDA's flash kernel does not take: any kernel is allowed there."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sagan_plugin.trainer import aside_from_training

    with torch.autocast("cpu", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        with aside_from_training(torch.device("cpu")):
            assert torch.backends.cuda.math_sdp_enabled()
            assert torch.backends.cuda.mem_efficient_sdp_enabled()
            assert not torch.is_autocast_enabled("cpu")
        assert not torch.backends.cuda.math_sdp_enabled()  # the loop's choice, back


def _final_weights(cfg, net: str) -> dict:
    from sagan_plugin.checkpoint import checkpoint_path

    path = checkpoint_path(cfg.run_dir, cfg.train.steps, net)
    return torch.load(path, weights_only=False)["model_state_dict"]


def test_resuming_in_the_other_memory_layout_keeps_each_weights_adam_moments(
        tiny_overrides: list[str], tmp_path: Path) -> None:
    """train.channels_last may change on resuming. A checkpoint's Adam moments keep the layout
    they were saved in, and fused Adam pairs them with the weights element by element in
    memory: D must continue as an uninterrupted run does (G's batch norms amplify rounding)."""
    from sagan_plugin.train import run

    whole = compose(tiny_overrides + ["train.steps=6", f"run_dir={tmp_path / 'whole'}"])
    run(whole)
    split = tiny_overrides + [f"run_dir={tmp_path / 'split'}"]
    run(compose(split + ["train.steps=3"]))
    resumed = compose(split + ["train.steps=6", "train.channels_last=true"])
    run(resumed)
    expected, got = _final_weights(whole, "netD"), _final_weights(resumed, "netD")
    for key in expected:
        assert torch.allclose(expected[key], got[key], atol=1e-5), key


def test_a_longer_run_resumes_on_its_own_learning_rate_schedule(
        tiny_overrides: list[str], monkeypatch) -> None:
    """train.lr_decay=linear over 4 steps, extended from a run of 2: its third step trains at
    the 4-step schedule's rate (half), not at the 2-step one's (0), which the checkpoint has."""
    from sagan_plugin import trainer
    from sagan_plugin.train import run

    decay = tiny_overrides + ["train.lr_decay=linear"]
    run(compose(decay + ["train.steps=2"]))
    restore, rates = trainer.SAGANTrainer._restore_latest, []

    def restore_and_note(self):
        step = restore(self)
        rates.append((self.optD.param_groups[0]["lr"], self.optG.param_groups[0]["lr"]))
        return step

    monkeypatch.setattr(trainer.SAGANTrainer, "_restore_latest", restore_and_note)
    cfg = compose(decay + ["train.steps=4"])
    run(cfg)
    assert rates == [(pytest.approx(cfg.train.lr_d / 2), pytest.approx(cfg.train.lr_g / 2))]
