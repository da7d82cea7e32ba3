"""Registers LeNet-5, AlexNet, VGG and GoogLeNet with transformers' Auto classes and their stage maps with the
core registry (ResNet and MobileNetV2 convert to transformers' own classes, already in the registry).

Stage maps (units, input to output; the head always trains):

* ``lenet5``: stem = C1-S2; stage1 = C3-S4; stage2 = C5. Head: F6 + output (an MLP).
* ``alexnet``: stem = conv1 + pool; stage1 = conv2 + pool; stage2 = conv3; stage3 = conv4; stage4 = conv5 + pool.
  Head: torchvision's classifier MLP (dropout, 3 Linear layers), fed by the 6x6 adaptive average pool.
* ``vgg``: stem = block 1; stage1..4 = blocks 2..5 (a block = its convs [+ BN] + max-pool).
  Head: the classifier MLP, fed by the 7x7 adaptive average pool.
* ``googlenet``: stem = input transform, conv1-3 with their pools; stage1 = inception 3a-3b + pool (28x28);
  stage2 = inception 4a-4e + pool (14x14); stage3 = inception 5a-5b (7x7). Head: dropout + fc. The auxiliary
  classifiers are not part of TransferModel's forward (they run in the native forward, in training only).
"""

from __future__ import annotations

import logging

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from ..registry import ArchSpec, register_arch
from .lenet import LeNet5Config, LeNet5ForImageClassification, LeNet5Model
from .torchvision_backed import (AlexNetConfig, AlexNetForImageClassification, GoogLeNetConfig,
                                 GoogLeNetForImageClassification, VGGConfig, VGGForImageClassification)

FAMILY_CLASSES = {
    "lenet5": (LeNet5Config, LeNet5ForImageClassification),
    "alexnet": (AlexNetConfig, AlexNetForImageClassification),
    "vgg": (VGGConfig, VGGForImageClassification),
    "googlenet": (GoogLeNetConfig, GoogLeNetForImageClassification),
}


logger = logging.getLogger(__name__)


def _register_auto_classes() -> None:
    for model_type, (config_cls, model_cls) in FAMILY_CLASSES.items():
        if model_type in CONFIG_MAPPING_NAMES:  # never shadow a model type transformers itself defines
            logger.warning("transformers defines a model type %r; hf-transfer-cnn's %s is not registered with the "
                           "Auto classes (load it with trust_remote_code=True).", model_type, config_cls.__name__)
            continue
        # exist_ok: re-importing (or a remote-code copy registered first) must not fail
        AutoConfig.register(model_type, config_cls, exist_ok=True)
        AutoModelForImageClassification.register(config_cls, model_cls, exist_ok=True)
        # save_pretrained copies the (self-contained) defining module next to the weights, for trust_remote_code
        config_cls.register_for_auto_class("AutoConfig")
    AutoModel.register(LeNet5Config, LeNet5Model, exist_ok=True)


def _a(*indices: int) -> tuple[str, ...]:
    return tuple(f"alexnet.features.{i}" for i in indices)


_GOOGLENET_STAGES = (
    ("inception3a", "inception3b", "maxpool3"),
    ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4"),
    ("inception5a", "inception5b"),
)

ARCH_SPECS = (
    ArchSpec(model_type="lenet5", stem=("lenet5.stem",), stages="lenet5.stages", first_conv="lenet5.stem.0",
             pooler="lenet5.pooler", head="classifier", head_style="mlp", min_image_size=28,
             min_image_size_for=lambda config: 32 - 2 * config.conv1_padding),  # C5 needs a 32 px padded input
    ArchSpec(model_type="alexnet", stem=_a(0, 1, 2), stages="alexnet.features",
             stage_paths=(_a(3, 4, 5), _a(6, 7), _a(8, 9), _a(10, 11, 12)),
             first_conv="alexnet.features.0", pooler="alexnet.avgpool", head="alexnet.classifier",
             head_style="mlp", min_image_size=63),
    ArchSpec(model_type="vgg", stem=("vgg.features.0",), stages="vgg.features",
             stage_paths=tuple((f"vgg.features.{i}",) for i in range(1, 5)),
             first_conv="vgg.features.0.0", pooler="vgg.avgpool", head="vgg.classifier", head_style="mlp",
             min_image_size=32),
    ArchSpec(model_type="googlenet",
             stem=("input_transform", "googlenet.conv1", "googlenet.maxpool1", "googlenet.conv2",
                   "googlenet.conv3", "googlenet.maxpool2"),
             stages="googlenet", stage_paths=tuple(tuple(f"googlenet.{m}" for m in s) for s in _GOOGLENET_STAGES),
             first_conv="googlenet.conv1.conv", pooler="googlenet.avgpool", head_dropout="googlenet.dropout",
             head="googlenet.fc", min_image_size=32),
)


def register_all() -> None:
    """Idempotent: Auto classes and stage maps for every family defined in this package."""
    _register_auto_classes()
    for spec in ARCH_SPECS:
        register_arch(spec, overwrite=True)


register_all()
