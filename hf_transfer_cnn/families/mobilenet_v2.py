"""MobileNetV2 (transformers' own classes). ``MobileNetV2Config(tf_padding=False, layer_norm_eps=1e-5)`` has
torchvision's layers in torchvision's order, so parameters map in order (names differ, shapes are checked pair by
pair); its processor resizes and centre-crops as torchvision does."""

from __future__ import annotations

from ..processing import torchvision_eval_processor
from ..registry import ArchSpec, CheckpointSpec, Family, register_family
from .statedict import map_in_order


def _processor(image_size: int, num_channels: int):
    return torchvision_eval_processor(image_size, num_channels, crop_always=True)


FAMILY = register_family(Family(
    ArchSpec(model_type="mobilenet_v2", stem=("mobilenet_v2.conv_stem",), stages="mobilenet_v2.layer",
             grouping="stride", first_conv="mobilenet_v2.conv_stem.first_conv.convolution",
             neck=("mobilenet_v2.conv_1x1",), pooler="mobilenet_v2.pooler", head_dropout="dropout",
             head_dropout_config="classifier_dropout_prob"),
    checkpoints=(CheckpointSpec(
        "mobilenet_v2", "mobilenet_v2",
        dict(depth_multiplier=1.0, tf_padding=False, layer_norm_eps=1e-5, hidden_act="relu6",
             classifier_dropout_prob=0.2, first_layer_is_expansion=True, finegrained_output=True),
        head_weight="classifier.1.weight", hf_heads=("classifier",), map_state_dict=map_in_order,
        image_processor=_processor),),
))
