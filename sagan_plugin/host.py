"""torch-mimicry, the host framework, and torchvision, imported after the compatibility shim.

Modules of this package take what they use of the host (and torchvision) from here, so the
shim in compat.py is always applied before the first import of either.
"""

from sagan_plugin.compat import ensure_host_importable

ensure_host_importable()

import torch_mimicry  # noqa: E402
import torchvision  # noqa: E402
from torch_mimicry.datasets import load_dataset  # noqa: E402
from torch_mimicry.nets.gan import cgan, gan  # noqa: E402
from torch_mimicry.training import Trainer  # noqa: E402
from torch_mimicry.training.logger import Logger  # noqa: E402
from torch_mimicry.training.metric_log import MetricLog  # noqa: E402
from torch_mimicry.training.scheduler import LRScheduler  # noqa: E402

__all__ = ["LRScheduler", "Logger", "MetricLog", "Trainer", "cgan", "gan", "load_dataset",
           "torch_mimicry", "torchvision"]
