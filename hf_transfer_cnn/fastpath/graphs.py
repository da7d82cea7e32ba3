"""TorchScript inference graphs (trace + freeze, optionally oneDNN-fused) of frozen modules; opt-in on CPU."""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["OneDNNGraph", "freeze_graph", "is_inference_graph", "outputs_close"]


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
        if not outputs_close(out, expected):
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


def freeze_graph(module: nn.Module, x: torch.Tensor, check: torch.Tensor, expected: torch.Tensor,
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
                if _fuses(fused, check) and outputs_close(fused(check), expected):
                    return fused
            except Exception as err:  # pragma: no cover - depends on the module and the oneDNN build
                logger.debug("oneDNN Graph could not fuse %s (%s).", type(module).__name__, err)
        try:
            graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            return graph if outputs_close(graph(check), expected) else None
        except Exception as err:  # pragma: no cover - depends on the module
            logger.debug("Could not freeze %s into an inference graph (%s); running it eagerly.",
                         type(module).__name__, err)
            return None


def outputs_close(a, b) -> bool:
    """Equal up to float rounding of the dtype involved."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return False
        low = {a.dtype, b.dtype} & {torch.float16, torch.bfloat16}
        rtol = 3e-2 if low else 1e-4
        scale = float(b.float().abs().max()) if b.numel() else 1.0
        return bool(torch.allclose(a.float(), b.float(), rtol=rtol, atol=rtol * 0.1 * max(scale, 1.0)))
    return False
