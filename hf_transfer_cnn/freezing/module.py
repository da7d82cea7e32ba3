"""One frozen module: its forward under no_grad (through the fast path where it applies), train() kept off,
DataParallel replicas frozen too. Instance attributes only: parameters, names and the state dict are untouched."""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading

import torch
from torch import nn

logger = logging.getLogger(__name__)

from ..fastpath import FAST_ATTR, FROZEN_FLAG, FrozenForward, fast_call

__all__ = ["install_frozen"]


def _frozen_forward(self: nn.Module, inner, *args, **kwargs):
    if not self.__dict__.get(FROZEN_FLAG, False):  # unfrozen, but still called through a wrapper added while frozen
        return _plain_forward(self, inner, args, kwargs)
    if torch.is_grad_enabled() and _any_requires_grad(args, kwargs):
        with _detached_parameters(self):  # gradients w.r.t. the input (saliency, adversarial), never the parameters
            return _plain_forward(self, inner, args, kwargs)
    with torch.no_grad():
        if (inner is None and FAST_ATTR in self.__dict__ and len(args) == 1 and not kwargs
                and isinstance(args[0], torch.Tensor)):
            return fast_call(self, args[0])
        return _plain_forward(self, inner, args, kwargs)


def _plain_forward(module: nn.Module, inner, args, kwargs):
    """The module's own computation: through `inner` (the instance forward freezing replaced) where there was one."""
    return inner(*args, **kwargs) if inner is not None else type(module).forward(module, *args, **kwargs)


def _any_requires_grad(args, kwargs) -> bool:
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in itertools.chain(args, kwargs.values()))


_DETACH_LOCK = threading.RLock()


@contextlib.contextmanager
def _detached_parameters(module: nn.Module):
    """Swap `module`'s parameters for detached views (same storage) while the block runs; buffers are untouched.

    Autograd then reaches the input only, even for parameters kept at ``requires_grad=True`` for a later unfreeze.
    Under a lock: a second thread must never take the first one's detached views for the parameters to restore.
    """
    with _DETACH_LOCK:
        swapped = []
        try:
            for m in module.modules():
                for name, p in m._parameters.items():
                    if p is not None and p.requires_grad:
                        swapped.append((m, name, p))
                        m._parameters[name] = p.detach()
            yield
        finally:
            for m, name, p in reversed(swapped):
                m._parameters[name] = p


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def _frozen_replicate(self: nn.Module) -> nn.Module:
    """nn.DataParallel's per-step replica of a frozen module: frozen too, running itself (its device's weights), not
    the original, and without inference copies (its weights are new tensors at every step)."""
    replica = nn.Module._replicate_for_data_parallel(self)
    forward = self.__dict__.get("forward")
    install_frozen(replica, forward.inner if isinstance(forward, FrozenForward) else forward)
    replica.__dict__.pop(FAST_ATTR, None)
    return replica


# what freezing sets on a module's instance dict besides `forward` (removed on thaw and from inference copies)
FROZEN_ATTRS = ("train", "_replicate_for_data_parallel", FROZEN_FLAG, FAST_ATTR)


def install_frozen(module: nn.Module, inner) -> None:
    """Make `module` run frozen: its forward (around `inner`, the instance forward it had), train() and DataParallel
    replication."""
    module.forward = FrozenForward(_frozen_forward, module, inner)
    module.train = _Bound(_frozen_train, module)
    module._replicate_for_data_parallel = _Bound(_frozen_replicate, module)


class _Bound:
    """``fn`` bound to a module, stored as an instance attribute; unlike a bound method it pickles."""

    __slots__ = ("fn", "module")

    def __init__(self, fn, module: nn.Module):
        self.fn, self.module = fn, module

    def __call__(self, *args, **kwargs):
        return self.fn(self.module, *args, **kwargs)

    def __reduce__(self):
        return (_Bound, (self.fn, self.module))
