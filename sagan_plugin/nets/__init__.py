"""SAGAN networks: the attention layer, the blocks, and one file per resolution."""

from sagan_plugin.nets.attention import SelfAttention
from sagan_plugin.nets.sagan_32 import SAGANDiscriminator32, SAGANGenerator32
from sagan_plugin.nets.sagan_64 import SAGANDiscriminator64, SAGANGenerator64
from sagan_plugin.nets.sagan_128 import SAGANDiscriminator128, SAGANGenerator128
from sagan_plugin.nets.sagan_base import SAGANDiscriminator, SAGANGenerator

GENERATORS = {32: SAGANGenerator32, 64: SAGANGenerator64, 128: SAGANGenerator128}
DISCRIMINATORS = {32: SAGANDiscriminator32, 64: SAGANDiscriminator64, 128: SAGANDiscriminator128}

__all__ = ["DISCRIMINATORS", "GENERATORS", "SAGANDiscriminator", "SAGANGenerator",
           "SelfAttention", "SAGANGenerator32", "SAGANDiscriminator32", "SAGANGenerator64",
           "SAGANDiscriminator64", "SAGANGenerator128", "SAGANDiscriminator128"]
