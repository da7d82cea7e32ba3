"""Freezing: which stages train, and how a frozen stage runs.

A frozen stage is an inference-only piece of the network:

* its forward runs under ``torch.no_grad()`` — no autograd graph is recorded and no activations are kept
  for a backward that will never come;
* it stays in eval mode (BatchNorm uses and keeps its running statistics, dropout/drop-path are off),
  even when Trainer calls ``model.train()`` at every step;
* its parameters get no gradient, so no optimizer — with or without weight decay — can change them.

Frozen stages are always a prefix (stem, stage1, ...): "trainable_stages=N" makes the top N units train.
Both switches are instance attributes on the stage's modules (``forward`` and ``train``), so the stored
parameters, their names and the state dict are untouched, and unfreezing just removes them.

``keep_requires_grad`` names frozen units whose parameters keep ``requires_grad=True``: units that a
`FreezeScheduler` will unfreeze later. Trainer builds its optimizer, and DDP its gradient buckets, from
the parameters that require grad when training starts, so those parameters must be in from the start;
they still receive no gradient while their unit runs under ``no_grad``, and optimizers skip parameters
whose ``grad`` is None.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from .registry import ArchSpec, StageUnit, get_arch, stage_units

__all__ = ["FreezeState", "resolve_trainable_stages", "apply_freeze", "freeze_model", "is_frozen", "units_for"]

_FROZEN_FLAG = "_hf_transfer_frozen"


@dataclass
class FreezeState:
    """What is frozen on a model (stored on it as ``model.hf_transfer_freeze_state``)."""

    stage_names: list[str]
    trainable_stages: int
    keep_requires_grad: set[str] = field(default_factory=set)

    @property
    def frozen_stage_names(self) -> list[str]:
        return self.stage_names[: len(self.stage_names) - self.trainable_stages]

    @property
    def trainable_stage_names(self) -> list[str]:
        return self.stage_names[len(self.stage_names) - self.trainable_stages:]


def resolve_trainable_stages(value: int | str | None, num_units: int, stage_names: list[str] | None = None) -> int:
    """Turn ``0..N`` / ``"all"`` / ``None`` (= 0) into a count of top units, with a clear error otherwise."""
    names = f" ({', '.join(stage_names)})" if stage_names else ""
    if value is None:
        return 0
    if isinstance(value, str):
        if value.lower() == "all":
            return num_units
        if value.strip().isdigit():
            value = int(value)
        else:
            raise ValueError(f"trainable_stages={value!r} is not understood; use an integer 0..{num_units} or 'all'.")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"trainable_stages must be an int or 'all', got {type(value).__name__}.")
    if value < 0:
        raise ValueError(f"trainable_stages={value} is negative; use 0 (feature extraction) up to {num_units}, or 'all'.")
    if value > num_units:
        raise ValueError(
            f"trainable_stages={value} but this model has only {num_units} stages{names}; "
            f"use at most {num_units}, or 'all'."
        )
    return value


def _frozen_forward(self: nn.Module, *args, **kwargs):
    with torch.no_grad():
        return type(self).forward(self, *args, **kwargs)


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def _freeze_module(module: nn.Module) -> None:
    if getattr(module, _FROZEN_FLAG, False):
        return
    module.forward = types.MethodType(_frozen_forward, module)
    module.train = types.MethodType(_frozen_train, module)
    object.__setattr__(module, _FROZEN_FLAG, True)
    nn.Module.train(module, False)


def _thaw_module(module: nn.Module, training: bool) -> None:
    if getattr(module, _FROZEN_FLAG, False):
        for attr in ("forward", "train", _FROZEN_FLAG):
            module.__dict__.pop(attr, None)
    nn.Module.train(module, training)


def is_frozen(module: nn.Module) -> bool:
    return bool(getattr(module, _FROZEN_FLAG, False))


def apply_freeze(
    model: nn.Module,
    units: list[StageUnit],
    trainable_stages: int | str | None,
    keep_requires_grad: Iterable[str] = (),
) -> FreezeState:
    """Freeze the bottom units of `model`, leaving the top `trainable_stages` units trainable."""
    names = [u.name for u in units]
    n = resolve_trainable_stages(trainable_stages, len(units), names)
    keep = set(keep_requires_grad)
    unknown = keep - set(names)
    if unknown:
        raise ValueError(f"Unknown stage names {sorted(unknown)}; this model's stages are {names}.")
    boundary = len(units) - n
    for i, unit in enumerate(units):
        frozen = i < boundary
        for m in unit.modules:
            if frozen:
                _freeze_module(m)
            else:
                _thaw_module(m, model.training)
        for p in unit.parameters():
            p.requires_grad_((not frozen) or unit.name in keep)
    state = FreezeState(stage_names=names, trainable_stages=n, keep_requires_grad=keep)
    object.__setattr__(model, "hf_transfer_freeze_state", state)
    return state


def units_for(model: nn.Module, spec: ArchSpec | None = None) -> list[StageUnit]:
    """The stage units of any supported model (a TransferModel or a plain transformers model)."""
    if spec is None:
        spec = get_arch(getattr(getattr(model, "config", None), "model_type", None))
    return stage_units(model, spec)


def freeze_model(model: nn.Module, trainable_stages: int | str | None = 0,
                 keep_requires_grad: Iterable[str] = ()) -> FreezeState:
    """Freeze a supported model (any class) by stage; the head stays trainable."""
    return apply_freeze(model, units_for(model), trainable_stages, keep_requires_grad)
