"""State-dict mapping helpers that family files use to describe how torchvision names map onto theirs."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

__all__ = ["StateDict", "map_in_order", "map_prefix"]

StateDict = Mapping[str, torch.Tensor]


def map_in_order(sd: StateDict, hf_model: nn.Module) -> dict[str, torch.Tensor]:
    targets = hf_model.state_dict()
    if len(targets) != len(sd):
        raise ValueError(f"{len(sd)} tensors in the weights but {len(targets)} in {type(hf_model).__name__}.")
    out = {}
    for (src, value), (dst, ref) in zip(sd.items(), targets.items()):
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(f"in-order mapping broke at {src} {tuple(value.shape)} -> {dst} {tuple(ref.shape)}.")
        out[dst] = value
    return out


def map_prefix(prefix: str) -> Callable[[StateDict, nn.Module], dict[str, torch.Tensor]]:
    def mapper(sd: StateDict, hf_model: nn.Module) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{k}": v for k, v in sd.items()}
    return mapper
