"""SAGAN for 128x128 images: the authors' ImageNet architecture (gf_dim = df_dim = 64)."""

from sagan_plugin.nets.sagan_base import SAGANDiscriminator, SAGANGenerator


class SAGANGenerator128(SAGANGenerator):
    """4 -> 128 through 1024, 1024, 512, 256, 128, 64 channels; attention at 32x32 (256 ch).

    attention=64 puts it at 64x64 (128 channels); the paper's "feat64" moves D's too
    (`model.attention=64`).
    """

    resolution = 128
    widths = (16, 16, 8, 4, 2, 1)
    default_attention = 32


class SAGANDiscriminator128(SAGANDiscriminator):
    """128 -> 4 through 64, 128, 256, 512, 1024 channels, then 1024 -> 1024 at 4x4.

    Attention after the second block (32x32, 128 channels), as in the reference code.
    """

    resolution = 128
    widths = (1, 2, 4, 8, 16, 16)
    default_attention = 32
