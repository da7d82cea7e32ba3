"""Vision Transformers (transformers' own classes): ViT (and ViT-MSN, I-JEPA), DeiT, BEiT (and Data2Vec-Vision),
DINOv2 (with and without registers). They run their own forward (``forward="native"``): the stage map only says what
freezing acts on and which classifier a new task replaces.

Stage rule: stem = the embeddings (patch projection, class token, position embeddings; BEiT's shared relative
position bias when the config has one); the L encoder layers are split into min(4, L) consecutive stages as equal
as possible, earlier stages taking the extra layer (12 -> 3+3+3+3, 6 -> 2+2+1+1); the final norm (BEiT: its
pooler's norm) belongs to the last stage; the classifier is the head.

Input size: the forward always gets ``interpolate_pos_encoding=True`` (DINOv2 always interpolates), so any size of
at least one patch runs. ``image_size=`` resamples the absolute position embeddings of ViT, ViT-MSN, I-JEPA and DeiT
to the new grid (config and weights then describe that size: plain transformers runs it too); BEiT and DINOv2 keep
their config's size (it fixes the shapes of relative-position tables / embeddings) and interpolate at run time.
Channels: the patch projection conv is adapted (`adapt_conv_weight`) and ``config.num_channels`` follows.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from ..registry import ArchSpec, Family, UnsupportedArchitectureError, register_family

_INTERPOLATE = (("interpolate_pos_encoding", True),)


def _patch_size(config: object) -> int:
    size = getattr(config, "patch_size", 16)
    return int(max(size) if isinstance(size, (tuple, list)) else size)


def _vit_like(model_type: str, prefix: str, *, layers: str = "layers", neck: tuple[str, ...] = ("layernorm",),
              stem: tuple[str, ...] = ("embeddings",), **facts) -> ArchSpec:
    return ArchSpec(
        model_type=model_type, stem=tuple(f"{prefix}.{s}" for s in stem), stages=f"{prefix}.{layers}",
        first_conv=f"{prefix}.embeddings.patch_embeddings.projection", grouping="even", forward="native",
        neck=tuple(f"{prefix}.{n}" for n in neck), head="classifier", min_image_size=16,
        min_image_size_for=_patch_size, **facts,
    )


def _deit_spec(model: nn.Module) -> ArchSpec:
    """DeiT's plain classifier; the distilled two-head class cannot be re-headed as one classifier."""
    if not isinstance(getattr(model, "classifier", None), nn.Module):
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} (two heads: class and distillation token) is not supported. Load the checkpoint "
            "as DeiTForImageClassification (`transfer_class_for(transformers.DeiTForImageClassification)"
            ".from_pretrained(path, num_labels=...)`): its backbone with one new classifier."
        )
    return replace(_DEIT, resolver=None)


_DEIT = _vit_like("deit", "deit", forward_kwargs=_INTERPOLATE,
                  position_embeddings="deit.embeddings.position_embeddings", prefix_tokens=2)

FAMILIES = tuple(register_family(Family(spec)) for spec in (
    _vit_like("vit", "vit", forward_kwargs=_INTERPOLATE, position_embeddings="vit.embeddings.position_embeddings"),
    _vit_like("vit_msn", "vit", forward_kwargs=_INTERPOLATE, position_embeddings="vit.embeddings.position_embeddings"),
    _vit_like("ijepa", "ijepa", forward_kwargs=_INTERPOLATE, position_embeddings="ijepa.embeddings.position_embeddings",
              prefix_tokens=0),
    replace(_DEIT, resolver=_deit_spec),
    _vit_like("beit", "beit", stem=("embeddings", "shared_position_bias"), neck=("layernorm", "pooler"),
              forward_kwargs=_INTERPOLATE),
    _vit_like("data2vec-vision", "data2vec_vision", stem=("embeddings", "encoder.relative_position_bias"),
              layers="encoder.layer", neck=("layernorm", "pooler"), forward_kwargs=_INTERPOLATE),
    _vit_like("dinov2", "dinov2", layers="encoder.layer"),
    _vit_like("dinov2_with_registers", "dinov2_with_registers", layers="encoder.layer"),
))
