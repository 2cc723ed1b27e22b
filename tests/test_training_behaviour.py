"""What one training step must do, whatever the code looks like: D's step separates reals from
fakes, G's step fools D, labels enter D through the projection term alone, one label per image."""

from __future__ import annotations

import copy

import pytest
import torch

from sagan_plugin.host import MetricLog
from sagan_plugin.nets import DISCRIMINATORS, GENERATORS
from sagan_plugin.nets.layers import spectral_norm_frozen

BATCH = 16


def _nets(num_classes: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return (GENERATORS[32](num_classes=num_classes, ngf=8),
            DISCRIMINATORS[32](num_classes=num_classes, ndf=8))


def _d_output(netD: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> float:
    """D's mean logit without a power iteration (eval mode), in the mode D was in after."""
    netD.eval()
    try:
        with torch.no_grad():
            return netD(x, y).mean().item()
    finally:
        netD.train()


def _reals(num_classes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(BATCH, 3, 32, 32, generator=generator) * 2 - 1
    y = torch.randint(max(num_classes, 1), (BATCH,), generator=generator)
    return x, y if num_classes else None


@pytest.mark.parametrize("num_classes", [0, 10])
def test_a_d_step_raises_d_on_reals_and_lowers_it_on_fakes(num_classes: int) -> None:
    netG, netD = _nets(num_classes)
    netG.eval()  # its fakes are then the same for the same noise
    x, y = _reals(num_classes)
    torch.manual_seed(2)
    with torch.no_grad():
        fakes, fake_labels = netG.generate_images_with_labels(BATCH)
    before = _d_output(netD, x, y), _d_output(netD, fakes, fake_labels)
    optD = torch.optim.Adam(netD.parameters(), lr=4e-4, betas=(0.0, 0.9))
    torch.manual_seed(2)  # D's step draws those same fakes
    labels = y if y is not None else torch.zeros(BATCH, dtype=torch.int64)
    netD.train_step((x, labels), netG, optD, MetricLog(), device="cpu")
    after = _d_output(netD, x, y), _d_output(netD, fakes, fake_labels)
    assert after[0] > before[0], "D's output on reals must rise"
    assert after[1] < before[1], "D's output on fakes must fall"


@pytest.mark.parametrize("num_classes", [0, 10])
def test_a_g_step_raises_d_on_the_fakes(num_classes: int) -> None:
    netG, netD = _nets(num_classes)
    x, y = _reals(num_classes)

    def d_on_fakes() -> float:
        # G as it trains (batch statistics), without a power iteration of its own
        torch.manual_seed(3)
        with torch.no_grad(), spectral_norm_frozen(netG):
            fakes, labels = netG.generate_images_with_labels(BATCH)
        return _d_output(netD, fakes, labels)

    before = d_on_fakes()
    optG = torch.optim.Adam(netG.parameters(), lr=1e-3, betas=(0.0, 0.9))
    labels = y if y is not None else torch.zeros(BATCH, dtype=torch.int64)
    netG.train_step((x, labels), netD, optG, MetricLog(), device="cpu")
    assert d_on_fakes() > before, "G's step must make D rate its fakes higher"


@pytest.mark.parametrize("step", ["D", "G"])
def test_d_judges_each_image_with_its_own_label(step: str) -> None:
    """In both steps D sees the reals with the reals' labels and the fakes with the labels G
    drew them for: a fake judged under a real image's label trains a class-blind D."""
    netG, netD = _nets(10)
    x, y = _reals(10)
    made, judged = [], []

    def generating(z, labels):
        images = type(netG).forward(netG, z, labels)
        made.append((images, labels))
        return images

    def judging(images, labels):
        judged.append((images, labels))
        return type(netD).forward(netD, images, labels)

    netG.forward, netD.forward = generating, judging
    if step == "D":
        netD.train_step((x, y), netG, torch.optim.SGD(netD.parameters(), 0.0), MetricLog(),
                        device="cpu")
        expected = [(x, y), made[0]]
    else:
        netG.train_step((x, y), netD, torch.optim.SGD(netG.parameters(), 0.0), MetricLog(),
                        device="cpu")
        expected = [made[0]]
    assert len(made) == 1 and not torch.equal(made[0][1], y)  # labels that tell them apart
    for (images, labels), (want_images, want_labels) in zip(judged, expected, strict=True):
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)


def test_labels_enter_d_through_the_projection_term_alone() -> None:
    _, netD = _nets(10)
    netD.eval()
    x, y = _reals(10)
    other = (y + 1 + torch.arange(BATCH) % 9) % 10  # a different class for every image
    captured = {}
    netD.linear.register_forward_pre_hook(lambda module, args: captured.update(h=args[0]))
    with torch.no_grad():
        out = netD(x, y)
        h = captured["h"]  # pooled features (N, C): the same for any label
        out_other = netD(x, other)
        assert torch.equal(captured["h"], h)
        embedding = netD.embedding.weight  # spectrally normalised, as the forward uses it
        torch.testing.assert_close(out, netD.linear(h) + (embedding[y] * h).sum(1, keepdim=True))
        difference = ((embedding[other] - embedding[y]) * h).sum(1, keepdim=True)
        torch.testing.assert_close(out_other - out, difference)
    assert difference.abs().min() > 0  # every label change moved D's output


def test_labels_must_be_one_per_image() -> None:
    netG, netD = _nets(10)
    z, x = torch.randn(4, netG.nz), torch.rand(4, 3, 32, 32) * 2 - 1
    for wrong in (torch.tensor([3]), torch.zeros(4, 1, dtype=torch.int64),
                  torch.zeros(5, dtype=torch.int64)):
        with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
            netG(z, wrong)
        with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
            netD(x, wrong)


def test_noise_and_images_of_another_shape_are_refused_by_name() -> None:
    """D's sum pooling would score 64x64 images with a 32 px D without a word; G's linear
    layer would fail on another nz with a message about mat1 and mat2."""
    netG, netD = _nets(10)
    y = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"noise must have shape \(N, 128\), got \(4, 100\)"):
        netG(torch.randn(4, 100), y)
    for shape in ((4, 3, 64, 64), (4, 1, 32, 32), (4, 3 * 32 * 32)):
        with pytest.raises(ValueError, match=r"images must have shape \(N, 3, 32, 32\), got "):
            netD(torch.zeros(shape), y)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_batch_norm_in_groups_normalises_each_group_alone_and_updates_in_turn(
        memory_format: torch.memory_format) -> None:
    """The reference's G normalises each GPU's 64 images by their own statistics, and each
    GPU's update reaches the running ones: groups of a batch must equal separate batches."""
    from sagan_plugin.nets.layers import BatchNorm2d

    torch.manual_seed(0)
    x = (torch.randn(12, 5, 4, 4) * 3 + 1).contiguous(memory_format=memory_format)
    grouped = BatchNorm2d(5)
    with torch.no_grad():
        grouped.weight.uniform_(0.5, 1.5), grouped.bias.uniform_(-1, 1)
    separate = copy.deepcopy(grouped)
    grouped.group = 4
    out = grouped(x)
    expected = torch.cat([separate(part) for part in x.split(4)])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert out.is_contiguous(memory_format=memory_format)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(grouped, name), getattr(separate, name), rtol=0,
                                   atol=0)
    assert int(grouped.num_batches_tracked) == 3
    whole = BatchNorm2d(5)
    whole.group = 12  # a group of the whole batch or more: one batch, as without groups
    torch.testing.assert_close(whole(x), BatchNorm2d(5)(x), rtol=0, atol=0)


