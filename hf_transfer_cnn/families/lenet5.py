"""LeNet-5 (this package's model, `modeling.lenet`): a from-scratch baseline for small grayscale images.

Stage map: stem = C1-S2; stage1 = C3-S4; stage2 = C5. Head: F6 + output (an MLP). Its processor resizes to
size x size with mean/std 0.5.
"""

from __future__ import annotations

from PIL import Image
from transformers import ViTImageProcessor

from ..registry import ArchSpec, CheckpointSpec, Family, register_family
from .modeling.lenet import LeNet5Config, LeNet5ForImageClassification, LeNet5Model


def _processor(image_size: int, num_channels: int):
    return ViTImageProcessor(size={"height": image_size, "width": image_size}, resample=Image.BILINEAR,
                             image_mean=[0.5] * num_channels, image_std=[0.5] * num_channels)


FAMILY = register_family(Family(
    ArchSpec(model_type="lenet5", stem=("lenet5.stem",), stages="lenet5.stages", first_conv="lenet5.stem.0",
             pooler="lenet5.pooler", head="classifier", head_style="mlp", min_image_size=28,
             min_image_size_for=lambda config: 32 - 2 * config.conv1_padding),  # C5 needs a 32 px padded input
    config_class=LeNet5Config, model_class=LeNet5ForImageClassification, base_model_class=LeNet5Model,
    checkpoints=(CheckpointSpec("lenet5", "lenet5", default_image_size=32, default_num_channels=1,
                                default_num_labels=10, image_processor=_processor),),
))
