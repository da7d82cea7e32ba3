"""Input-channel adaptation: the rule that maps a stem kernel to another number of input channels."""

from __future__ import annotations

import torch

__all__ = ["adapt_conv_weight", "adapter_weight"]


def adapt_conv_weight(weight: torch.Tensor, num_channels: int) -> torch.Tensor:
    """Map a stem kernel ``[out, in, kh, kw]`` to `num_channels` inputs.

    Channels are read as this package lays them out: the first three are RGB (the first one is gray when there
    are fewer than 3), any further ones are extra channels. Rule for the colour part: RGB -> gray sums the three
    kernels (a gray tensor then gives exactly the response of that tensor replicated to RGB); gray -> RGB splits
    the kernel evenly over R, G and B (an RGB image gets the gray model's response to its channel mean). Extra
    channels keep their kernels in order where both sides have them; new ones start at zero (the model ignores
    them until the stem trains), surplus ones are dropped.
    """
    out_c, in_c = weight.shape[:2]
    if num_channels < 1:
        raise ValueError(f"num_channels={num_channels}; it must be at least 1.")
    if num_channels == in_c:
        return weight.clone()
    base_in, base_out = (1 if in_c < 3 else 3), (1 if num_channels < 3 else 3)
    new = weight.new_zeros((out_c, num_channels, *weight.shape[2:]))
    colour = weight[:, :base_in]
    if base_in == base_out:
        new[:, :base_out] = colour
    elif base_out == 1:
        new[:, :1] = colour.sum(dim=1, keepdim=True)
    else:
        new[:, :3] = colour / 3
    extra = min(in_c - base_in, num_channels - base_out)
    if extra > 0:
        new[:, base_out:base_out + extra] = weight[:, base_in:base_in + extra]
    return new


def adapter_weight(in_channels: int, out_channels: int, dtype, device) -> torch.Tensor:
    """A 1×1 conv realising `adapt_conv_weight`'s rule in front of a conv whose weights can't absorb it."""
    eye = torch.eye(out_channels, dtype=dtype, device=device)[:, :, None, None]
    return adapt_conv_weight(eye, in_channels)
