"""Absolute position embeddings on a new patch grid: what a ViT computes when it interpolates them, done once."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["resample_position_embeddings"]


def resample_position_embeddings(pos: torch.Tensor, prefix_tokens: int, grid: int) -> torch.Tensor:
    """``[1, prefix + g*g, dim]`` position embeddings on a ``grid x grid`` patch grid (bicubic, ``align_corners=False``:
    transformers' ViT/DeiT ``interpolate_pos_encoding``), the `prefix_tokens` (class/distillation) ones unchanged."""
    prefix, patches = pos[:, :prefix_tokens], pos[:, prefix_tokens:]
    old = math.isqrt(patches.shape[1])
    if old * old != patches.shape[1]:
        raise ValueError(f"position embeddings for {patches.shape[1]} patches are not a square grid.")
    if old == grid:
        return pos.clone()
    dim = patches.shape[-1]
    patches = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2)
    patches = nn.functional.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat((prefix, patches.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)
