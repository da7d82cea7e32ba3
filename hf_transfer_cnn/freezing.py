"""Freezing: which stages train, and how a frozen stage runs.

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

import contextlib
import copy
import itertools
import logging
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

from .registry import ArchSpec, StageUnit, get_arch, stage_units

__all__ = ["FreezeState", "FastOptions", "build_inference_copy", "clear_inference_copies", "fold_conv_bn",
           "run_frozen_prefix", "resolve_trainable_stages", "apply_freeze", "freeze_model", "is_frozen", "units_for"]

logger = logging.getLogger(__name__)

_FROZEN_FLAG = "_hf_transfer_frozen"
_FAST = "_hf_transfer_fast"


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


def _frozen_forward(self: nn.Module, inner, *args, **kwargs):
    if not self.__dict__.get(_FROZEN_FLAG, False):  # unfrozen, but still called through a wrapper added while frozen
        return _plain_forward(self, inner, args, kwargs)
    if torch.is_grad_enabled() and _any_requires_grad(args, kwargs):
        with _detached_parameters(self):  # gradients w.r.t. the input (saliency, adversarial), never the parameters
            return _plain_forward(self, inner, args, kwargs)
    with torch.no_grad():
        if (inner is None and _FAST in self.__dict__ and len(args) == 1 and not kwargs
                and isinstance(args[0], torch.Tensor)):
            return _fast_call(self, args[0])
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
    _install_frozen(replica, forward.inner if isinstance(forward, _FrozenForward) else forward)
    replica.__dict__.pop(_FAST, None)
    return replica


# what freezing sets on a module's instance dict besides `forward` (removed on thaw and from inference copies)
_FROZEN_ATTRS = ("train", "_replicate_for_data_parallel", _FROZEN_FLAG, _FAST)


def _install_frozen(module: nn.Module, inner) -> None:
    """Make `module` run frozen: its forward (around `inner`, the instance forward it had), train() and DataParallel
    replication."""
    module.forward = _FrozenForward(module, inner)
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


class _FrozenForward:
    """A frozen module's ``forward`` (an instance attribute). `inner` is the instance forward it replaced, e.g. an
    accelerate hook (device_map dispatch, cpu_offload): it still runs, in place of the class's forward, and is put
    back on unfreeze. Unlike a bound method it pickles."""

    __slots__ = ("module", "inner")

    def __init__(self, module: nn.Module, inner=None):
        self.module, self.inner = module, inner

    def __call__(self, *args, **kwargs):
        return _frozen_forward(self.module, self.inner, *args, **kwargs)

    def __reduce__(self):
        return (_FrozenForward, (self.module, self.inner))


def _has_hooks(module: nn.Module, *, own: bool = False, subs: tuple | None = None) -> bool:
    """Whether running an inference copy of `module` would skip or misplace user code: an instance ``forward`` (an
    accelerate ``_hf_hook``, ...) anywhere in it, torch forward (pre-)hooks on a submodule (or, with `own`, on
    `module` itself, which a whole-prefix graph bypasses), or global forward hooks. Runs on every frozen call,
    over `subs` (``tuple(module.modules())``, kept with the module's copies) when given."""
    if _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks:
        return True
    for m in module.modules() if subs is None else subs:
        d = m.__dict__
        forward = d.get("forward")
        if isinstance(forward, _FrozenForward):
            forward = forward.inner
        if forward is not None or "_hf_hook" in d or ((own or m is not module) and (d["_forward_hooks"]
                                                                                  or d["_forward_pre_hooks"])):
            return True
    return False


def _freeze_module(module: nn.Module, fast: FastOptions | None) -> None:
    if fast is not None and fast.enabled and not _has_hooks(module):
        module.__dict__[_FAST] = _FastSlot(fast)
    else:  # hooks (device placement, offloading) must run: the module runs as it is, under no_grad
        module.__dict__.pop(_FAST, None)
    if getattr(module, _FROZEN_FLAG, False):
        return
    _install_frozen(module, module.__dict__.get("forward"))
    object.__setattr__(module, _FROZEN_FLAG, True)
    nn.Module.train(module, False)


def _thaw_module(module: nn.Module, training: bool) -> None:
    if getattr(module, _FROZEN_FLAG, False):
        forward = module.__dict__.get("forward")
        if isinstance(forward, _FrozenForward) and forward.module is module:
            if forward.inner is not None:
                module.forward = forward.inner  # the instance forward freezing replaced (an accelerate hook, ...)
            else:
                del module.__dict__["forward"]
        # else: wrapped since freezing (a hook added later): the wrapper stays, and our forward now passes through
        for attr in _FROZEN_ATTRS:
            module.__dict__.pop(attr, None)
    nn.Module.train(module, training)


def is_frozen(module: nn.Module) -> bool:
    return bool(getattr(module, _FROZEN_FLAG, False))


def apply_freeze(
    model: nn.Module,
    units: list[StageUnit],
    trainable_stages: int | str | None,
    keep_requires_grad: Iterable[str] = (),
    fast: FastOptions | None = None,
) -> FreezeState:
    """Freeze the bottom units of `model`, leaving the top `trainable_stages` units trainable.

    `fast` sets how frozen units execute (default: what the model used last, else `FastOptions()` — folded
    conv+BN, channels_last); ``FastOptions(enabled=False)`` runs them as they are, under ``no_grad``.
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
    state = FreezeState(stage_names=names, trainable_stages=n, keep_requires_grad=keep, fast=fast)
    object.__setattr__(model, "hf_transfer_freeze_state", state)
    return state


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

@dataclass(frozen=True)
class FastOptions:
    """How a frozen module executes. Defaults are exact up to float rounding.

    fold_bn: run a copy whose eval-mode BatchNorms are folded into the preceding convs.
    channels_last: run that copy in channels_last memory format.
    jit: on CPU (outside autocast), freeze the copy into an inference graph (TorchScript trace + freeze), one per
        input size (C, H, W); a module that does not trace cleanly, or whose graph does not reproduce it at
        another batch size, runs the eager copy instead.
    fuse: with `jit`, let oneDNN Graph fuse the graph's convs with their activations and residual adds (each
        new batch size compiles once, ~0.1 s); where it fuses nothing or changes the output, the graph runs
        with prepacked oneDNN convs instead (``torch.jit.optimize_for_inference``).
    compile: `torch.compile` the eager copy instead (rebuilt on every freeze change; first call compiles).
    """

    enabled: bool = True
    fold_bn: bool = True
    channels_last: bool = True
    jit: bool = True
    fuse: bool = True
    compile: bool = False


_MAX_SHAPES = 8


class _FastSlot:
    """A frozen module's inference copies (one per input signature) and the weights version they were built from."""

    __slots__ = ("options", "copies", "key", "no_graph", "subs")

    def __init__(self, options: FastOptions):
        self.options, self.copies, self.key, self.no_graph, self.subs = options, {}, None, False, None

    def __deepcopy__(self, memo):
        return _FastSlot(self.options)

    def __getstate__(self):
        return {"options": self.options}

    def __setstate__(self, state):
        self.options, self.copies, self.key, self.no_graph, self.subs = state["options"], {}, None, False, None

    def submodules(self, module: nn.Module, key: tuple) -> tuple:
        """``tuple(module.modules())``, refreshed with the weights version (a swapped submodule changes it)."""
        if self.subs is None or self.subs[0] != key:
            self.subs = (key, tuple(module.modules()))
        return self.subs[1]

    @property
    def copy(self):
        return next(iter(self.copies.values()), None)