def test_training_normalises_g_in_the_groups_of_train_bn_group(tmp_path) -> None:
    from sagan_plugin.config import compose
    from sagan_plugin.nets.layers import BatchNorm2d
    from sagan_plugin.train import run

    assert compose(["model=sagan"]).train.bn_group == 64  # the reference's images per GPU
    assert compose(["model=sngan"]).train.bn_group is None
    tiny = ["model=sagan", "data=procedural", "model.ngf=4", "model.ndf=4", "data.size=16",
            "data.num_workers=0", "train.steps=1", "train.batch_size=4"]
    for group, updates in ((2, 4), (None, 2)):  # G runs twice a step: D's fakes, G's own
        trainer = run(compose([*tiny, f"run_dir={tmp_path / str(group)}",
                               f"train.bn_group={'null' if group is None else group}"]))
        norms = [m for m in trainer.netG.modules() if isinstance(m, BatchNorm2d)]
        assert norms and {(m.group, int(m.num_batches_tracked)) for m in norms} == \
            {(group, updates)}


@pytest.mark.parametrize("num_classes", [0, 10])
def test_steps_minimise_the_hinge_losses(num_classes: int) -> None:
    """errD = mean relu(1 - D(x)) + mean relu(1 + D(G(z))), errG = -mean D(G(z)): the loss
    each step logs (and backpropagates), from D's logits in that step, nets built directly."""
    netG, netD = _nets(num_classes)
    x, y = _reals(num_classes)
    labels = y if y is not None else torch.zeros(BATCH, dtype=torch.int64)
    logits = []
    netD.register_forward_hook(lambda module, args, out: logits.append(out.detach()))
    log = netD.train_step((x, labels), netG, torch.optim.SGD(netD.parameters(), 0.0),
                          MetricLog(), device="cpu")
    real, fake = logits
    assert ((fake < -1) | (real > 1)).any()  # where relu cuts off: it must be there
    expected = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
    assert log["errD"] == pytest.approx(expected.item(), abs=1e-3)  # logged to 4 places
    logits.clear()
    log = netG.train_step((x, labels), netD, torch.optim.SGD(netG.parameters(), 0.0),
                          MetricLog(), device="cpu")
    (fake,) = logits
    assert log["errG"] == pytest.approx(-fake.mean().item(), abs=1e-3)
