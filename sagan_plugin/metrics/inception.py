"""pytorch-fid's FID Inception (the TF Inception 2015-12-05 port), built without its downloader.

pytorch-fid builds the network and fetches its weights in one call (fid_inception_v3 calls
load_state_dict_from_url); here the same modules are assembled from pytorch-fid's patched blocks
and loaded from a local file, so no code path can reach the network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sagan_plugin.compat import ensure_host_importable
from sagan_plugin.errors import UsageError
from sagan_plugin.metrics.weights import InceptionWeights

FEATURE_DIM = 2048
NUM_LOGITS = 1008
_INPUT_SIZE = 299
_CLASSIFIER_KEYS = {"fc.weight", "fc.bias"}


def fid_inception_architecture() -> nn.Module:
    """torchvision's Inception3 with pytorch-fid's TF-faithful blocks, random weights."""
    ensure_host_importable()
    import torchvision
    from pytorch_fid import inception as pf

    net = torchvision.models.inception_v3(
        num_classes=NUM_LOGITS, aux_logits=False, weights=None, init_weights=False
    )
    net.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pf.FIDInceptionE_1(1280)
    net.Mixed_7c = pf.FIDInceptionE_2(2048)
    return net


class FIDInception(nn.Module):
    """Pool3 features (N, 2048) and, when the weights hold the classifier, logits (N, 1008).

    Input: uint8 images (N, 3, H, W), or float in [0, 1]. As in pytorch-fid, the images are
    resized bilinearly to 299x299 inside the network and scaled to [-1, 1].
    """

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        super().__init__()
        self.net = fid_inception_architecture()
        self.has_logits = _CLASSIFIER_KEYS <= state_dict.keys()
        try:
            result = self.net.load_state_dict(state_dict, strict=False)
        except RuntimeError as error:  # tensors of the wrong shape
            first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
            raise UsageError(f"not a pytorch-fid InceptionV3 state dict: {first}") from None
        missing = set(result.missing_keys) - (set() if self.has_logits else _CLASSIFIER_KEYS)
        if missing or result.unexpected_keys:
            names = sorted(missing)[:3] + sorted(result.unexpected_keys)[:3]
            raise UsageError(f"not a pytorch-fid InceptionV3 state dict (keys {names} differ)")
        n = self.net
        self.trunk = nn.Sequential(
            n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1,
            n.Conv2d_3b_1x1, n.Conv2d_4a_3x3, n.maxpool2,
            n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d,
            n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c, n.avgpool,
        )  # fmt: skip
        self.memory_format = torch.contiguous_format
        self.eval().requires_grad_(False)

    def use_channels_last(self) -> FIDInception:
        """NHWC weights and inputs: faster convolutions on GPUs (tensor-core layouts)."""
        self.memory_format = torch.channels_last
        return self.to(memory_format=torch.channels_last)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] images -> the 299x299 input in [-1, 1], by pytorch-fid's steps."""
        if images.dtype == torch.uint8:
            images = images.float().div(255)
        if images.shape[1] == 1:  # grey, as PIL's convert("RGB") does for pytorch-fid
            images = images.expand(-1, 3, -1, -1)
        images = F.interpolate(images, size=(_INPUT_SIZE, _INPUT_SIZE), mode="bilinear",
                               align_corners=False)
        return 2 * images - 1

    def features_of_prepared(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x.contiguous(memory_format=self.memory_format)).flatten(1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = self.features_of_prepared(self.prepare(images))
        logits = self.net.fc(features) if self.has_logits else None
        return features, logits


def load_inception(weights: InceptionWeights, device: torch.device | str = "cpu") -> FIDInception:
    """Load a checked weights file into the network, with a one-line error if it is unreadable."""
    try:
        state_dict = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged or foreign file: pickle, zip or torch errors
        raise UsageError(f"cannot read Inception weights {weights.path} "
                         f"({type(error).__name__}); expected a pytorch-fid state dict") from None
    if not isinstance(state_dict, dict):
        raise UsageError(f"{weights.path} holds a {type(state_dict).__name__}, expected a "
                         "pytorch-fid InceptionV3 state dict")
    return FIDInception(state_dict).to(device)