def _version_key(module: nn.Module) -> tuple:
    return tuple((t.data_ptr(), t._version, t.dtype) for t in itertools.chain(module.parameters(), module.buffers()))


_SLOT_LOCK = threading.RLock()  # a slot is checked, reset and filled by one thread at a time


def _fast_call(module: nn.Module, x: torch.Tensor):
    slot: _FastSlot = module.__dict__[_FAST]
    key = _version_key(module)
    if _has_hooks(module, subs=slot.submodules(module, key)):  # hooked (hooks, dispatch, offloading): run as it is
        return type(module).forward(module, x)
    with _SLOT_LOCK:
        if slot.key != key:  # the stored weights changed (load_state_dict, .to(), ...): rebuild
            slot.copies, slot.key, slot.no_graph = {}, key, False
        autocast = torch.is_autocast_enabled(x.device.type) if x.device.type in ("cpu", "cuda") else False
        use_jit = (slot.options.jit and not slot.options.compile and not slot.no_graph and x.device.type == "cpu"
                   and not autocast)
        sig = (tuple(x.shape[1:]), x.dtype, x.device, autocast) if use_jit else (x.dtype, x.device, autocast)
        fn = slot.copies.get(sig)
        if fn is None:
            if len(slot.copies) >= _MAX_SHAPES:
                slot.copies.clear()
            fn = build_inference_copy(module, x, slot.options, use_jit=use_jit)
            if use_jit and not is_inference_graph(fn):  # it won't trace: stay eager for all sizes
                slot.no_graph = True
                sig = (x.dtype, x.device, autocast)
            slot.copies[sig] = fn
    if slot.options.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return fn(x)


