"""Eager inference fusions on a copy of a frozen module: BatchNorm folded into the conv before it, and a conv fused
with the activation module that consumes it into one oneDNN call (CPU, float32).

Pairs are found by running the copy once with hooks (a module consumes another's output when it receives that very
tensor object, unchanged) while counting every torch function each output is passed to, so no model's code is named
here. A conv, BatchNorm or activation module called more than once in a forward is left alone (it is shared), and so
is an output used anywhere else. The caller still verifies the result against the plain module and falls back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ..registry import set_module

__all__ = ["fold_conv_bn", "fold_batchnorms", "fuse_conv_activations", "FusedConvAct", "pointwise_conv_available",
           "producer_consumer_pairs"]


def producer_consumer_pairs(module: nn.Module, x: torch.Tensor, producer: tuple[type, ...],
                            consumer) -> list[tuple[str, str]]:
    """(producer name, consumer name) pairs where a `consumer` module (a type tuple or a predicate) is the only user
    of a `producer` module's output, unchanged since (no in-place op in between), both called exactly once in
    ``module(x)``. Uses are counted over every torch function the output is passed to (a residual add, a concat,
    the consumer's own op), so a conv output that also feeds anything else never pairs."""
    is_consumer = consumer if callable(consumer) and not isinstance(consumer, tuple) else (
        lambda m: isinstance(m, consumer))
    names = {m: n for n, m in module.named_modules()}
    produced: dict[int, _Output] = {}  # the tensors are kept: their ids stay unique
    calls: dict[nn.Module, int] = {}
    pairs = []

    def count(mod, _inputs):
        calls[mod] = calls.get(mod, 0) + 1

    def record(mod, _inputs, out):
        if isinstance(out, torch.Tensor):
            produced[id(out)] = _Output(out, mod, out._version)

    def consume(mod, inputs):
        hit = produced.get(id(inputs[0])) if inputs and isinstance(inputs[0], torch.Tensor) else None
        if hit is not None and hit.tensor is inputs[0] and inputs[0]._version == hit.version:
            pairs.append((hit, mod))

    handles = []
    for m in module.modules():
        if isinstance(m, producer):
            handles += [m.register_forward_pre_hook(count), m.register_forward_hook(record)]
        elif is_consumer(m):
            handles += [m.register_forward_pre_hook(count), m.register_forward_pre_hook(consume)]
    try:
        with torch.no_grad(), _CountUses(produced):
            module(x)
    finally:
        for h in handles:
            h.remove()
    found = [(names[out.module], names[mod]) for out, mod in pairs
             if out.uses == 1 and calls[out.module] == 1 and calls[mod] == 1]
    return list(dict.fromkeys(found))


class _Output:
    """A producer module's output during the probe run: the tensor, who made it, its version then, its uses."""

    __slots__ = ("tensor", "module", "version", "uses")

    def __init__(self, tensor: torch.Tensor, module: nn.Module, version: int):
        self.tensor, self.module, self.version, self.uses = tensor, module, version, 0


_METADATA = {"__get__", "size", "dim", "numel", "stride", "is_contiguous", "element_size", "data_ptr"}


class _CountUses(TorchFunctionMode):
    """Counts, for each recorded output, the torch functions it is passed to (metadata queries aside)."""

    def __init__(self, produced: dict[int, _Output]):
        super().__init__()
        self.produced = produced

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.produced and getattr(func, "__name__", "") not in _METADATA:
            for leaf in tree_leaves((args, kwargs)):
                out = self.produced.get(id(leaf)) if isinstance(leaf, torch.Tensor) else None
                if out is not None and out.tensor is leaf:
                    out.uses += 1
        return func(*args, **kwargs)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the conv before it (in place on `conv`)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)


