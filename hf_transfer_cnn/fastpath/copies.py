"""Inference copies of frozen modules: BN folded into convs, convs fused with their activations, channels_last;
(opt-in) a TorchScript graph or a compiled copy; verified against the original."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace

import torch
from torch import nn

logger = logging.getLogger(__name__)

from .fusion import fold_batchnorms, fuse_conv_activations
from .graphs import OneDNNGraph, freeze_graph, outputs_close
from .options import FROZEN_ATTRS, FastOptions

__all__ = ["build_inference_copy", "plain_copy", "Unhooked"]


def plain_copy(module: nn.Module) -> nn.Module:
    clone = copy.deepcopy(module)
    for m in clone.modules():
        for attr in ("forward", *FROZEN_ATTRS):
            m.__dict__.pop(attr, None)
        for attr, value in list(vars(m).items()):  # the user's hooks run on the real module, once, not on copies
            if attr.startswith(("_forward_", "_backward_")) and "hooks" in attr and isinstance(value, dict):
                setattr(m, attr, type(value)())
    clone.eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def build_inference_copy(module: nn.Module, x: torch.Tensor, options: FastOptions = FastOptions(),
                         use_jit: bool = False):
    """A compute-only copy of a frozen module: BN folded, convs fused with their activations, channels_last, or
    (opt-in) a TorchScript graph or a compiled copy; verified on `x` against the original (which is not touched).

    Each optimisation is kept only if the output still matches the original's on `x` up to float rounding;
    otherwise the copy falls back one level (unfused, unfolded, or eager instead of the graph or compiled copy).
    """
    # per-sample ops: a couple of samples are enough to build and check the copy; cloned, so that an in-place
    # activation that is its own frozen module never writes into the caller's input while being checked
    probe = x[:2].clone()
    # checked at another batch size than the probe's, so a graph that baked the batch size in is caught
    check = x[:3].clone() if len(x) >= 3 else torch.cat([x, x[:1]])
    with torch.no_grad():
        plain = plain_copy(module)  # a copy without frozen-module hooks: the plain computation
        fuse = options.fuse and not use_jit and not options.compile  # jit and compile fuse in their own way
        layout = options.channels_last and x.dim() == 4
        clone = _eager_copy(module, probe, plain(probe.clone()), _Steps(layout, options.fold_bn, fuse))
        if layout:
            probe = probe.contiguous(memory_format=torch.channels_last)
            check = check.contiguous(memory_format=torch.channels_last)
        if options.compile:
            return _compiled_copy(clone, check, plain(check.clone()))
        if use_jit:
            # checked at a batch size other than the traced one: the graph must not have baked it in
            graph = freeze_graph(clone, probe, check, plain(check.clone()), fuse=options.fuse)
            if isinstance(graph, OneDNNGraph):
                graph.reference = Unhooked(module)  # checks each new batch size; the fallback if it ever fails
            if graph is not None:
                return graph
    return clone


@dataclass(frozen=True)
class _Steps:
    """The eager copy's optimisations still in play."""

    channels_last: bool
    fold: bool
    fuse: bool


def _eager_copy(module: nn.Module, probe: torch.Tensor, reference, steps: _Steps) -> nn.Module:
    """`plain_copy(module)` in channels_last, with BN folded and convs fused with their activations, as `steps` allow;
    each step is kept only if the output on `probe` still matches `reference` (else the copy is rebuilt without it)."""
    clone = plain_copy(module)
    if steps.channels_last:
        clone = clone.to(memory_format=torch.channels_last)
        probe = probe.contiguous(memory_format=torch.channels_last)
        if not _reproduces(clone, probe, reference, "Running in channels_last"):
            return _eager_copy(module, probe, reference, replace(steps, channels_last=False))
    if steps.fold and fold_batchnorms(clone, probe.clone()) and not _reproduces(
            clone, probe, reference, "Folding BatchNorm"):
        return _eager_copy(module, probe, reference, replace(steps, fold=False))
    if steps.fuse and fuse_conv_activations(clone, probe.clone()) and not _reproduces(
            clone, probe, reference, "Fusing convs with their activations"):
        return _eager_copy(module, probe, reference, replace(steps, fuse=False))
    return clone.to(memory_format=torch.channels_last) if steps.channels_last else clone


def _reproduces(clone: nn.Module, probe: torch.Tensor, reference, change: str) -> bool:
    """Whether `clone` (after `change`) still computes `reference` on `probe`; if not, log why (the caller falls
    back to the copy without that change)."""
    try:
        if outputs_close(clone(probe.clone()), reference):
            return True
        why = "changed its output"
    except Exception as err:  # a kernel this build or this module does not support
        why = f"made it raise {type(err).__name__}: {err}"
    logger.info("%s of the frozen %s %s; its fast copy runs without it.", change, type(clone).__name__, why)
    return False


def _compiled_copy(clone: nn.Module, check: torch.Tensor, expected: torch.Tensor):
    """`torch.compile(clone)`, compiled now (on `check`) and verified against `expected`; `clone` if it fails."""
    try:
        compiled = torch.compile(clone, dynamic=True)
        if outputs_close(compiled(check), expected):
            return compiled
        logger.info("torch.compile changed %s's output; it runs as an eager copy.", type(clone).__name__)
    except Exception as err:  # a compiler that is missing or fails on this module
        logger.info("torch.compile failed on %s (%s: %s); it runs as an eager copy.", type(clone).__name__,
                    type(err).__name__, err)
    return clone


class Unhooked:
    """The plain computation of a frozen module (or of a Sequential of frozen modules), bypassing the frozen-module
    hooks and without copying any weights."""

    __slots__ = ("module",)

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, x: torch.Tensor):
        modules = list(self.module) if isinstance(self.module, nn.Sequential) else [self.module]
        with torch.no_grad():
            for m in modules:
                x = type(m).forward(m, x)
        return x
