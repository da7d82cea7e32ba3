"""EfficientNet (transformers' own classes): blocks grouped into stages by resolution; the top conv is the neck."""

from __future__ import annotations

from ..registry import ArchSpec, Family, register_family

FAMILY = register_family(Family(
    ArchSpec(model_type="efficientnet", stem=("efficientnet.embeddings",), stages="efficientnet.encoder.blocks",
             grouping="stride", first_conv="efficientnet.embeddings.convolution",
             neck=("efficientnet.encoder.top_conv", "efficientnet.encoder.top_bn",
                   "efficientnet.encoder.top_activation"),
             pooler="efficientnet.pooler", head_dropout="dropout", head_dropout_config="dropout_rate"),
))
