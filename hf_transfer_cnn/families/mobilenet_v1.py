"""MobileNetV1 (transformers' own classes)."""

from __future__ import annotations

from ..registry import ArchSpec, Family, register_family

FAMILY = register_family(Family(
    ArchSpec(model_type="mobilenet_v1", stem=("mobilenet_v1.conv_stem",), stages="mobilenet_v1.layer",
             grouping="stride", first_conv="mobilenet_v1.conv_stem.convolution", pooler="mobilenet_v1.pooler",
             head_dropout="dropout",
             head_dropout_config="classifier_dropout_prob"),
))
