"""BiT (transformers' own classes). Its first conv standardises its own weights, so channel changes go through a
1x1 input adapter."""

from __future__ import annotations

from ..registry import ArchSpec, Family, register_family

FAMILY = register_family(Family(
    ArchSpec(model_type="bit", stem=("bit.embedder",), stages="bit.encoder.stages", neck=("bit.norm",),
             first_conv="bit.embedder.convolution", pooler="bit.pooler", head_style="flatten_linear",
             standardized_stem=True),
))