def fold_batchnorms(clone: nn.Module, probe: torch.Tensor) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a conv into it (in `clone`); returns how many. A
    subclass with a forward of its own (timm's BatchNormAct2d also applies an activation) is left alone."""
    folded = 0
    plain_bn = nn.BatchNorm2d.forward

    def foldable(m: nn.Module) -> bool:
        return isinstance(m, nn.BatchNorm2d) and type(m).forward is plain_bn

    for conv_name, bn_name in producer_consumer_pairs(clone, probe, (nn.Conv2d,), foldable):
        conv, bn = clone.get_submodule(conv_name), clone.get_submodule(bn_name)
        if conv.out_channels == bn.num_features and bn.track_running_stats and bn.running_var is not None:
            fold_conv_bn(conv, bn)
            set_module(clone, bn_name, nn.Identity())
            folded += 1
    return folded


@dataclass(frozen=True)
class _PostOp:
    """An activation as oneDNN's fused conv takes it: name, scalar arguments, algorithm."""

    name: str
    scalars: tuple[float, ...] = ()
    algorithm: str = ""


def _post_op(act: nn.Module) -> _PostOp | None:
    """The oneDNN post-op computing `act` (a torch activation module of an exact known type), or None."""
    kind = type(act)
    if kind is nn.ReLU:
        return _PostOp("relu")
    if kind in (nn.ReLU6, nn.Hardtanh):
        return _PostOp("hardtanh", (float(act.min_val), float(act.max_val)))
    if kind is nn.SiLU:
        return _PostOp("swish")
    if kind is nn.Hardswish:
        return _PostOp("hardswish")
    if kind is nn.GELU:
        return _PostOp("gelu", (), act.approximate)
    if kind is nn.LeakyReLU:
        return _PostOp("leaky_relu", (float(act.negative_slope),))
    if kind in (nn.Sigmoid, nn.Tanh):
        return _PostOp(kind.__name__.lower())
    return None


def pointwise_conv_available() -> bool:
    """Whether this torch build has oneDNN's fused conv + post-op (the kernel Inductor's CPU freezing emits)."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without the mkldnn namespace
        return False


class FusedConvAct(nn.Conv2d):
    """A 2-d conv that also applies the activation that consumed its output (`act`), in one oneDNN call for float32
    CPU batches without autograd; anything else (another device or dtype, an unbatched input, autocast, gradients)
    runs the conv, then
    `act`. Made from the conv itself (`FusedConvAct.fuse`), so code reading its stride or padding still works."""

    act: nn.Module
    post: _PostOp
    pads: list[int]

    @classmethod
    def fuse(cls, conv: nn.Conv2d, act: nn.Module, post: _PostOp) -> "FusedConvAct":
        pads = _explicit_padding(conv)
        conv.__class__ = cls  # in place: `conv` belongs to a copy made for this
        conv.act, conv.post, conv.pads = act, post, pads
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or torch.is_autocast_enabled("cpu")
                or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return self.act(super().forward(x))
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, self.pads, list(self.stride), list(self.dilation), self.groups,
            self.post.name, list(self.post.scalars), self.post.algorithm)


def _explicit_padding(conv: nn.Conv2d) -> list[int] | None:
    """The conv's symmetric zero padding as numbers ("same"/"valid" resolved), None where it has none."""
    if conv.padding_mode != "zeros":
        return None
    if conv.padding == "valid":
        return [0, 0]
    if conv.padding == "same":
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return [t // 2 for t in totals] if all(t % 2 == 0 for t in totals) else None
    return list(conv.padding)


def _fusable_conv(conv: nn.Module) -> bool:
    """A float32 2-d conv computed by nn.Conv2d's own forward (subclasses that only configure it count)."""
    return (isinstance(conv, nn.Conv2d) and type(conv).forward is nn.Conv2d.forward
            and type(conv)._conv_forward is nn.Conv2d._conv_forward and _explicit_padding(conv) is not None
            and conv.weight.dtype == torch.float32)


def fuse_conv_activations(clone: nn.Module, probe: torch.Tensor) -> int:
    """Fuse every conv of `clone` whose output only an activation module uses with that activation (the activation
    becomes an Identity); returns how many. Only for float32 CPU probes, where oneDNN runs it."""
    if probe.device.type != "cpu" or probe.dtype != torch.float32 or not pointwise_conv_available():
        return 0
    fused = 0
    for conv_name, act_name in producer_consumer_pairs(clone, probe, (nn.Conv2d,),
                                                        lambda m: _post_op(m) is not None):
        conv, act = clone.get_submodule(conv_name), clone.get_submodule(act_name)
        if _fusable_conv(conv):
            FusedConvAct.fuse(conv, act, _post_op(act))
            set_module(clone, act_name, nn.Identity())
            fused += 1
    return fused