_PREFIX = "_hf_transfer_prefix"


class _PrefixCache:
    """Whole-prefix inference graphs for the last few input signatures; not copied or pickled (rebuilt on first use).

    `entry` is ``(base, graphs)``: `base` names the modules, their weights and their `FastOptions`, `graphs` maps an
    input signature (C, H, W, dtype) to its graph (None: that prefix runs per module). The entry is only ever replaced
    whole, so a reader that takes it once sees a consistent pair; builds run under `lock`.
    """

    __slots__ = ("entry", "last", "lock")

    def __init__(self):
        self.entry: tuple = (None, {})
        self.last: tuple = (None, None)  # (key, graph) of the latest call, for inspection
        self.lock = threading.Lock()

    @property
    def key(self):
        return self.last[0]

    @property
    def graph(self):
        return self.last[1]

    def __deepcopy__(self, memo):
        return _PrefixCache()

    def __reduce__(self):
        return (_PrefixCache, ())

    def get(self, base: tuple, sig: tuple, build):
        """The graph for (`base`, `sig`), from `build()` (once, under the lock) if it is not cached."""
        cached_base, graphs = self.entry
        graph = graphs.get(sig, _MISSING) if cached_base == base else _MISSING
        if graph is _MISSING:
            with self.lock:
                cached_base, graphs = self.entry
                graphs = graphs if cached_base == base else {}  # new modules, weights or options: drop the old graphs
                graph = graphs.get(sig, _MISSING)
                if graph is _MISSING:
                    graph = build()
                    graphs = {**graphs, sig: graph} if len(graphs) < _MAX_SHAPES else {sig: graph}
                    self.entry = (base, graphs)
        self.last = (base + sig, graph)
        return graph


_MISSING = object()


def run_frozen_prefix(owner: nn.Module, modules: list[nn.Module], x: torch.Tensor):
    """Run the frozen modules `modules` (in order) as ONE inference graph; None when that does not apply.

    Applies on CPU, outside autocast, for inputs that need no gradient, when every module is frozen with the
    TorchScript option on: one graph for the whole prefix avoids a layout conversion and a Python call per
    module. Graphs are cached on `owner`, one per input size (the last few), and rebuilt when the modules, their
    weights or their `FastOptions` change.
    """
    if not modules or x.device.type != "cpu" or torch.is_autocast_enabled("cpu") or x.requires_grad:
        return None
    slots = [m.__dict__.get(_FAST) for m in modules]
    if any(s is None or not s.options.jit or s.options.compile or not s.options.channels_last or s.no_graph
           for s in slots):
        return None
    keys = tuple(_version_key(m) for m in modules)
    if any(_has_hooks(m, own=True, subs=s.submodules(m, k)) for m, s, k in zip(modules, slots, keys)):
        return None  # one graph would skip the hooks: per-module path
    base = (tuple(id(m) for m in modules), keys, tuple(s.options for s in slots))
    cache = owner.__dict__.get(_PREFIX) or owner.__dict__.setdefault(_PREFIX, _PrefixCache())
    graph = cache.get(base, (tuple(x.shape[1:]), x.dtype), lambda: _build_prefix_graph(modules, x, slots[0].options))
    if graph is None:
        return None
    with torch.no_grad():
        out = graph(x.contiguous(memory_format=torch.channels_last))
    # the trainable stages that follow run faster on channels_last input (the graph hands back NCHW)
    return out.contiguous(memory_format=torch.channels_last) if out.dim() == 4 else out


