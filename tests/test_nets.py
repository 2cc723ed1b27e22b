"""The SAGAN nets: the host's contract, the attention formula, widths, spectral norm."""

from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from sagan_plugin.host import MetricLog
from sagan_plugin.nets import DISCRIMINATORS, GENERATORS, SelfAttention


@pytest.mark.parametrize("resolution", [32, 64, 128])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_host_contract(resolution: int, num_classes: int) -> None:
    """What Mimicry's tests/nets/sagan check: shapes, and one D and one G step on CPU."""
    torch.manual_seed(0)
    width = 8  # narrow nets: the contract does not depend on width
    netG = GENERATORS[resolution](num_classes=num_classes, ngf=width)
    netD = DISCRIMINATORS[resolution](num_classes=num_classes, ndf=width)
    n = 3
    z, y = torch.randn(n, netG.nz), torch.randint(max(num_classes, 1), (n,))
    assert netG(z, y if num_classes else None).shape == (n, 3, resolution, resolution)
    assert netG(z, None).shape == (n, 3, resolution, resolution)
    x = torch.rand(n, 3, resolution, resolution) * 2 - 1
    assert netD(x, y if num_classes else None).shape == (n, 1)

    optD = torch.optim.Adam(netD.parameters(), 4e-4, betas=(0.0, 0.9))
    optG = torch.optim.Adam(netG.parameters(), 1e-4, betas=(0.0, 0.9))
    log_data = MetricLog()
    before = [p.detach().clone() for p in netD.parameters()]
    log_data = netD.train_step((x, y), netG, optD, log_data, device="cpu")
    log_data = netG.train_step((x, y), netD, optG, log_data, device="cpu")
    for name in ("errD", "errG", "D(x)", "D(G(z))", "gamma_G", "gamma_D"):
        assert isinstance(log_data[name], float), name
    assert any(not torch.equal(a, b) for a, b in zip(before, netD.parameters(), strict=True))


class CountingScaler(torch.amp.GradScaler):
    """A GradScaler that counts its calls, and the dtype of what D's first block computes."""

    def __init__(self) -> None:
        super().__init__("cpu", init_scale=2.0**10)
        self.calls: list[str] = []

    def scale(self, outputs):
        self.calls.append("scale")
        return super().scale(outputs)

    def step(self, optimizer, *args, **kwargs):
        self.calls.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls.append("update")
        return super().update(new_scale)


@pytest.mark.parametrize("amp", [False, True])
def test_mimicry_trainer_amp_runs_both_steps_in_float16_through_its_scaler(amp: bool) -> None:
    """Mimicry's Trainer(amp=True) hands each train_step a GradScaler, as its own nets use it:
    autocast to float16, the loss scaled, the step and update through the scaler."""
    torch.manual_seed(0)
    netG, netD = GENERATORS[32](num_classes=10, ngf=8), DISCRIMINATORS[32](num_classes=10, ndf=8)
    dtypes = []
    for net in (netG.blocks[0], netD.blocks[0]):
        net.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randint(10, (4,))
    scaler = CountingScaler() if amp else None
    sgd = [torch.optim.SGD(net.parameters(), 0.1) for net in (netD, netG)]
    log_data = netD.train_step((x, y), netG, sgd[0], MetricLog(), device="cpu", scaler=scaler)
    netG.train_step((x, y), netD, sgd[1], log_data, device="cpu", scaler=scaler)
    half = torch.float16 if amp else torch.float32
    assert dtypes == [half] * 5  # D: G's fakes, D's real and fake passes; G: its pass, D's
    assert scaler is None or scaler.calls == ["scale", "step", "update"] * 2
    assert all(torch.isfinite(p).all() for p in [*netG.parameters(), *netD.parameters()])


