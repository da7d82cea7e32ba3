"""ConvNeXt and ConvNeXt V2 (transformers' own classes): the layer norm after pooling belongs to the last stage."""

from __future__ import annotations

from ..registry import ArchSpec, Family, register_family

FAMILIES = tuple(register_family(Family(
    ArchSpec(model_type=t, stem=(f"{t}.embeddings",), stages=f"{t}.encoder.stages",
             first_conv=f"{t}.embeddings.patch_embeddings", post_pool=(f"{t}.layernorm",)),
)) for t in ("convnext", "convnextv2"))
