"""Where the nets follow the authors' reference beyond the architecture: batch-norm decay,
when spectral norm iterates, feat64, the 32 px D's layout, the ImageNet crop."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.nn.utils.parametrizations import _SpectralNorm

from sagan_plugin.config import build_models, compose
from sagan_plugin.data import square_crop_transform
from sagan_plugin.host import MetricLog
from sagan_plugin.nets import DISCRIMINATORS, GENERATORS
from sagan_plugin.nets.layers import BatchNorm2d


def test_batch_norm_decay_is_the_reference_one() -> None:
    netG = GENERATORS[32](num_classes=10, ngf=8)
    conditional = [m for name, m in netG.named_modules()
                   if isinstance(m, BatchNorm2d) and name != "bn_out"]
    assert conditional and all(m.decay == 0.999 for m in conditional)
    assert netG.bn_out.decay == 0.9999
    assert all(m.momentum == pytest.approx(1 - m.decay) for m in [*conditional, netG.bn_out])


def test_running_statistics_average_then_decay() -> None:
    """Batch k is weighted 10 / (k + 9) until that falls below 1 - decay, then by 1 - decay."""
    torch.manual_seed(0)
    bn = BatchNorm2d(3, decay=0.5)  # the decay takes over at batch 12
    batches = [torch.randn(8, 3, 2, 2) * (k + 1) + k for k in range(15)]
    mean, var = torch.zeros(3), torch.ones(3)
    for k, x in enumerate(batches, start=1):
        bn(x)
        weight = max(10 / (k + 9), 1 - 0.5)
        mean = (1 - weight) * mean + weight * x.mean(dim=(0, 2, 3))
        var = (1 - weight) * var + weight * x.var(dim=(0, 2, 3), unbiased=True)
        torch.testing.assert_close(bn.running_mean, mean)
        torch.testing.assert_close(bn.running_var, var)
    bn.eval()  # eval mode normalises with the running statistics
    x = torch.randn(2, 3, 2, 2)
    expected = (x - mean[:, None, None]) / (var[:, None, None] + bn.eps).sqrt()
    torch.testing.assert_close(bn(x), expected * bn.weight[:, None, None]
                               + bn.bias[:, None, None])


def test_running_statistics_decay_takes_over_at_one_minus_decay() -> None:
    """Past the opening, batch k weighs 1 - decay, not decay (decay 0.5 cannot tell them)."""
    torch.manual_seed(0)
    bn = BatchNorm2d(2, decay=0.6)  # 10 / (k + 9) falls below 0.4 after batch 16
    mean, var = torch.zeros(2), torch.ones(2)
    for k in range(1, 21):
        x = torch.randn(6, 2, 2, 2) * k + k
        bn(x)
        weight = max(10 / (k + 9), 0.4)
        mean = (1 - weight) * mean + weight * x.mean(dim=(0, 2, 3))
        var = (1 - weight) * var + weight * x.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)


def test_conditional_batch_norm_starts_with_gain_one_and_bias_zero() -> None:
    """The reference's per-class gamma starts at 1 and beta at 0: at initialisation every
    class's output is x normalised by the batch's statistics alone."""
    from sagan_plugin.nets.layers import ConditionalBatchNorm2d

    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(4, num_classes=5)
    x, y = torch.randn(6, 4, 3, 3) * 2 + 1, torch.tensor([0, 1, 2, 3, 4, 1])
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(cbn(x, y), (x - mean) / (var + 1e-5).sqrt())
    torch.testing.assert_close(cbn.gain, torch.ones(5, 4), rtol=0, atol=0)
    torch.testing.assert_close(cbn.bias, torch.zeros(5, 4), rtol=0, atol=0)


def _count_power_iterations(monkeypatch: pytest.MonkeyPatch) -> dict[int, int]:
    counts: dict[int, int] = {}
    original = _SpectralNorm._power_method

    def counting(self, weight_mat, n_power_iterations):
        counts[id(self)] = counts.get(id(self), 0) + n_power_iterations
        return original(self, weight_mat, n_power_iterations)

    monkeypatch.setattr(_SpectralNorm, "_power_method", counting)
    return counts


def test_spectral_norm_of_d_iterates_once_per_d_step_before_its_passes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    netG, netD = GENERATORS[32](num_classes=10, ngf=4), DISCRIMINATORS[32](num_classes=10, ndf=4)
    optG, optD = (torch.optim.Adam(net.parameters()) for net in (netG, netD))
    norms = [id(m) for m in netD.modules() if isinstance(m, _SpectralNorm)]
    counts = _count_power_iterations(monkeypatch)
    after_each_forward = []
    netD.register_forward_hook(lambda *_: after_each_forward.append(
        [counts.get(n, 0) for n in norms]))
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randint(10, (4,))

    netD.train_step((x, y), netG, optD, MetricLog(), device="cpu")
    assert after_each_forward == [[1] * len(norms)] * 2  # once, before the two passes
    netG.train_step((x, y), netD, optG, MetricLog(), device="cpu")
    assert [counts.get(n, 0) for n in norms] == [1] * len(norms)  # G's step leaves D's alone
    assert all(m.training for m in netD.modules())


def test_spectral_norm_iterates_once_per_training_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """One power iteration per training-mode forward of G and of D (n_power_iterations=1)."""
    torch.manual_seed(0)
    netG, netD = GENERATORS[32](num_classes=10, ngf=4), DISCRIMINATORS[32](num_classes=10, ndf=4)
    counts = _count_power_iterations(monkeypatch)
    y = torch.tensor([0, 5])
    with torch.no_grad():
        netD(netG(torch.randn(2, 128), y), y)
    for net in (netG, netD):
        norms = [id(m) for m in net.modules() if isinstance(m, _SpectralNorm)]
        assert norms and [counts.get(n, 0) for n in norms] == [1] * len(norms)


def test_one_override_moves_both_attention_layers_to_64() -> None:
    cfg = compose(["model=sagan", "data=imagenet_128", "model.ngf=8", "model.ndf=8",
                   "model.attention=64"])
    netG, netD = build_models(cfg)
    assert netG.attention.theta.in_channels == 2 * 8  # G at 64x64: 2*ngf channels
    assert netD.attention_after == 0 and netD.attention.theta.in_channels == 8  # D at 64x64
    netG, netD = build_models(compose(["model=sagan", "data=imagenet_128", "model.ngf=8",
                                       "model.ndf=8", "model.attention=0",
                                       "model.g_attention=64"]))
    assert netG.attention.theta.in_channels == 2 * 8 and netD.attention is None


def test_32px_discriminator_ends_at_8x8_as_sngan() -> None:
    netD = DISCRIMINATORS[32](num_classes=0, ndf=8)
    sizes, h = [], torch.zeros(1, 3, 32, 32)
    for block in netD.blocks:
        h = block(h)
        sizes.append(h.shape[-1])
    assert sizes == [16, 8, 8, 8]
    assert netD.attention_after == 0  # at 16x16, after the first block
    assert [block.shortcut is None for block in netD.blocks[1:]] == [False, True, True]


def test_reference_crop_is_the_largest_centred_square() -> None:
    """A 60x40 picture: green centre square, red 10-pixel bands left and right."""
    image = Image.new("RGB", (60, 40), (255, 0, 0))
    image.paste((0, 255, 0), (10, 0, 50, 40))
    out = square_crop_transform(16)(image)
    assert out.shape == (3, 16, 16)
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 16, 16)
    torch.testing.assert_close(out, green)
    tall = Image.new("RGB", (30, 50), (0, 0, 255))
    tall.paste((255, 255, 255), (0, 10, 30, 40))
    torch.testing.assert_close(square_crop_transform(8)(tall), torch.ones(3, 8, 8))


def test_reference_crop_is_resized_bilinearly() -> None:
    """The square is resized as PIL's bilinear filter resizes it, not by nearest pixels."""
    pixels = torch.randint(0, 256, (40, 60, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    image = Image.fromarray(pixels.numpy())
    square = image.crop((10, 0, 50, 40)).resize((16, 16), Image.BILINEAR)
    expected = torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1).float()
    torch.testing.assert_close(square_crop_transform(16)(image), expected / 255 * 2 - 1)


def test_imagenet_128_uses_the_reference_crop_by_default() -> None:
    assert compose(["data=imagenet_128"]).data.crop == "square"
    assert compose(["data=imagenet_32"]).data.crop == "mimicry"


def test_the_128px_preset_trains_as_the_reference() -> None:
    """brain-research/self-attention-gan's train_imagenet.py and model.py: hinge loss, Adam
    (0, 0.9 as the paper), lr_G 1e-4 and lr_D 4e-4, one D step per G step, no decay, z of 128,
    batch 256 as 4 GPUs of 64 whose G normalises its own 64 images."""
    from sagan_plugin.config import compose

    cfg = compose(["model=sagan", "data=imagenet_128"])
    train, model = cfg.train, cfg.model
    assert (train.lr_g, train.lr_d, train.beta1, train.beta2) == (1e-4, 4e-4, 0.0, 0.9)
    assert (train.n_dis, train.lr_decay, train.batch_size, train.bn_group) == (1, None, 256, 64)
    assert (model.nz, model.loss_type, model.bn_decay, model.bn_out_decay) == (128, "hinge",
                                                                               0.999, 0.9999)


def _up(t: torch.Tensor) -> torch.Tensor:  # 2x nearest, as the reference's tf.image.resize
    return t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def _conv(layer: torch.nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
    return F.conv2d(t, layer.weight, layer.bias, padding=layer.padding)


def _batch_norm(bn: torch.nn.Module, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Eval-mode batch norm with running statistics; the class's gain and bias if it has them."""
    plain = getattr(bn, "bn", bn)
    h = (t - plain.running_mean[:, None, None]) / (plain.running_var[:, None, None]
                                                   + plain.eps).sqrt()
    if getattr(bn, "num_classes", 0):
        return bn.gain[y][:, :, None, None] * h + bn.bias[y][:, :, None, None]
    return plain.weight[:, None, None] * h + plain.bias[:, None, None]


def _reference_g(netG: torch.nn.Module, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference generator, op by op: linear to 4x4; blocks of BN, ReLU, up, conv, BN,
    ReLU, conv plus an up-sampled 1x1 shortcut; attention after its block; BN, ReLU, conv, tanh."""
    h = F.linear(z, netG.linear.weight, netG.linear.bias).view(len(z), -1, 4, 4)
    for i, b in enumerate(netG.blocks):
        r = _conv(b.conv1, _up(F.relu(_batch_norm(b.bn1, h, y))))
        h = _conv(b.conv2, F.relu(_batch_norm(b.bn2, r, y))) + _conv(b.shortcut, _up(h))
        if i == netG.attention_after:
            h = netG.attention(h)
    return torch.tanh(_conv(netG.conv_out, F.relu(_batch_norm(netG.bn_out, h, None))))


def _reference_d(netD: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference discriminator, op by op: blocks of (ReLU,) conv, ReLU, conv, 2x2 average
    pool plus a 1x1 shortcut; attention after its block; ReLU, sum over positions, linear plus
    the projection <embed(y), h>."""
    h = x
    for i, b in enumerate(netD.blocks):
        first = i == 0
        r = _conv(b.conv2, F.relu(_conv(b.conv1, h if first else F.relu(h))))
        down = first or b.downsample
        if first:
            skip = _conv(b.shortcut, F.avg_pool2d(h, 2))
        else:
            skip = h if b.shortcut is None else _conv(b.shortcut, h)
            skip = F.avg_pool2d(skip, 2) if down else skip
        h = (F.avg_pool2d(r, 2) if down else r) + skip
        if i == netD.attention_after:
            h = netD.attention(h)
    h = F.relu(h).flatten(2).sum(-1)
    projection = (netD.embedding.weight[y] * h).sum(1, keepdim=True)
    return F.linear(h, netD.linear.weight, netD.linear.bias) + projection


@pytest.mark.parametrize("resolution", [32, 64])
def test_g_and_d_compute_the_reference_nets_op_by_op(resolution: int) -> None:
    """Upsampling, pooling, the order inside each block, the heads: a G or D that kept every
    shape but changed one of them (bilinear up-sampling, mean pooling, a lost ReLU) differs."""
    torch.manual_seed(0)
    netG = GENERATORS[resolution](num_classes=10, ngf=8)
    netD = DISCRIMINATORS[resolution](num_classes=10, ndf=8)
    z, y = torch.randn(6, netG.nz), torch.tensor([0, 3, 9, 3, 1, 7])
    with torch.no_grad():
        netG(torch.randn(8, netG.nz))  # running statistics away from (0, 1)
        for module in netG.modules():
            if hasattr(module, "gain"):
                module.gain.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)
        netG.attention.gamma.fill_(0.6)
        netD.attention.gamma.fill_(0.6)
        netG.eval(), netD.eval()
        images = netG(z, y)
        torch.testing.assert_close(images, _reference_g(netG, z, y), rtol=0, atol=1e-5)
        torch.testing.assert_close(netD(images, y), _reference_d(netD, images, y),
                                   rtol=1e-5, atol=1e-4)
