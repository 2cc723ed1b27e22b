"""SAGAN generator and discriminator on top of Mimicry's conditional base classes.

Each resolution (sagan_32.py, sagan_64.py, sagan_128.py) only states its channel widths and
where attention sits by default; the stacking, the forward passes and the training steps live
here. With num_classes=0 both nets are unconditional (plain BN in G, no projection in D).
"""

import contextlib
import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sagan_plugin.distributed import training_module
from sagan_plugin.host import MetricLog, cgan
from sagan_plugin.nets.attention import SelfAttention
from sagan_plugin.nets.layers import (
    BN_DECAY,
    BN_OUT_DECAY,
    BatchNorm2d,
    DBlock,
    DBlockFirst,
    GBlock,
    refresh_spectral_norm,
    sn,
    sn_conv3x3,
    spectral_norm_frozen,
)
from sagan_plugin.registry import class_count

BOTTOM_WIDTH = 4


def _attention_index(sizes: list[int], attention: int, net: str) -> int:
    """Index of the block after which attention sits, from the feature-map size it should see."""
    if attention == 0:
        return -1
    if attention not in sizes:
        valid = ", ".join(str(s) for s in sorted(set(sizes)))
        raise ValueError(f"{net} attention at {attention}x{attention} is not possible: "
                         f"feature maps are {valid} (or 0 for none)")
    return sizes.index(attention)


def _attention_layer(net: str, size: int, multiple: int, width: str, value: int) -> SelfAttention:
    """Attention over the multiple * width channels of a size x size feature map. Its query and
    key have a channel per 8, so width (ngf or ndf) must make them a multiple of 8."""
    step = 8 // math.gcd(multiple, 8)
    if value % step:
        raise ValueError(f"{net} attention at {size}x{size} has {multiple}*{width} channels, "
                         f"which must be a multiple of 8: {width} (model.{width}) must be a "
                         f"multiple of {step}, got {value}")
    return SelfAttention(multiple * value)


def check_shape(what: str, x: Tensor, expected: tuple[int, ...]) -> None:
    """x is (N, *expected): else a matrix product or a pooling fails later, or worse, not."""
    if tuple(x.shape[1:]) != expected:
        shape = ", ".join(map(str, ("N", *expected)))
        raise ValueError(f"{what} must have shape ({shape}), got {tuple(x.shape)}")


def check_labels(y: Tensor | None, batch: int) -> None:
    """Labels are one per image: a single label would silently broadcast over the batch."""
    if y is not None and (y.dim() != 1 or y.shape[0] != batch):
        raise ValueError(f"labels must have shape ({batch},), one per image of the batch, got "
                         f"{tuple(y.shape)}")


def mixed_precision(net: nn.Module, scaler: torch.amp.GradScaler | None
                    ) -> contextlib.AbstractContextManager:
    """float16 autocast where Mimicry's Trainer(amp=True) hands a step a working GradScaler, as
    its own nets do (on a machine without CUDA its scaler is disabled: float32)."""
    if scaler is None or not scaler.is_enabled():
        return contextlib.nullcontext()
    return torch.autocast(next(net.parameters()).device.type, dtype=torch.float16)


def update(loss: Tensor, optimizer: torch.optim.Optimizer,
           scaler: torch.amp.GradScaler | None) -> None:
    """Backward and step, through the scaler when there is one (float16's small gradients)."""
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def discriminate(netD: nn.Module, images: Tensor, labels: Tensor | None) -> Tensor:
    """netD's logits, with the labels when it is class-conditional: Mimicry's unconditional
    discriminators take images alone."""
    return netD(images, labels) if class_count(netD) else netD(images)


