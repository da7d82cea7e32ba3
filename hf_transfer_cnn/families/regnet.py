"""RegNet (transformers' own classes)."""

from __future__ import annotations

from ..registry import ArchSpec, Family, register_family

FAMILY = register_family(Family(
    ArchSpec(model_type="regnet", stem=("regnet.embedder",), stages="regnet.encoder.stages",
             first_conv="regnet.embedder.embedder.convolution", pooler="regnet.pooler", head_style="flatten_linear"),
))
