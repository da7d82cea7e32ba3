"""hf-transfer-cnn: CNN transfer learning for the Hugging Face ecosystem."""

from .callbacks import FreezeScheduler
from .freezing import FastOptions, FreezeState, freeze_model
from .modeling import ClassificationHead, HeadSpec, TransferModel, fix_tf_bn_momentum
from .registry import ArchSpec, UnsupportedArchitectureError, get_arch, register_arch, supported_model_types
from . import families as _families  # noqa: E402,F401  (registers LeNet-5/AlexNet/VGG/GoogLeNet with AutoConfig)

__version__ = "0.1.0"

__all__ = ["TransferModel", "FreezeScheduler", "HeadSpec", "ClassificationHead", "FreezeState", "FastOptions", "freeze_model", "fix_tf_bn_momentum", "ArchSpec",
           "register_arch", "get_arch", "supported_model_types", "UnsupportedArchitectureError", "__version__"]