class SAGANGenerator(cgan.BaseConditionalGenerator):
    """ResNet generator: SN-linear to 4x4, up-sampling blocks with conditional BN, attention."""

    resolution: int
    widths: tuple[int, ...]  # multiples of ngf: the 4x4 input, then each block's output
    default_attention: int

    def __init__(self, num_classes: int = 0, *, nz: int = 128, ngf: int = 64,
                 attention: int | None = None, loss_type: str = "hinge",
                 bn_decay: float = BN_DECAY, bn_out_decay: float = BN_OUT_DECAY,
                 **kwargs) -> None:
        """ngf is a multiple: block i has ngf * widths[i] channels (Mimicry's SAGAN nets take
        the widest block's channels). After num_classes, arguments are keywords only, as
        Mimicry's order (num_classes, bottom_width, nz, ngf) differs."""
        if kwargs.pop("bottom_width", BOTTOM_WIDTH) != BOTTOM_WIDTH:
            raise ValueError(f"SAGAN's generator starts from {BOTTOM_WIDTH}x{BOTTOM_WIDTH} "
                             "(bottom_width=4); other sizes come from another resolution's class")
        super().__init__(num_classes=num_classes, nz=nz, ngf=ngf, bottom_width=BOTTOM_WIDTH,
                         loss_type=loss_type, **kwargs)
        channels = [ngf * m for m in self.widths]
        self.linear = sn(nn.Linear(nz, BOTTOM_WIDTH**2 * channels[0]))
        self.blocks = nn.ModuleList(
            GBlock(c_in, c_out, num_classes, bn_decay) for c_in, c_out in pairwise(channels)
        )
        sizes = [BOTTOM_WIDTH * 2 ** (i + 1) for i in range(len(self.blocks))]
        attention = self.default_attention if attention is None else attention
        self.attention_after = _attention_index(sizes, attention, "G")
        self.attention = (_attention_layer("G", sizes[self.attention_after],
                                           self.widths[self.attention_after + 1], "ngf", ngf)
                          if self.attention_after >= 0 else None)
        self.bn_out = BatchNorm2d(channels[-1], bn_out_decay)
        self.conv_out = sn_conv3x3(channels[-1], 3)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Map noise (N, nz) and labels (N,) to images (N, 3, R, R) in [-1, 1].

        A conditional G given no labels draws them uniformly, as Mimicry's nets do.
        """
        if self.num_classes and y is None:
            y = torch.randint(self.num_classes, (x.shape[0],), device=x.device)
        check_shape("noise", x, (self.nz,))
        check_labels(y if self.num_classes else None, x.shape[0])
        h = self.linear(x).view(x.shape[0], -1, BOTTOM_WIDTH, BOTTOM_WIDTH)
        for i, block in enumerate(self.blocks):
            h = block(h, y)
            if i == self.attention_after:
                h = self.attention(h)
        return torch.tanh(self.conv_out(F.relu(self.bn_out(h))))

    def sample_inputs(self, num_images: int, c: int | None = None,
                      device: torch.device | None = None) -> tuple[Tensor, Tensor | None]:
        """Noise (N, nz) and the labels to draw for (None when unconditional)."""
        device = device or self.device
        labels = None
        if c is not None and not self.num_classes:
            raise ValueError(f"class c={c} given to an unconditional generator (no classes)")
        if self.num_classes:
            if c is not None and not 0 <= c < self.num_classes:
                raise ValueError(f"class {c} is out of range [0, {self.num_classes})")
            labels = (torch.full((num_images,), c, device=device) if c is not None
                      else torch.randint(self.num_classes, (num_images,), device=device))
        return torch.randn(num_images, self.nz, device=device), labels

    def generate_images_with_labels(self, num_images: int, c: int | None = None,
                                    device: torch.device | None = None
                                    ) -> tuple[Tensor, Tensor | None]:
        """Images and the labels they were drawn for (None when unconditional)."""
        noise, labels = self.sample_inputs(num_images, c, device)
        return self(noise, labels), labels

    def generate_images(self, num_images: int, c: int | None = None,
                        device: torch.device | None = None) -> Tensor:
        return self.generate_images_with_labels(num_images, c, device)[0]

    def train_step(self, real_batch: tuple[Tensor, Tensor], netD: nn.Module,
                   optG: torch.optim.Optimizer, log_data: MetricLog,
                   device: torch.device | str | None = None, global_step: int | None = None,
                   scaler: torch.amp.GradScaler | None = None, **kwargs: object) -> MetricLog:
        """One generator update on the hinge (or configured) loss; the host's contract
        (scaler: Mimicry's Trainer(amp=True), mixed_precision).

        G's forward runs through its DDP wrapper when distributed (gradient all-reduce). D is
        frozen meanwhile: its weight gradients would be thrown away by its next step, and it
        reuses the sigma of its last step (its spectral norm iterates on D steps only).
        """
        self.zero_grad(set_to_none=True)
        noise, labels = self.sample_inputs(real_batch[0].shape[0], device=device)
        trainable = [p for p in netD.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        try:
            with mixed_precision(self, scaler), spectral_norm_frozen(netD):
                fake = training_module(self)(noise, labels)
                errG = self.compute_gan_loss(discriminate(netD, fake, labels).float())
        finally:
            for p in trainable:
                p.requires_grad_(True)
        update(errG, optG, scaler)
        log_data.add_metric("errG", errG.detach(), group="loss")
        if self.attention is not None:
            log_data.add_metric("gamma_G", self.attention.gamma.detach(), group="attention")
        return log_data


class SAGANDiscriminator(cgan.BaseConditionalDiscriminator):
    """ResNet discriminator with attention, global sum pooling and a projection term."""

    resolution: int
    widths: tuple[int, ...]  # multiples of ndf: each block's output
    default_attention: int
    final_size: int = BOTTOM_WIDTH  # blocks pool down to this feature-map size, then keep it

    def __init__(self, num_classes: int = 0, ndf: int = 64, *, attention: int | None = None,
                 loss_type: str = "hinge", **kwargs) -> None:
        """ndf is a multiple, as G's ngf. After ndf, arguments are keywords only: Mimicry's
        third is loss_type."""
        super().__init__(num_classes=num_classes, ndf=ndf, loss_type=loss_type, **kwargs)
        channels = [ndf * m for m in self.widths]
        size = self.resolution // 2
        blocks, sizes = [DBlockFirst(3, channels[0])], [size]
        for c_in, c_out in pairwise(channels):
            downsample = size > self.final_size
            size //= 2 if downsample else 1
            blocks.append(DBlock(c_in, c_out, downsample))
            sizes.append(size)
        self.blocks = nn.ModuleList(blocks)
        attention = self.default_attention if attention is None else attention
        self.attention_after = _attention_index(sizes, attention, "D")
        self.attention = (_attention_layer("D", sizes[self.attention_after],
                                           self.widths[self.attention_after], "ndf", ndf)
                          if self.attention_after >= 0 else None)
        self.linear = sn(nn.Linear(channels[-1], 1))
        self.embedding = sn(nn.Embedding(num_classes, channels[-1])) if num_classes else None

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Logits (N, 1) for images (N, 3, R, R); labels (N,) are required when conditional."""
        check_shape("images", x, (3, self.resolution, self.resolution))
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.attention_after:
                h = self.attention(h)
        h = F.relu(h).sum(dim=(2, 3))
        out = self.linear(h)
        if self.embedding is not None:
            if y is None:
                raise ValueError("a class-conditional discriminator needs labels y")
            check_labels(y, x.shape[0])
            out = out + (self.embedding(y) * h).sum(dim=1, keepdim=True)
        return out

    def train_step(self, real_batch: tuple[Tensor, Tensor], netG: nn.Module,
                   optD: torch.optim.Optimizer, log_data: MetricLog,
                   device: torch.device | str | None = None, global_step: int | None = None,
                   scaler: torch.amp.GradScaler | None = None, **kwargs: object) -> MetricLog:
        """One discriminator update on real and (detached) generated images (scaler: Mimicry's
        Trainer(amp=True), mixed_precision).

        As in the reference, spectral norm runs one power iteration per D step and both passes
        use the sigma it gives. The iteration runs first, on its own: the passes then only
        read u and v, and under torch.compile D's spectral norm compiles with the rest of D.
        """
        self.zero_grad(set_to_none=True)
        real, real_labels = real_batch
        if not self.num_classes:
            real_labels = None
        net = training_module(self)  # the DDP wrapper when distributed: gradient all-reduce
        refresh_spectral_norm(self)
        with mixed_precision(self, scaler):
            with torch.no_grad():
                fake, fake_labels = self._fakes(netG, real.shape[0], device)
            with spectral_norm_frozen(self):
                output_real = net(real, real_labels).float()  # losses in fp32 under autocast
                output_fake = net(fake, fake_labels).float()
            errD = self.compute_gan_loss(output_real=output_real, output_fake=output_fake)
        update(errD, optD, scaler)
        D_x, D_Gz = self.compute_probs(output_real=output_real, output_fake=output_fake)
        log_data.add_metric("errD", errD.detach(), group="loss")
        log_data.add_metric("D(x)", D_x, group="prob")
        log_data.add_metric("D(G(z))", D_Gz, group="prob")
        if self.attention is not None:
            log_data.add_metric("gamma_D", self.attention.gamma.detach(), group="attention")
        return log_data

    @staticmethod
    def _fakes(netG: nn.Module, n: int, device: torch.device | str | None
               ) -> tuple[Tensor, Tensor | None]:
        """n generated images and their labels; Mimicry's unconditional generators have no
        generate_images_with_labels."""
        if hasattr(netG, "generate_images_with_labels"):
            return netG.generate_images_with_labels(n, device=device)
        return netG.generate_images(n, device=device), None
