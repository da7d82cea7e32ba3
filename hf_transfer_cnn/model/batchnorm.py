"""BatchNorm momentum written in TensorFlow's convention, found and converted to PyTorch's."""

from __future__ import annotations

import logging

from torch import nn

from .meta import TransferMeta

logger = logging.getLogger(__name__)

__all__ = ["tf_style_batchnorms", "fix_tf_bn_momentum"]


def tf_style_batchnorms(module: nn.Module) -> list[nn.Module]:
    """BatchNorm layers of `module` whose momentum is in TensorFlow's decay convention (> 0.5)."""
    return [m for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None and m.momentum > 0.5]


def fix_tf_bn_momentum(model: nn.Module, momentum: float | None = None) -> int:
    """Convert BatchNorm momentum written in TensorFlow's convention to PyTorch's; returns how many were changed.

    transformers' MobileNet/EfficientNet ports build BatchNorm with momentum 0.997 / 0.99 — TensorFlow's *decay*.
    PyTorch's momentum is the weight of the new batch, so there the running statistics would follow the last batch
    whenever such a layer trains. For TensorFlow-trained checkpoints 1 - momentum is the average their authors
    meant; weights trained in PyTorch (torchvision's, converted) train with `momentum` instead — by default the one
    `convert_torchvision` recorded in the model's config (0.1), if any.
    """
    if momentum is None:
        config = getattr(model, "config", None)
        momentum = TransferMeta.of(config).batch_norm_momentum if config is not None else None
    layers = tf_style_batchnorms(model)
    for m in layers:
        m.momentum = round(1.0 - m.momentum, 6) if momentum is None else float(momentum)
    changed = len(layers)
    if changed:
        logger.info("BatchNorm momentum of %d layers converted from TensorFlow's convention (%s).", changed,
                    "x -> 1 - x" if momentum is None else f"-> {momentum:g}, the weights' own")
    return changed