def _build_prefix_graph(modules: list[nn.Module], x: torch.Tensor, options: FastOptions):
    graph = build_inference_copy(nn.Sequential(*modules), x, options, use_jit=True)
    return graph if is_inference_graph(graph) else None  # else: per-module copies


def clear_inference_copies(model: nn.Module) -> None:
    """Drop every cached inference copy and prefix graph of `model`'s frozen modules; they rebuild on the next call.

    Copies follow weight changes made through autograd-visible ops (``load_state_dict``, ``.to()``, in-place ops
    under ``no_grad``), which bump the tensor's version counter. Writes through ``.data`` (``p.data.copy_(...)``,
    old-style EMA updates) leave no trace on the parameter: call this after them, or the copies keep the old weights.
    """
    for m in model.modules():
        slot = m.__dict__.get(_FAST)
        if slot is not None:
            slot.copies, slot.key, slot.no_graph = {}, None, False
        m.__dict__.pop(_PREFIX, None)


def _plain_copy(module: nn.Module) -> nn.Module:
    clone = copy.deepcopy(module)
    for m in clone.modules():
        for attr in ("forward", *_FROZEN_ATTRS):
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
    probe = x[:2]  # per-sample ops: a couple of samples are enough to build and check the copy
    # checked at another batch size than the probe's, so a graph that baked the batch size in is caught
    check = x[:3] if len(x) >= 3 else torch.cat([x, x[:1]])
    with torch.no_grad():
        plain = _plain_copy(module)  # a copy without frozen-module hooks: the plain computation
        reference = plain(probe)
        clone = _plain_copy(module)
        if options.fold_bn:
            folded = 0
            for conv_name, bn_name in _conv_bn_pairs(clone, probe):
                conv, bn = clone.get_submodule(conv_name), clone.get_submodule(bn_name)
                if conv.out_channels == bn.num_features and bn.track_running_stats:
                    fold_conv_bn(conv, bn)
                    _replace(clone, bn_name, nn.Identity())
                    folded += 1
            if folded and not _close(clone(probe), reference):
                logger.debug("BN folding changed %s's output; running it unfolded.", type(module).__name__)
                clone = _plain_copy(module)
        if options.channels_last and x.dim() == 4:
            clone = clone.to(memory_format=torch.channels_last)
            probe = probe.contiguous(memory_format=torch.channels_last)
            check = check.contiguous(memory_format=torch.channels_last)
        if options.compile:
            return torch.compile(clone, dynamic=True)
        if use_jit:
            # checked at a batch size other than the traced one: the graph must not have baked it in
            graph = _freeze_graph(clone, probe, check, plain(check), fuse=options.fuse)
            if isinstance(graph, OneDNNGraph):
                graph.reference = _Unhooked(module)  # checks each new batch size; the fallback if it ever fails
            if graph is not None:
                return graph
    return clone


class _Unhooked:
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


