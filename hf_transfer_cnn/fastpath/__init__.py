"""How frozen stages execute: inference copies (BN folded, convs fused with their activations, channels_last)
verified against the plain module, with an automatic fallback; one interface (`fast_call`, `run_frozen_prefix`)
whatever builds them. TorchScript graphs and `torch.compile` are opt-in (`FastOptions`)."""

from .copies import build_inference_copy
from .fusion import FusedConvAct, fold_conv_bn
from .graphs import OneDNNGraph, is_inference_graph
from .options import FastOptions
from .runtime import (FAST_ATTR, FROZEN_ATTRS, FROZEN_FLAG, PREFIX_ATTR, FastSlot, FrozenForward,
                      clear_inference_copies, fast_call, has_hooks, run_frozen_prefix)

__all__ = ["FastOptions", "build_inference_copy", "fold_conv_bn", "FusedConvAct", "OneDNNGraph", "is_inference_graph",
           "FAST_ATTR",
           "FROZEN_ATTRS", "FROZEN_FLAG", "PREFIX_ATTR", "FastSlot", "FrozenForward", "clear_inference_copies",
           "fast_call", "has_hooks", "run_frozen_prefix"]
