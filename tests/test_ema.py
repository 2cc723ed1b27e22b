"""The EMA of G: BigGAN's formula with a start step, saved, and preferred when loading."""

import copy

import torch
from torch.nn.utils import parametrize

from sagan_plugin.checkpoint import checkpoint_path, read_checkpoint
from sagan_plugin.config import compose
from sagan_plugin.ema import EMA
from sagan_plugin.nets import GENERATORS
from sagan_plugin.runs import load_generator
from sagan_plugin.train import run


def _perturb(net: torch.nn.Module) -> None:
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor))


def test_ema_copies_before_start_then_averages_and_copies_buffers() -> None:
    torch.manual_seed(0)
    net = GENERATORS[32](ngf=8)
    ema = EMA(net, decay=0.75, start=1)
    _perturb(net)
    ema.update(net, global_step=1)  # up to the start step: a copy
    for a, b in zip(ema.model.state_dict().values(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    before = copy.deepcopy(ema.model)
    _perturb(net)
    ema.update(net, global_step=2)
    for (name, averaged), old, new in zip(ema.model.named_parameters(), before.parameters(),
                                          net.parameters(), strict=True):
        torch.testing.assert_close(averaged, 0.75 * old + 0.25 * new, rtol=0, atol=1e-6,
                                   msg=name)
    buffers = zip(ema.model.named_buffers(), before.buffers(), net.buffers(), strict=True)
    for (name, mine), old, theirs in buffers:
        if name.endswith(("_u", "_v")):  # spectral norm's: the EMA's own power iteration
            assert not torch.equal(mine, theirs) and not torch.equal(mine, old), name
        else:  # batch-norm running statistics: copied
            assert torch.equal(mine, theirs), name
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())


def test_ema_power_iteration_continues_from_its_own_vectors() -> None:
    """After the start each update runs one iteration u = Wv/|Wv|, v = W^T u/|W^T u| on the
    averaged W from the EMA's own v: G's u and v (here perturbed) are never copied in."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = GENERATORS[32](ngf=8)
    ema = EMA(net, decay=0.5, start=0)
    _perturb(net)
    before = {name: b.clone() for name, b in ema.model.named_buffers()}
    ema.update(net, global_step=1)
    checked = 0
    for name, module in ema.model.named_modules():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        weight = module.parametrizations.weight.original.flatten(1)
        v = F.normalize(before[f"{name}.parametrizations.weight.0._v"], dim=0)
        u = F.normalize(weight @ v, dim=0)
        v = F.normalize(weight.T @ u, dim=0)
        norm = module.parametrizations.weight[0]
        torch.testing.assert_close(norm._u, u, msg=name)
        torch.testing.assert_close(norm._v, v, msg=name)
        checked += 1
    assert checked > 10


def _sigmas(net: torch.nn.Module) -> dict[str, float]:
    """Largest singular value of every spectrally normalised weight, as the net uses it."""
    return {name: torch.linalg.matrix_norm(m.weight.detach().flatten(1).double(), ord=2).item()
            for name, m in net.named_modules() if parametrize.is_parametrized(m, "weight")}


def test_ema_weights_are_normalised_by_their_own_sigma(tiny_overrides: list[str]) -> None:
    cfg = compose(tiny_overrides + ["train.steps=12", "train.ema_decay=0.9",
                                    "train.ema_start=3"])
    run(cfg)
    loaded = load_generator(cfg.run_dir)
    assert loaded.ema
    sigmas = _sigmas(loaded.netG)
    assert len(sigmas) > 10
    assert all(abs(sigma - 1) < 1e-2 for sigma in sigmas.values()), sigmas


def test_trainer_saves_the_ema_and_loading_prefers_it(tiny_overrides: list[str],
                                                      monkeypatch) -> None:
    cfg = compose(tiny_overrides + ["train.steps=3", "train.ema_decay=0.5", "train.ema_start=1"])
    steps, update = [], EMA.update
    monkeypatch.setattr(EMA, "update", lambda self, net, global_step: (
        steps.append(global_step), update(self, net, global_step))[1])
    trainer = run(cfg)
    assert steps == [1, 2, 3]  # after each G update, with the step it completed
    ckpt = read_checkpoint(checkpoint_path(cfg.run_dir, 3))
    assert ckpt["ema"] == {"decay": 0.5, "start": 1}
    ema_state, g_state = ckpt["ema_state_dict"], ckpt["model_state_dict"]
    assert ema_state.keys() == g_state.keys()
    key = "linear.parametrizations.weight.original"
    assert not torch.equal(ema_state[key], g_state[key])
    for name, value in trainer.ema.state_dict().items():
        assert torch.equal(ema_state[name], value)

    loaded = load_generator(cfg.run_dir)
    assert loaded.ema and loaded.step == 3
    assert torch.equal(loaded.netG.state_dict()[key], ema_state[key])
    assert not load_generator(cfg.run_dir, prefer_ema=False).ema
