"""SAGAN for 32x32 images (CIFAR, ImageNet 32, Fashion-MNIST): SNGAN-CIFAR widths."""

from sagan_plugin.nets.sagan_base import SAGANDiscriminator, SAGANGenerator


class SAGANGenerator32(SAGANGenerator):
    """4 -> 8 -> 16 -> 32 at 4*ngf channels (256 by default); attention at 16x16."""

    resolution = 32
    widths = (4, 4, 4, 4)
    default_attention = 16


class SAGANDiscriminator32(SAGANDiscriminator):
    """32 -> 16 -> 8 -> 4 -> 4 at 2*ndf channels (128 by default); attention at 16x16."""

    resolution = 32
    widths = (2, 2, 2, 2)
    default_attention = 16
