"""The classifier a new task trains: `HeadSpec` (its layout) and `ClassificationHead` (a custom one)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["HeadSpec", "ClassificationHead", "last_linear_path"]


@dataclass(frozen=True)
class HeadSpec:
    """A custom classifier: pooling, then optional hidden layers, then the output layer."""

    hidden_sizes: tuple[int, ...] = ()
    dropout: float = 0.0
    pooling: Literal["avg", "max", "concat"] = "avg"
    activation: Literal["relu", "gelu", "silu"] = "relu"

    @classmethod
    def parse(cls, value: HeadSpec | dict | None) -> HeadSpec | None:
        if value is None or isinstance(value, HeadSpec):
            spec = value
        elif isinstance(value, dict):
            unknown = set(value) - {"hidden_sizes", "dropout", "pooling", "activation"}
            if unknown:
                raise ValueError(f"Unknown head option(s) {sorted(unknown)}; allowed: hidden_sizes, dropout, pooling, "
                                 "activation.")
            spec = cls(**{**value, "hidden_sizes": tuple(value.get("hidden_sizes", ()))})
        else:
            raise TypeError(f"head must be None, a dict or a HeadSpec, got {type(value).__name__}.")
        if spec is None:
            return None
        if spec.pooling not in ("avg", "max", "concat"):
            raise ValueError(f"head pooling={spec.pooling!r}; use 'avg', 'max' or 'concat'.")
        if spec.activation not in _ACTIVATIONS:
            raise ValueError(f"head activation={spec.activation!r}; use one of {sorted(_ACTIVATIONS)}.")
        if not 0.0 <= spec.dropout < 1.0:
            raise ValueError(f"head dropout={spec.dropout} must be in [0, 1).")
        if any((not isinstance(h, int)) or h < 1 for h in spec.hidden_sizes):
            raise ValueError(f"head hidden_sizes={list(spec.hidden_sizes)} must be positive integers.")
        return spec

    @property
    def is_native(self) -> bool:
        return self == HeadSpec()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        return d


_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class ClassificationHead(nn.Module):
    """Hidden layers (Linear → activation → dropout) then the output Linear."""

    def __init__(self, in_features: int, num_labels: int, spec: HeadSpec):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in spec.hidden_sizes:
            layers += [nn.Linear(width, h), _ACTIVATIONS[spec.activation](), nn.Dropout(spec.dropout)]
            width = h
        if not spec.hidden_sizes and spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(width, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x))


def last_linear_path(module: nn.Module) -> str | None:
    found = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            found = name
    return found
