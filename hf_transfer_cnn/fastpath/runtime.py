"""The fast path at run time: a frozen module's inference copies (one per input signature), rebuilt when its
weights change, bypassed while hooks must run; and whole-prefix graphs for a chain of frozen modules."""

from __future__ import annotations

import itertools
import logging
import threading
import time

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

logger = logging.getLogger(__name__)

from .copies import build_inference_copy
from .graphs import is_inference_graph
from .options import FAST_ATTR, FROZEN_ATTRS, FROZEN_FLAG, FastOptions

__all__ = ["FAST_ATTR", "PREFIX_ATTR", "FROZEN_FLAG", "FROZEN_ATTRS", "FrozenForward", "FastSlot", "fast_call",
           "has_hooks", "run_frozen_prefix", "clear_inference_copies"]



class FrozenForward:
    """A frozen module's ``forward`` (an instance attribute): calls `fn(module, inner, *args)`. `inner` is the
    instance forward it replaced, e.g. an accelerate hook (device_map dispatch, cpu_offload): it still runs, in place
    of the class's forward, and is put back on unfreeze. Unlike a bound method it pickles."""

    __slots__ = ("fn", "module", "inner")

    def __init__(self, fn, module: nn.Module, inner=None):
        self.fn, self.module, self.inner = fn, module, inner

    def __call__(self, *args, **kwargs):
        return self.fn(self.module, self.inner, *args, **kwargs)

    def __reduce__(self):
        return (FrozenForward, (self.fn, self.module, self.inner))


def has_hooks(module: nn.Module, *, own: bool = False, subs: tuple | None = None) -> bool:
    """Whether running an inference copy of `module` would skip or misplace user code: an instance ``forward`` (an
    accelerate ``_hf_hook``, ...) anywhere in it, torch forward (pre-)hooks on a submodule (or, with `own`, on
    `module` itself, which a whole-prefix graph bypasses), or global forward hooks. Runs on every frozen call,
    over `subs` (``tuple(module.modules())``, kept with the module's copies) when given."""
    if _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks:
        return True
    for m in module.modules() if subs is None else subs:
        d = m.__dict__
        forward = d.get("forward")
        if isinstance(forward, FrozenForward):
            forward = forward.inner
        if forward is not None or "_hf_hook" in d or ((own or m is not module) and (d["_forward_hooks"]
                                                                                  or d["_forward_pre_hooks"])):
            return True
    return False


MAX_SHAPES = 8
"""Input signatures a frozen module (or prefix) keeps compiled copies for; a new one beyond it starts afresh."""


class FastSlot:
    """A frozen module's inference copies (one per input signature) and the weights version they were built from."""

    __slots__ = ("options", "copies", "key", "no_graph", "subs")

    def __init__(self, options: FastOptions):
        self.options, self.copies, self.key, self.no_graph, self.subs = options, {}, None, False, None

    def __deepcopy__(self, memo):
        return FastSlot(self.options)

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


def fast_call(module: nn.Module, x: torch.Tensor):
    slot: FastSlot = module.__dict__[FAST_ATTR]
    key = _version_key(module)
    if has_hooks(module, subs=slot.submodules(module, key)):  # hooked (hooks, dispatch, offloading): run as it is
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
            if len(slot.copies) >= MAX_SHAPES:
                slot.copies.clear()
            fn = _timed_build(module, x, lambda: build_inference_copy(module, x, slot.options, use_jit=use_jit))
            if use_jit and not is_inference_graph(fn):  # it won't trace: stay eager for all sizes
                slot.no_graph = True
                sig = (x.dtype, x.device, autocast)
            slot.copies[sig] = fn
    if slot.options.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return fn(x)


SLOW_BUILD_S = 1.0
"""A build of a fast copy that takes longer than this logs one INFO line with its duration."""


def _timed_build(module: nn.Module, x: torch.Tensor, build):
    started = time.perf_counter()
    fn = build()
    took = time.perf_counter() - started
    if took > SLOW_BUILD_S:
        logger.info("Fast path: built the frozen %s's %s for input %s in %.1f s.", type(module).__name__,
                    "graph" if is_inference_graph(fn) else "inference copy", tuple(x.shape[1:]), took)
    return fn


PREFIX_ATTR = "_hf_transfer_prefix"


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
                    graphs = {**graphs, sig: graph} if len(graphs) < MAX_SHAPES else {sig: graph}
                    self.entry = (base, graphs)
        self.last = (base + sig, graph)
        return graph


_MISSING = object()


def run_frozen_prefix(owner: nn.Module, modules: list[nn.Module], x: torch.Tensor):
    """Run the frozen modules `modules` (in order) as ONE inference graph; None when that does not apply.

    Applies on CPU, outside autocast, for inputs that need no gradient, when every module is frozen with the
    (opt-in) TorchScript option on: one graph for the whole prefix avoids a layout conversion and a Python call per
    module. Graphs are cached on `owner`, one per input size (the last few), and rebuilt when the modules, their
    weights or their `FastOptions` change.
    """
    if not modules or x.device.type != "cpu" or torch.is_autocast_enabled("cpu") or x.requires_grad:
        return None
    slots = [m.__dict__.get(FAST_ATTR) for m in modules]
    if any(s is None or not s.options.jit or s.options.compile or not s.options.channels_last or s.no_graph
           for s in slots):
        return None
    keys = tuple(_version_key(m) for m in modules)
    if any(has_hooks(m, own=True, subs=s.submodules(m, k)) for m, s, k in zip(modules, slots, keys)):
        return None  # one graph would skip the hooks: per-module path
    base = (tuple(id(m) for m in modules), keys, tuple(s.options for s in slots))
    cache = owner.__dict__.get(PREFIX_ATTR) or owner.__dict__.setdefault(PREFIX_ATTR, _PrefixCache())
    graph = cache.get(base, (tuple(x.shape[1:]), x.dtype), lambda: _build_prefix_graph(modules, x, slots[0].options))
    if graph is None:
        return None
    with torch.no_grad():
        out = graph(x.contiguous(memory_format=torch.channels_last))
    # the trainable stages that follow run faster on channels_last input (the graph hands back NCHW)
    return out.contiguous(memory_format=torch.channels_last) if out.dim() == 4 else out


def _build_prefix_graph(modules: list[nn.Module], x: torch.Tensor, options: FastOptions):
    seq = nn.Sequential(*modules)
    graph = _timed_build(seq, x, lambda: build_inference_copy(seq, x, options, use_jit=True))
    return graph if is_inference_graph(graph) else None  # else: per-module copies


def clear_inference_copies(model: nn.Module) -> None:
    """Drop every cached inference copy and prefix graph of `model`'s frozen modules; they rebuild on the next call.

    Copies follow weight changes made through autograd-visible ops (``load_state_dict``, ``.to()``, in-place ops
    under ``no_grad``), which bump the tensor's version counter. Writes through ``.data`` (``p.data.copy_(...)``,
    old-style EMA updates) leave no trace on the parameter: call this after them, or the copies keep the old weights.
    """
    for m in model.modules():
        slot = m.__dict__.get(FAST_ATTR)
        if slot is not None:
            slot.copies, slot.key, slot.no_graph = {}, None, False
        m.__dict__.pop(PREFIX_ATTR, None)
