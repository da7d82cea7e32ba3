"""hf-transfer-cnn: CNN transfer learning for the Hugging Face ecosystem."""

from . import families as _families  # noqa: F401  (registers every family: stage maps, Auto classes, checkpoints)
from .fastpath import FastOptions
from .freezing import FreezeState, freeze_model
from .model import ClassificationHead, HeadSpec, TransferMeta, TransferModel, fix_tf_bn_momentum
from .registry import (ArchSpec, CheckpointSpec, Family, UnsupportedArchitectureError, get_arch, register_arch,
                       register_family, supported_model_types)
from .schedule import FreezeScheduler

__version__ = "0.1.0"

__all__ = ["TransferModel", "FreezeScheduler", "HeadSpec", "ClassificationHead", "FreezeState", "FastOptions",
           "freeze_model", "fix_tf_bn_momentum", "TransferMeta", "ArchSpec", "Family", "CheckpointSpec",
           "register_arch", "register_family", "get_arch", "supported_model_types", "UnsupportedArchitectureError",
           "__version__"]
