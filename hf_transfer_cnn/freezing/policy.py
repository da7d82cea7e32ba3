"""Freezing policy: which stages train, and what a frozen stage is.

A frozen stage is an inference-only piece of the network:

* its forward runs under ``torch.no_grad()`` — no autograd graph is recorded and no activations are kept
  for a backward that will never come;
* it stays in eval mode (BatchNorm uses and keeps its running statistics, dropout/drop-path are off),
  even when Trainer calls ``model.train()`` at every step;
* its parameters get no gradient, so no optimizer — with or without weight decay — can change them.

Frozen stages are always a prefix (stem, stage1, ...): "trainable_stages=N" makes the top N units train.
Both switches are instance attributes on the stage's modules (``forward`` and ``train``), so the stored
parameters, their names and the state dict are untouched, and unfreezing just removes them; nn.DataParallel's
per-step replicas of a frozen module are frozen the same way and run their own device's weights. An instance
``forward`` already there (an accelerate hook: ``device_map`` dispatch, ``cpu_offload``) keeps running inside the
frozen one and is put back on unfreeze; such modules run as they are, without an inference copy.

``keep_requires_grad`` names frozen units whose parameters keep ``requires_grad=True``: units that a
`FreezeScheduler` will unfreeze later. Trainer builds its optimizer, and DDP its gradient buckets, from
the parameters that require grad when training starts, so those parameters must be in from the start;
they still receive no gradient while their unit runs under ``no_grad``, and optimizers skip parameters
whose ``grad`` is None. An input that requires grad (adversarial training, saliency) gets its gradient through a
frozen unit, which then runs with its parameters swapped for detached views: they get none either.
"""


from __future__ import annotations

import logging

from torch import nn

logger = logging.getLogger(__name__)
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..fastpath import FAST_ATTR, FROZEN_ATTRS, FROZEN_FLAG, FastOptions, FastSlot, FrozenForward, has_hooks
from ..registry import ArchSpec, StageUnit, get_arch, stage_units
from .module import install_frozen

__all__ = ["FreezeState", "resolve_trainable_stages", "apply_freeze", "freeze_model", "is_frozen", "units_for"]


@dataclass
class FreezeState:
    """What is frozen on a model (stored on it as ``model.hf_transfer_freeze_state``)."""

    stage_names: list[str]
    trainable_stages: int
    keep_requires_grad: set[str] = field(default_factory=set)
    fast: FastOptions | None = None

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



def _freeze_module(module: nn.Module, fast: FastOptions | None) -> None:
    if fast is not None and fast.enabled and not has_hooks(module):
        module.__dict__[FAST_ATTR] = FastSlot(fast)
    else:  # hooks (device placement, offloading) must run: the module runs as it is, under no_grad
        module.__dict__.pop(FAST_ATTR, None)
    if getattr(module, FROZEN_FLAG, False):
        return
    install_frozen(module, module.__dict__.get("forward"))
    object.__setattr__(module, FROZEN_FLAG, True)
    nn.Module.train(module, False)


def _thaw_module(module: nn.Module, training: bool) -> None:
    if getattr(module, FROZEN_FLAG, False):
        forward = module.__dict__.get("forward")
        if isinstance(forward, FrozenForward) and forward.module is module:
            if forward.inner is not None:
                module.forward = forward.inner  # the instance forward freezing replaced (an accelerate hook, ...)
            else:
                del module.__dict__["forward"]
        # else: wrapped since freezing (a hook added later): the wrapper stays, and our forward now passes through
        for attr in FROZEN_ATTRS:
            module.__dict__.pop(attr, None)
    nn.Module.train(module, training)


def is_frozen(module: nn.Module) -> bool:
    return bool(getattr(module, FROZEN_FLAG, False))


def apply_freeze(
    model: nn.Module,
    units: list[StageUnit],
    trainable_stages: int | str | None,
    keep_requires_grad: Iterable[str] = (),
    fast: FastOptions | None = None,
) -> FreezeState:
    """Freeze the bottom units of `model`, leaving the top `trainable_stages` units trainable.

    `fast` sets how frozen units execute (default: what the model used last, else `FastOptions()` — eager
    copies, BN folded, convs fused with their activations, channels_last); ``FastOptions(enabled=False)`` runs them as
    they are, under ``no_grad``.
    """
    if fast is None:
        fast = getattr(model, "hf_transfer_fast_options", None) or FastOptions()
    object.__setattr__(model, "hf_transfer_fast_options", fast)
    names = [u.name for u in units]
    n = resolve_trainable_stages(trainable_stages, len(units), names)
    if isinstance(keep_requires_grad, str):
        raise TypeError(f"keep_requires_grad takes a collection of stage names, not one string; use "
                        f"keep_requires_grad=[{keep_requires_grad!r}].")
    keep = set(keep_requires_grad)
    unknown = keep - set(names)
    if unknown:
        raise ValueError(f"Unknown stage names {sorted(unknown)}; this model's stages are {names}.")
    boundary = len(units) - n
    for i, unit in enumerate(units):
        frozen = i < boundary
        for m in unit.modules:
            if frozen:
                _freeze_module(m, fast)
            else:
                _thaw_module(m, model.training)
        for p in unit.parameters():
            p.requires_grad_((not frozen) or unit.name in keep)
            if frozen:  # a stale (or zeroed) grad would let momentum / weight decay keep moving the frozen weights
                p.grad = None
        _guard_loose_params(model, unit.params, frozen and unit.name in keep)
    state = FreezeState(stage_names=names, trainable_stages=n, keep_requires_grad=keep, fast=fast)
    object.__setattr__(model, "hf_transfer_freeze_state", state)
    return state


_GUARDS_ATTR = "_hf_transfer_grad_guards"


def _drop_grad(param: nn.Parameter) -> None:
    param.grad = None


def _guard_loose_params(model: nn.Module, params: list[nn.Parameter], guard: bool) -> None:
    """Parameters a frozen unit holds outside its modules (timm ViTs' class token) are used by the parent's forward,
    outside the unit's no_grad: kept at ``requires_grad=True`` for a later unfreeze, they would get a gradient. While
    frozen, a hook drops it as soon as it is accumulated (optimizers skip parameters without one)."""
    if not params:
        return
    guards = model.__dict__.setdefault(_GUARDS_ATTR, {})
    for p in params:
        handle = guards.get(id(p))
        if guard and handle is None:
            guards[id(p)] = p.register_post_accumulate_grad_hook(_drop_grad)
        elif not guard and handle is not None:
            handle.remove()
            del guards[id(p)]


def units_for(model: nn.Module, spec: ArchSpec | None = None) -> list[StageUnit]:
    """The stage units of any supported model (a TransferModel or a plain transformers model)."""
    if spec is None:
        spec = get_arch(getattr(getattr(model, "config", None), "model_type", None))
    return stage_units(model, spec)


def freeze_model(model: nn.Module, trainable_stages: int | str | None = 0,
                 keep_requires_grad: Iterable[str] = (), fast: FastOptions | None = None) -> FreezeState:
    """Freeze a supported model (any class) by stage; the head stays trainable."""
    return apply_freeze(model, units_for(model), trainable_stages, keep_requires_grad, fast)


# --- inference copies of frozen modules -----------------------------------------------------------------