def test_sagan_nets_train_beside_mimicrys_unconditional_ones() -> None:
    """A SAGAN D with a Mimicry G (which has no generate_images_with_labels), and a SAGAN G
    with a Mimicry D (whose forward takes images alone)."""
    from sagan_plugin.host import torch_mimicry as mmc

    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.zeros(4, dtype=torch.long)
    pairs = [(mmc.nets.sngan.SNGANGenerator32(ngf=16), DISCRIMINATORS[32](ndf=8)),
             (GENERATORS[32](ngf=8), mmc.nets.sngan.SNGANDiscriminator32(ndf=16))]
    for netG, netD in pairs:
        log_data = netD.train_step((x, y), netG, torch.optim.SGD(netD.parameters(), 0.1),
                                   MetricLog(), device="cpu")
        log_data = netG.train_step((x, y), netD, torch.optim.SGD(netG.parameters(), 0.1),
                                   log_data, device="cpu")
        assert {"errD", "errG"} <= set(log_data.keys())


def test_mimicry_constructor_habits_are_refused_not_misread() -> None:
    """Mimicry's SAGAN G takes (num_classes, bottom_width, nz, ngf) positionally: here the
    arguments after num_classes are keywords, so (10, 4, 128) cannot build nz=4, ngf=128."""
    with pytest.raises(TypeError, match="positional"):
        GENERATORS[32](10, 4, 128)
    with pytest.raises(TypeError, match="positional"):  # Mimicry's (num_classes, ndf, loss)
        DISCRIMINATORS[32](10, 8, "hinge")
    assert GENERATORS[32](num_classes=10, ngf=8, bottom_width=4).bottom_width == 4
    with pytest.raises(ValueError, match="starts from 4x4"):
        GENERATORS[32](num_classes=10, ngf=8, bottom_width=8)
    netG = GENERATORS[32](ngf=8)  # unconditional: no class to draw for
    assert netG.generate_images(2, device="cpu").shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="class c=3 given to an unconditional generator"):
        netG.generate_images(2, c=3, device="cpu")


