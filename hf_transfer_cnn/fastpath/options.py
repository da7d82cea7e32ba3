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
