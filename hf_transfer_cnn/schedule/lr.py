"""Learning-rate plumbing that survives Trainer's scheduler, checkpoints and DDP.

Two tools, both pure functions of the optimizer step (so a resumed run recomputes exactly what the
uninterrupted run used, and every DDP rank computes the same thing):

* `scale_lr_schedule` multiplies a `LambdaLR`'s lambdas by ``factor(step)``. The scheduler keeps
  stepping as configured; the optimizer's ``lr`` — the value Trainer logs — is the one actually used.
* `StageLrMultipliers` gives parameters inside one optimizer param group different learning rates
  without adding param groups (adding groups after the scheduler exists breaks it, and changes the
  layout a resumed optimizer state must match). For optimizers whose update is linear in ``lr``
  (SGD, Adam, AdamW, ...) the update with ``k * lr`` equals ``k`` times the update with ``lr``, so after
  each step the parameter is moved back to ``old + k * (new - old)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["scale_lr_schedule", "unwrap_scheduler", "unwrap_optimizer", "StageLrMultipliers",
           "LR_LINEAR_OPTIMIZERS"]

# Optimizers whose parameter update is exactly proportional to the learning rate.
LR_LINEAR_OPTIMIZERS = {"SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "RMSprop", "Adadelta"}

_ORIG = "_hf_transfer_orig_lambda"


def unwrap_scheduler(scheduler):
    """The torch scheduler inside an Accelerate/Trainer wrapper."""
    while isinstance(getattr(scheduler, "scheduler", None), torch.optim.lr_scheduler.LRScheduler):
        scheduler = scheduler.scheduler
    return scheduler


def unwrap_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside an Accelerate wrapper."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def scale_lr_schedule(scheduler, factor: Callable[[int], float]) -> LambdaLR:
    """Make every lr lambda return ``original(step) * factor(step)``; idempotent; re-syncs current lrs.

    Raises a ValueError for schedulers that are not `LambdaLR` (e.g. ReduceLROnPlateau).
    """
    sched = unwrap_scheduler(scheduler)
    if not isinstance(sched, LambdaLR):
        raise ValueError(
            f"lr_factor needs a LambdaLR-based scheduler (linear, cosine, constant, constant_with_warmup, "
            f"polynomial, inverse_sqrt, cosine_with_min_lr, warmup_stable_decay, ...); got {type(sched).__name__}. "
            "Use one of those lr_scheduler_type values, or lr_factor=1.0."
        )
    new_lambdas = []
    for fn in sched.lr_lambdas:
        orig = getattr(fn, _ORIG, fn)

        def scaled(step, _orig=orig):
            return _orig(step) * factor(step)

        setattr(scaled, _ORIG, orig)
        new_lambdas.append(scaled)
    sched.lr_lambdas = new_lambdas
    step = sched.last_epoch
    lrs = [base * fn(step) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(sched.optimizer.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = lrs
    return sched


class StageLrMultipliers:
    """Per-parameter learning-rate multipliers applied around ``optimizer.step()`` via step hooks."""

    def __init__(self, optimizer, multipliers: Callable[[], Sequence[tuple[list[torch.nn.Parameter], float]]]):
        opt = unwrap_optimizer(optimizer)
        name = type(opt).__name__
        if name not in LR_LINEAR_OPTIMIZERS:
            raise ValueError(
                f"stage_lr_decay needs an optimizer whose update is proportional to the learning rate "
                f"({', '.join(sorted(LR_LINEAR_OPTIMIZERS))}); got {name}. Use one of those, or stage_lr_decay=None."
            )
        self._multipliers = multipliers
        self._saved: list[tuple[list[torch.Tensor], list[torch.Tensor], float]] = []
        self._handles = [opt.register_step_pre_hook(self._pre), opt.register_step_post_hook(self._post)]

    def _pre(self, optimizer, args, kwargs):
        self._saved = []
        for params, k in self._multipliers():
            live = [p for p in params if p.grad is not None]
            if k != 1.0 and live:
                self._saved.append((live, [p.detach().clone() for p in live], k))

    def _post(self, optimizer, args, kwargs):
        with torch.no_grad():
            for params, old, k in self._saved:
                for p, o in zip(params, old):
                    p.sub_(o).mul_(k).add_(o)  # p = o + k * (p - o)
        self._saved = []

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