class OneDNNGraph:
    """A frozen TorchScript graph that runs with oneDNN Graph fusion on.

    torch's fusion switch is process-wide: it is turned on for the call only, under a lock, and the caller's setting
    restored after it. oneDNN compiles kernels for each new batch size, so the first calls at a new size are checked
    against `reference` (the plain computation); a mismatch or an error there logs a warning and from then on this
    graph runs `reference` instead — never silently wrong features.
    """

    __slots__ = ("module", "reference", "checked", "failed")
    WARMUP = 3  # profiling runs before the executor's optimised (fused) plan for a new input shape is in use

    def __init__(self, module: torch.jit.ScriptModule, reference=None):
        self.module, self.reference, self.checked, self.failed = module, reference, {}, False

    def __call__(self, x: torch.Tensor):
        if self.failed:
            return self.reference(x)
        n = len(x)
        if self.reference is None or self.checked.get(n, 0) >= self.WARMUP:
            return self._run(x)
        try:
            out = self._run(x)
        except Exception as err:  # a kernel oneDNN could not compile for this batch size
            return self._fail(x, f"raised {type(err).__name__}: {err}")
        expected = self.reference(x)
        if not _close(out, expected):
            return self._fail(x, "does not reproduce the module")
        self.checked[n] = self.checked.get(n, 0) + 1
        return out

    def _run(self, x: torch.Tensor):
        with _onednn_fusion():
            return self.module(x)

    def _fail(self, x: torch.Tensor, why: str):
        logger.warning("A oneDNN-fused frozen graph %s at batch size %d; running the plain frozen module instead "
                       "(slower, same results).", why, len(x))
        self.failed = True
        return self.reference(x)

    @property
    def graph(self):
        return self.module.graph


_FUSION_LOCK = threading.RLock()


@contextlib.contextmanager
def _onednn_fusion():
    with _FUSION_LOCK:
        previous = torch.jit.onednn_fusion_enabled()
        torch.jit.enable_onednn_fusion(True)
        try:
            yield
        finally:
            torch.jit.enable_onednn_fusion(previous)


def is_inference_graph(fn) -> bool:
    """Whether `fn` (an inference copy) is a frozen graph rather than an eager module."""
    return isinstance(fn, (torch.jit.ScriptModule, OneDNNGraph))


def _fuses(graph: OneDNNGraph, x: torch.Tensor) -> bool:
    """Run `graph` until the profiling executor has optimised it for `x`; True if oneDNN fused part of it."""
    for _ in range(3):
        graph(x)
        try:
            optimized = str(torch._C._last_executed_optimized_graph())
        except (AttributeError, RuntimeError):  # pragma: no cover - torch without the debug hook
            return False
        if "oneDNNFusionGroup" in optimized:
            return True
    return False


def _freeze_graph(module: nn.Module, x: torch.Tensor, check: torch.Tensor, expected: torch.Tensor,
                  fuse: bool = True):
    """TorchScript-trace `module` on `x` and freeze it into an inference graph that reproduces `expected` on `check`
    (oneDNN-fused when `fuse` and it fuses, else with prepacked convs); None if that can't be done cleanly."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            traced = torch.jit.trace(module, x, check_trace=False).eval()
        if any(issubclass(w.category, torch.jit.TracerWarning) for w in caught):
            return None  # Python control flow on tensor values: a trace could be wrong for other inputs
    except Exception as err:  # pragma: no cover - depends on the module
        logger.debug("Could not trace %s (%s); running it eagerly.", type(module).__name__, err)
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice, once per graph
        warnings.simplefilter("ignore", DeprecationWarning)
        if fuse:
            try:
                fused = OneDNNGraph(torch.jit.freeze(traced))
                if _fuses(fused, check) and _close(fused(check), expected):
                    return fused
            except Exception as err:  # pragma: no cover - depends on the module and the oneDNN build
                logger.debug("oneDNN Graph could not fuse %s (%s).", type(module).__name__, err)
        try:
            graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            return graph if _close(graph(check), expected) else None
        except Exception as err:  # pragma: no cover - depends on the module
            logger.debug("Could not freeze %s into an inference graph (%s); running it eagerly.",
                         type(module).__name__, err)
            return None


def _close(a, b) -> bool:
    """Equal up to float rounding of the dtype involved."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return False
        low = {a.dtype, b.dtype} & {torch.float16, torch.bfloat16}
        rtol = 3e-2 if low else 1e-4
        scale = float(b.float().abs().max()) if b.numel() else 1.0
        return bool(torch.allclose(a.float(), b.float(), rtol=rtol, atol=rtol * 0.1 * max(scale, 1.0)))
    return False


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)
