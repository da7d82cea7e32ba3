"""Model families beyond transformers' own: LeNet-5, AlexNet, VGG, GoogLeNet (registered with the Auto classes and
the stage registry on import), torchvision -> Hub converters, and TimmWrapper stage maps.

* `convert_torchvision(arch, weights_path, output_dir, num_labels=None)` — a torchvision ``.pth`` as a checkpoint
  directory (ResNet and MobileNetV2 become transformers' own classes).
* `init_checkpoint(arch, output_dir, ...)` — a randomly initialised checkpoint of any supported ARCH.
"""

from . import registration, timm_support  # noqa: F401  (registration side effects)
from .archs import CONVERTIBLE_ARCHS, INIT_ARCHS, UnknownArchError
from .convert import ConversionError, convert_torchvision, init_checkpoint, load_torchvision_state_dict
from .lenet import LeNet5Config, LeNet5ForImageClassification, LeNet5Model
from .torchvision_backed import (AlexNetConfig, AlexNetForImageClassification, GoogLeNetConfig,
                                 GoogLeNetForImageClassification, VGGConfig, VGGForImageClassification)

__all__ = ["model_class", "convert_torchvision", "init_checkpoint", "load_torchvision_state_dict", "ConversionError",
           "UnknownArchError", "CONVERTIBLE_ARCHS", "INIT_ARCHS",
           "LeNet5Config", "LeNet5Model", "LeNet5ForImageClassification", "AlexNetConfig",
           "AlexNetForImageClassification", "VGGConfig", "VGGForImageClassification", "GoogLeNetConfig",
           "GoogLeNetForImageClassification"]


def model_class(name: str):
    """A model class defined by this package's families, by class name (None if there is none)."""
    obj = globals().get(name)
    return obj if isinstance(obj, type) else None
