"""SAGAN networks: attention layer, building blocks and one file per resolution."""
