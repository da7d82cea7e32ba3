"""Swin Transformer V1/V2 (transformers' own classes), run through their own forward (``forward="native"``).

Stages are the model's own (``encoder.layers``, each ending with its patch merging); the embeddings are the stem;
the final norm belongs to the last stage; the classifier is the head (after the model's mean pooling). Inputs of any
size from one position at the last stage up run (V1: one whole window there), the model padding to its windows;
``config.image_size`` is kept (it only sets absolute position embeddings, when the config has them, which are then
interpolated: ``interpolate_pos_encoding=True``).
"""

from __future__ import annotations

from ..registry import ArchSpec, Family, register_family


def _last_stage_size(config: object) -> int:
    """Input pixels per position of the last stage: patch size x 2 per patch merging."""
    patch = getattr(config, "patch_size", 4)
    patch = max(patch) if isinstance(patch, (tuple, list)) else patch
    return int(patch) * 2 ** (len(getattr(config, "depths", (0,))) - 1)


def _swin_min_size(config: object) -> int:
    """Swin V1 needs a whole window at the last stage (transformers' V1 fails on a smaller last feature map)."""
    return _last_stage_size(config) * int(getattr(config, "window_size", 7))


def _spec(model_type: str, min_size) -> ArchSpec:
    t = model_type
    return ArchSpec(model_type=t, stem=(f"{t}.embeddings",), stages=f"{t}.encoder.layers", neck=(f"{t}.layernorm",),
                    first_conv=f"{t}.embeddings.patch_embeddings.projection", forward="native",
                    forward_kwargs=(("interpolate_pos_encoding", True),), head="classifier", min_image_size=32,
                    min_image_size_for=min_size)


FAMILIES = (register_family(Family(_spec("swin", _swin_min_size))),
            register_family(Family(_spec("swinv2", _last_stage_size))))
