"""Inference copies of frozen modules: BN folded into convs, channels_last, verified against the original."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

from .graphs import OneDNNGraph, freeze_graph, outputs_close
from .options import FROZEN_ATTRS, FastOptions

__all__ = ["build_inference_copy", "fold_conv_bn", "plain_copy", "Unhooked"]



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


def _conv_bn_pairs(module: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) pairs where a BatchNorm directly consumes a conv's output, found by running it."""
    names = {m: n for n, m in module.named_modules()}
    produced: dict[int, nn.Module] = {}
    pairs = []
    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(lambda mod, i, o: produced.__setitem__(id(o), mod)))
        elif isinstance(m, nn.BatchNorm2d):
            def pre(mod, inputs):
                conv = produced.get(id(inputs[0]))
                if conv is not None:
                    pairs.append((names[conv], names[mod]))
            handles.append(m.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    seen = {}
    for conv, bn in pairs:  # a conv or BN used twice is not a simple chain: leave it alone
        seen[conv] = seen.get(conv, 0) + 1
        seen[bn] = seen.get(bn, 0) + 1
    return [(c, b) for c, b in dict.fromkeys(pairs) if seen[c] == 1 and seen[b] == 1]


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the conv before it (in place on `conv`)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)


def build_inference_copy(module: nn.Module, x: torch.Tensor, options: FastOptions = FastOptions(),
                         use_jit: bool = False):
    """A compute-only copy of a frozen module: BN folded, channels_last, optionally a frozen TorchScript graph or
    compiled; verified on `x` against the original (which is not touched).

    Each optimisation is kept only if the output still matches the original's on `x` up to float rounding;
    otherwise the copy falls back one level (unfolded eager copy, or eager instead of the graph).
    """
    # per-sample ops: a couple of samples are enough to build and check the copy; cloned, so that an in-place
    # activation that is its own frozen module never writes into the caller's input while being checked
    probe = x[:2].clone()
    # checked at another batch size than the probe's, so a graph that baked the batch size in is caught
    check = x[:3].clone() if len(x) >= 3 else torch.cat([x, x[:1]])
    with torch.no_grad():
        plain = plain_copy(module)  # a copy without frozen-module hooks: the plain computation
        reference = plain(probe)
        clone = plain_copy(module)
        if options.fold_bn:
            folded = 0
            for conv_name, bn_name in _conv_bn_pairs(clone, probe):
                conv, bn = clone.get_submodule(conv_name), clone.get_submodule(bn_name)
                if conv.out_channels == bn.num_features and bn.track_running_stats:
                    fold_conv_bn(conv, bn)
                    _replace(clone, bn_name, nn.Identity())
                    folded += 1
            if folded and not outputs_close(clone(probe), reference):
                logger.debug("BN folding changed %s's output; running it unfolded.", type(module).__name__)
                clone = plain_copy(module)
        if options.channels_last and x.dim() == 4:
            clone = clone.to(memory_format=torch.channels_last)
            probe = probe.contiguous(memory_format=torch.channels_last)
            check = check.contiguous(memory_format=torch.channels_last)
        if options.compile:
            return torch.compile(clone, dynamic=True)
        if use_jit:
            # checked at a batch size other than the traced one: the graph must not have baked it in
            graph = freeze_graph(clone, probe, check, plain(check), fuse=options.fuse)
            if isinstance(graph, OneDNNGraph):
                graph.reference = Unhooked(module)  # checks each new batch size; the fallback if it ever fails
            if graph is not None:
                return graph
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


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)
