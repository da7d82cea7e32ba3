"""`FastOptions`: how a frozen module executes."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FastOptions", "FROZEN_FLAG", "FAST_ATTR", "FROZEN_ATTRS"]

FROZEN_FLAG = "_hf_transfer_frozen"
FAST_ATTR = "_hf_transfer_fast"
# what freezing sets on a module's instance dict besides `forward` (removed on thaw and from inference copies)
FROZEN_ATTRS = ("train", "_replicate_for_data_parallel", FROZEN_FLAG, FAST_ATTR)


@dataclass(frozen=True)
class FastOptions:
    """How a frozen module executes. Defaults are exact up to float rounding, eager, and cheap to build (tens of
    milliseconds per module, once per dtype/device/autocast; no per-input-size builds).

    enabled: False runs frozen modules as they are (under no_grad, BatchNorm in eval): the off switch.
    fold_bn: run a copy whose eval-mode BatchNorms are folded into the preceding convs.
    channels_last: run that copy in channels_last memory format.
    jit: opt-in, deprecated by PyTorch: on CPU (outside autocast), freeze the copy into a TorchScript inference
        graph, one per input size (C, H, W), each built on first use (~0.1-1 s); the frozen prefix then runs as one
        graph. A module that does not trace cleanly runs the eager copy.
    fuse: fuse each conv with the activation module that consumes it into one oneDNN call (CPU, float32; the
        kernel Inductor's CPU freezing emits); with `jit`, let oneDNN Graph fuse the TorchScript graph instead.
    compile: opt-in: `torch.compile` the eager copy, compiled and verified when built (seconds on CPU; rebuilt on
        every freeze change). Pays off on long runs only.
    """

    enabled: bool = True
    fold_bn: bool = True
    channels_last: bool = True
    jit: bool = False
    fuse: bool = True
    compile: bool = False