def _reference_attention(layer: SelfAttention,
                         x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y = x + gamma * W_o(g beta^T), beta = softmax(theta^T phi), written out with explicit
    products: (y, beta)."""
    n, c, h, w = x.shape
    theta = layer.theta(x).reshape(n, c // 8, h * w)
    phi = F.max_pool2d(layer.phi(x), 2).reshape(n, c // 8, h * w // 4)
    g = F.max_pool2d(layer.g(x), 2).reshape(n, c // 2, h * w // 4)
    beta = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)  # (N, HW, HW/4)
    o = torch.bmm(g, beta.transpose(1, 2)).reshape(n, c // 2, h, w)
    return x + layer.gamma * layer.o(o), beta


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_attention_equals_formula(dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(0)
    layer = SelfAttention(32).to(dtype).eval()
    assert layer.gamma.item() == 0.0
    with torch.no_grad():
        layer.gamma.fill_(0.7)
    x = torch.randn(2, 32, 8, 8, dtype=dtype)
    with torch.no_grad():
        expected, beta = _reference_attention(layer, x)
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=tol)
        weights = layer.attention_weights(x)
    assert weights.shape == (2, 64, 16)
    torch.testing.assert_close(weights, beta, rtol=0, atol=tol)


def test_attention_placement_is_configurable() -> None:
    netG = GENERATORS[128](num_classes=0, ngf=8, attention=64)
    netD = DISCRIMINATORS[128](num_classes=0, ndf=8, attention=64)
    assert netG.attention.theta.in_channels == 8 * 2  # feat64: 64x64, 2*ngf channels
    assert netD.attention.theta.in_channels == 8
    with pytest.raises(ValueError, match="feature maps are"):
        GENERATORS[128](num_classes=0, ngf=8, attention=7)
    assert GENERATORS[32](ngf=8, attention=0).attention is None


@pytest.mark.parametrize("net, resolution, width, message", [
    ("G", 32, {"ngf": 1}, "G attention at 16x16 has 4*ngf channels, which must be a multiple of "
                          "8: ngf (model.ngf) must be a multiple of 2, got 1"),
    ("D", 64, {"ndf": 4}, "D attention at 32x32 has 1*ndf channels, which must be a multiple of "
                          "8: ndf (model.ndf) must be a multiple of 8, got 4"),
])
def test_attention_widths_name_the_width_to_change(net, resolution, width, message) -> None:
    nets = GENERATORS if net == "G" else DISCRIMINATORS
    with pytest.raises(ValueError) as error:
        nets[resolution](**width)
    assert str(error.value) == message
    assert nets[resolution](**{k: 2 * v for k, v in width.items()}).attention is not None


def _expected_parameter_counts(num_classes: int, nz: int = 128, ch: int = 64) -> tuple[int, int]:
    """Parameters of the authors' 128 px SAGAN, from its layer list (REFERENCE.md section 2)."""
    def conv(c_in, c_out, k, bias=True):
        return c_in * c_out * k * k + (c_out if bias else 0)

    def attention(c):
        return 2 * conv(c, c // 8, 1, False) + conv(c, c // 2, 1, False) \
            + conv(c // 2, c, 1, False) + 1

    g_widths = [16 * ch, 16 * ch, 8 * ch, 4 * ch, 2 * ch, ch]
    g = nz * 16 * g_widths[0] + 16 * g_widths[0]  # SN-linear z -> 4x4x1024
    for c_in, c_out in pairwise(g_widths):
        g += 2 * num_classes * c_in + 2 * num_classes * c_out  # conditional BN gamma, beta
        g += conv(c_in, c_out, 3) + conv(c_out, c_out, 3) + conv(c_in, c_out, 1)
    g += attention(4 * ch) + 2 * ch + conv(ch, 3, 3)  # attention at 32x32, final BN, to RGB

    d_widths = [ch, 2 * ch, 4 * ch, 8 * ch, 16 * ch, 16 * ch]
    d = conv(3, ch, 3) + conv(ch, ch, 3) + conv(3, ch, 1)  # first block
    for c_in, c_out in pairwise(d_widths):
        d += conv(c_in, c_out, 3) + conv(c_out, c_out, 3)
        d += conv(c_in, c_out, 1) if c_in != c_out else 0  # the last block keeps identity
    d += attention(2 * ch) + 16 * ch + 1 + num_classes * 16 * ch  # linear, projection
    return g, d


def test_parameter_counts_match_reference_128() -> None:
    netG = GENERATORS[128](num_classes=1000)
    netD = DISCRIMINATORS[128](num_classes=1000)
    expected_g, expected_d = _expected_parameter_counts(1000)
    assert sum(p.numel() for p in netG.parameters()) == expected_g
    assert sum(p.numel() for p in netD.parameters()) == expected_d


def test_spectral_norm_on_every_weight_layer() -> None:
    torch.manual_seed(0)
    netG, netD = GENERATORS[32](num_classes=10, ngf=8), DISCRIMINATORS[32](num_classes=10, ndf=8)
    z, y = torch.randn(4, 128), torch.randint(10, (4,))
    with torch.no_grad():  # each training-mode forward runs one power iteration
        for _ in range(30):
            netD(netG(z, y), y)
    for net in (netG, netD):
        layers = [m for m in net.modules()
                  if isinstance(m, torch.nn.Conv2d | torch.nn.Linear | torch.nn.Embedding)]
        assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
        for layer in layers:
            weight = layer.weight.detach().flatten(1)  # the normalised weight
            sigma = torch.linalg.matrix_norm(weight.double(), ord=2).item()
            assert abs(sigma - 1) < 1e-2, (type(layer).__name__, sigma)


def test_weights_start_xavier_uniform_and_biases_at_zero() -> None:
    """Each stored (pre-normalisation) weight is U(-a, a), a = sqrt(6 / (fan_in + fan_out)),
    Xavier (Glorot) uniform, as sn() states; every bias starts at 0."""
    torch.manual_seed(0)
    nets = GENERATORS[32](num_classes=10, ngf=8), DISCRIMINATORS[32](num_classes=10, ndf=8)
    layers = [m for net in nets for m in net.modules() if parametrize.is_parametrized(m, "weight")]
    assert len(layers) > 20
    for layer in layers:
        weight = layer.parametrizations.weight.original
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(weight)
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert weight.abs().max() <= bound
        if weight.numel() >= 500:  # uniform: the std of U(-a, a), and values near the edge
            assert weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)
            assert weight.abs().max() > 0.95 * bound
        if getattr(layer, "bias", None) is not None:
            assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
