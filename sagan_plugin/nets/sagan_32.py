"""SAGAN for 32x32 images (CIFAR, ImageNet 32, Fashion-MNIST): SNGAN-CIFAR widths and layout."""

from sagan_plugin.nets.sagan_base import SAGANDiscriminator, SAGANGenerator


class SAGANGenerator32(SAGANGenerator):
    """4 -> 8 -> 16 -> 32 at 4*ngf channels (256 by default); attention at 16x16."""

    resolution = 32
    widths = (4, 4, 4, 4)
    default_attention = 16


class SAGANDiscriminator32(SAGANDiscriminator):
    """32 -> 16 -> 8 -> 8 -> 8 at 2*ndf channels (128 by default); attention at 16x16.

    The layout of SNGAN's CIFAR D (and Mimicry's SNGAN32/SAGAN32, BigGAN's 32 px D): two
    pooling blocks, then two at 8x8, so 32 px results compare with Mimicry's SNGAN numbers.
    Attention follows the first block, at 16x16 (256 positions attending to 64): the mirror of
    G's and StudioGAN's CIFAR placement; Mimicry's SAGAN32 puts it at 8x8, where pooled keys
    leave only 16 positions to attend to.
    """

    resolution = 32
    widths = (2, 2, 2, 2)
    default_attention = 16
    final_size = 8
