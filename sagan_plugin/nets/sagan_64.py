"""SAGAN for 64x64 images (CelebA 64, Tiny-ImageNet): the 128 px nets less one block."""

from sagan_plugin.nets.sagan_base import SAGANDiscriminator, SAGANGenerator


class SAGANGenerator64(SAGANGenerator):
    """4 -> 64 with 1024, 512, 256, 128, 64 channels (ngf=64); attention at 32x32."""

    resolution = 64
    widths = (16, 8, 4, 2, 1)
    default_attention = 32


class SAGANDiscriminator64(SAGANDiscriminator):
    """64 -> 4 with 64, 128, 256, 512 channels, then 1024 at 4x4 (ndf=64); attention at 32x32."""

    resolution = 64
    widths = (1, 2, 4, 8, 16)
    default_attention = 32
