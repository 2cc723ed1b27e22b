"""The model families this distribution registers: SAGAN, and Mimicry's own for baselines.

Each is named under the ``mimicry.models`` entry-point group in pyproject.toml; its defaults
are the preset registry/models/<name>.yaml.
"""

from __future__ import annotations

import importlib

from torch import nn

from sagan_plugin.presets import load_preset
from sagan_plugin.registry import ModelFamily


def _build_sagan(resolution: int, num_classes: int, *, nz: int = 128, ngf: int = 64,
                 ndf: int = 64, attention: int | None = None, g_attention: int | None = None,
                 d_attention: int | None = None, loss_type: str = "hinge",
                 bn_decay: float = 0.999, bn_out_decay: float = 0.9999
                 ) -> tuple[nn.Module, nn.Module]:
    """SAGAN's G and D; `attention` places both attention layers, g_/d_attention one each."""
    from sagan_plugin.nets import DISCRIMINATORS, GENERATORS

    netG = GENERATORS[resolution](
        num_classes=num_classes, nz=nz, ngf=ngf, loss_type=loss_type, bn_decay=bn_decay,
        bn_out_decay=bn_out_decay, attention=attention if g_attention is None else g_attention)
    netD = DISCRIMINATORS[resolution](
        num_classes=num_classes, ndf=ndf, loss_type=loss_type,
        attention=attention if d_attention is None else d_attention)
    return netG, netD


_SAGAN_PRESET = load_preset("models", "sagan")
SAGAN = ModelFamily(name="sagan", build=_build_sagan, resolutions=(32, 64, 128),
                    conditional=None, description=_SAGAN_PRESET["description"],
                    defaults=_SAGAN_PRESET)


def _host_family(name: str, module: str, prefix: str, resolutions: tuple[int, ...],
                 conditional: bool) -> ModelFamily:
    """A family over Mimicry's torch_mimicry.nets.<module>.<module>_<res>.<prefix>{G,D}<res>."""

    def build(resolution: int, num_classes: int, **arch) -> tuple[nn.Module, nn.Module]:
        from sagan_plugin import host  # noqa: F401  (the host imports only after its shim)

        nets = importlib.import_module(f"torch_mimicry.nets.{module}.{module}_{resolution}")
        given = {k: v for k, v in arch.items() if v is not None}
        g_args = {k: given[k] for k in ("nz", "ngf", "loss_type") if k in given}
        d_args = {k: given[k] for k in ("ndf", "loss_type") if k in given}
        if conditional:
            g_args["num_classes"] = d_args["num_classes"] = num_classes
        # ModelFamily gives netG its resolution and class count (0 here when unconditional).
        return (getattr(nets, f"{prefix}Generator{resolution}")(**g_args),
                getattr(nets, f"{prefix}Discriminator{resolution}")(**d_args))

    preset = load_preset("models", name)
    return ModelFamily(name=name, build=build, resolutions=resolutions, conditional=conditional,
                       description=preset["description"], defaults=preset)


ALL_RESOLUTIONS = (32, 48, 64, 128)
SNGAN = _host_family("sngan", "sngan", "SNGAN", ALL_RESOLUTIONS, conditional=False)
SSGAN = _host_family("ssgan", "ssgan", "SSGAN", ALL_RESOLUTIONS, conditional=False)
INFOMAX_GAN = _host_family("infomax_gan", "infomax_gan", "InfoMaxGAN", ALL_RESOLUTIONS,
                           conditional=False)
WGAN_GP = _host_family("wgan_gp", "wgan_gp", "WGANGP", ALL_RESOLUTIONS, conditional=False)
DCGAN = _host_family("dcgan", "dcgan", "DCGAN", ALL_RESOLUTIONS, conditional=False)
CGAN_PD = _host_family("cgan_pd", "cgan_pd", "CGANPD", (32, 128), conditional=True)
MIMICRY_SAGAN = _host_family("mimicry_sagan", "sagan", "SAGAN", (32, 128), conditional=True)
