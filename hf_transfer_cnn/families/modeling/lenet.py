"""LeNet-5 as a transformers model: a from-scratch baseline for small grayscale images (28 or 32 px).

Layout (LeCun et al., 1998, with full C3 connectivity as in every modern re-implementation):
C1 conv 5x5 -> 6, S2 pool, C3 conv 5x5 -> 16, S4 pool, C5 conv 5x5 -> 120, F6 Linear 120 -> 84, output Linear.
For 28-px inputs C1 pads by 2 (the classic MNIST setting), so both sizes reach C5 with a 1x1 map.

This module is self-contained (it imports only torch and transformers): ``save_pretrained`` copies it next to the
weights, so a checkpoint also loads with ``trust_remote_code=True`` where hf-transfer-cnn is not installed.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutput

__all__ = ["LeNet5Config", "LeNet5Model", "LeNet5ForImageClassification", "LeNet5PreTrainedModel"]

_MODULE = __name__.rsplit(".", 1)[-1]
_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
_POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


class LeNet5Config(PreTrainedConfig):
    """LeNet-5 configuration.

    Args:
        num_channels: input channels (1 = grayscale).
        image_size: input size the network is built for (28 or 32; larger inputs are average-pooled after C5).
        conv1_padding: padding of C1; ``None`` = 2 for inputs under 32 px, else 0 (stored once chosen, so a
            later change of `image_size` does not change the network).
        activation: "tanh" (original) or "relu".
        pooling: subsampling layers S2/S4: "avg" (original) or "max".
        hidden_size: width of F6 (84 in the paper).
    """

    model_type = "lenet5"

    num_channels: int = 1
    image_size: int = 32
    conv1_padding: int | None = None
    activation: str = "tanh"
    pooling: str = "avg"
    hidden_size: int = 84

    def __post_init__(self, **kwargs):
        if self.id2label is None and kwargs.get("num_labels") is None:
            kwargs["num_labels"] = 10
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}; use one of {sorted(_ACTIVATIONS)}.")
        if self.pooling not in _POOLS:
            raise ValueError(f"pooling={self.pooling!r}; use one of {sorted(_POOLS)}.")
        if self.conv1_padding is None:
            self.conv1_padding = 2 if self.image_size < 32 else 0
        if self.image_size + 2 * self.conv1_padding < 32:
            raise ValueError(f"image_size={self.image_size} with conv1_padding={self.conv1_padding} is too small for "
                             "LeNet-5: image_size + 2 * conv1_padding must be at least 32.")
        super().__post_init__(**kwargs)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = {"AutoConfig": f"{_MODULE}.LeNet5Config", "AutoModel": f"{_MODULE}.LeNet5Model",
                             "AutoModelForImageClassification": f"{_MODULE}.LeNet5ForImageClassification"}


class LeNet5PreTrainedModel(PreTrainedModel):
    config: LeNet5Config
    config_class = LeNet5Config
    base_model_prefix = "lenet5"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's default initialisation for Conv2d / Linear.
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)


class LeNet5Model(LeNet5PreTrainedModel):
    """C1-S2 (``stem``), C3-S4 and C5 (``stages``), then global average pooling of the C5 map."""

    def __init__(self, config: LeNet5Config):
        super().__init__(config)
        act, pool = _ACTIVATIONS[config.activation], _POOLS[config.pooling]
        self.stem = nn.Sequential(nn.Conv2d(config.num_channels, 6, 5, padding=config.conv1_padding), act(), pool(2))
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(6, 16, 5), act(), pool(2)),
            nn.Sequential(nn.Conv2d(16, 120, 5), act()),
        ])
        self.pooler = nn.AdaptiveAvgPool2d(1)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        x = self.stem(pixel_values)
        hidden = [x]
        for stage in self.stages:
            x = stage(x)
            hidden.append(x)
        pooled = self.pooler(x)
        hidden_states = tuple(hidden) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (x, pooled, hidden_states) if v is not None)
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state=x, pooler_output=pooled,
                                                        hidden_states=hidden_states)


class LeNet5ForImageClassification(LeNet5PreTrainedModel):
    """LeNet-5 with its classifier: F6 (Linear + activation) and the output Linear."""

    def __init__(self, config: LeNet5Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.lenet5 = LeNet5Model(config)
        self.classifier = nn.Sequential(nn.Linear(120, config.hidden_size), _ACTIVATIONS[config.activation](),
                                        nn.Linear(config.hidden_size, config.num_labels))
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                **kwargs) -> ImageClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        out = self.lenet5(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(out.pooler_output.flatten(1))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        if not return_dict:
            rest = (logits,) + ((out.hidden_states,) if out.hidden_states is not None else ())
            return ((loss,) + rest) if loss is not None else rest
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
