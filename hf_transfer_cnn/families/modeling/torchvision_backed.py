"""AlexNet, VGG and GoogLeNet as transformers models, built on torchvision's own implementations.

Each ``*ForImageClassification`` holds the torchvision network itself (``model.alexnet``, ``model.vgg``,
``model.googlenet``) and runs its forward; only what transformers needs is added: a config, weight initialisation
(torchvision's scheme for each family) and the input-channel option. Two deliberate differences from torchvision:

* VGG's ``features`` is grouped into one ``nn.Sequential`` per pooling block (``features.<block>.<layer>``), so
  that the blocks — the network's stages — have the same paths for every depth. The layers and their order are
  torchvision's (``torchvision.models.vgg.make_layers``).
* GoogLeNet's ``transform_input`` (the published weights expect ``(x - 0.5) / 0.5`` scaling and torchvision
  converts ImageNet-normalised input to it) runs as a separate parameter-free module, ``model.input_transform``,
  in front of the network, so that stage-wise forwards apply it too. A channel-adapted model keeps it: gray
  input is mapped to the same scaling, channels beyond RGB pass unchanged.
  The auxiliary classifiers (``aux_logits``) run in training mode only, as in torchvision; their loss is added
  with weight ``aux_loss_weight`` when they predict the same label set as the main classifier.

This module is self-contained (torch, torchvision and transformers only): ``save_pretrained`` copies it next to
the weights, so a checkpoint also loads with ``trust_remote_code=True`` where hf-transfer-cnn is not installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torchvision.models.vgg import cfgs as _VGG_CFGS
from torchvision.models.vgg import make_layers as _vgg_make_layers
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput

__all__ = ["AlexNetConfig", "AlexNetForImageClassification", "VGGConfig", "VGGForImageClassification",
           "GoogLeNetConfig", "GoogLeNetForImageClassification", "GoogLeNetInputTransform",
           "GoogLeNetImageClassifierOutput", "VGG_DEPTHS"]

_MODULE = __name__.rsplit(".", 1)[-1]
VGG_DEPTHS = {11: "A", 13: "B", 16: "D", 19: "E"}


def _auto_map(config: PreTrainedConfig, model_class: str) -> None:
    if getattr(config, "auto_map", None) is None:
        config.auto_map = {"AutoConfig": f"{_MODULE}.{type(config).__name__}",
                           "AutoModelForImageClassification": f"{_MODULE}.{model_class}"}


def _with_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """`conv` rebuilt for `in_channels` inputs (same hyper-parameters); `conv` itself if nothing changes."""
    if conv.in_channels == in_channels:
        return conv
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None)


def _check_channels(num_channels: int) -> None:
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
        raise ValueError(f"num_channels={num_channels!r}; use a positive integer (1 = grayscale, 3 = RGB).")


def _torch_default_init(module: nn.Module) -> None:
    # PyTorch's own Conv2d / Linear initialisation (what torchvision's AlexNet uses).
    init.kaiming_uniform_(module.weight, a=math.sqrt(5))
    if module.bias is not None:
        bound = 1 / math.sqrt(module.weight[0].numel())
        init.uniform_(module.bias, -bound, bound)


class _TorchvisionPreTrainedModel(PreTrainedModel):
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_conv_linear(self, module: nn.Module) -> None:
        raise NotImplementedError

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            self._init_conv_linear(module)
        else:
            super()._init_weights(module)  # BatchNorm: weight 1, bias 0, running stats reset (as torchvision)

    def _classify(self, logits: torch.Tensor, labels: torch.Tensor | None, return_dict: bool | None):
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return ImageClassifierOutput(loss=loss, logits=logits)


# --- AlexNet ------------------------------------------------------------------------------------------------

class AlexNetConfig(PreTrainedConfig):
    """AlexNet (torchvision's single-GPU variant). `image_size` is informational: adaptive pooling takes >= 63 px."""

    model_type = "alexnet"

    num_channels: int = 3
    image_size: int = 224
    dropout: float = 0.5

    def __post_init__(self, **kwargs):
        _check_channels(self.num_channels)
        super().__post_init__(**kwargs)
        _auto_map(self, "AlexNetForImageClassification")


class AlexNetForImageClassification(_TorchvisionPreTrainedModel):
    config_class = AlexNetConfig
    base_model_prefix = "alexnet"

    def __init__(self, config: AlexNetConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.alexnet = torchvision.models.AlexNet(num_classes=config.num_labels, dropout=config.dropout)
        self.alexnet.features[0] = _with_in_channels(self.alexnet.features[0], config.num_channels)
        self.post_init()

    def _init_conv_linear(self, module: nn.Module) -> None:
        _torch_default_init(module)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs) -> ImageClassifierOutput | tuple:
        return self._classify(self.alexnet(pixel_values), labels, return_dict)


# --- VGG ------------------------------------------------------------------------------------------------------

class VGGConfig(PreTrainedConfig):
    """VGG-11/13/16/19 (configurations A/B/D/E), with or without batch norm."""

    model_type = "vgg"

    depth: int = 16
    batch_norm: bool = False
    num_channels: int = 3
    image_size: int = 224
    dropout: float = 0.5

    def __post_init__(self, **kwargs):
        if self.depth not in VGG_DEPTHS:
            raise ValueError(f"VGG depth={self.depth!r}; use one of {sorted(VGG_DEPTHS)}.")
        _check_channels(self.num_channels)
        super().__post_init__(**kwargs)
        _auto_map(self, "VGGForImageClassification")


def _vgg_blocks(flat: nn.Sequential) -> nn.Sequential:
    """torchvision's flat ``features`` regrouped into one Sequential per block (each ends with its max-pool)."""
    blocks, current = [], []
    for layer in flat:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(nn.Sequential(*current))
            current = []
    if current:
        blocks.append(nn.Sequential(*current))
    return nn.Sequential(*blocks)


class VGGForImageClassification(_TorchvisionPreTrainedModel):
    config_class = VGGConfig
    base_model_prefix = "vgg"

    def __init__(self, config: VGGConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        features = _vgg_blocks(_vgg_make_layers(_VGG_CFGS[VGG_DEPTHS[config.depth]], batch_norm=config.batch_norm))
        features[0][0] = _with_in_channels(features[0][0], config.num_channels)
        self.vgg = torchvision.models.VGG(features, num_classes=config.num_labels, init_weights=False,
                                          dropout=config.dropout)
        self.post_init()

    def _init_conv_linear(self, module: nn.Module) -> None:
        # torchvision's VGG scheme
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        else:
            init.normal_(module.weight, 0, 0.01)
        if module.bias is not None:
            init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs) -> ImageClassifierOutput | tuple:
        return self._classify(self.vgg(pixel_values), labels, return_dict)


# --- GoogLeNet ------------------------------------------------------------------------------------------------

class GoogLeNetConfig(PreTrainedConfig):
    """GoogLeNet (Inception v1).

    Args:
        aux_logits: build the two auxiliary classifiers (used in training only).
        aux_num_labels: outputs of the auxiliary classifiers; fixed when the config is created (defaults to
            `num_labels`), so a checkpoint whose main classifier was replaced still loads.
        transform_input: the weights expect torchvision's input transform (True for its published weights).
        aux_loss_weight: weight of each auxiliary loss in training (0.3, as in the paper).
    """

    model_type = "googlenet"

    num_channels: int = 3
    image_size: int = 224
    aux_logits: bool = False
    aux_num_labels: int | None = None
    transform_input: bool = False
    dropout: float = 0.2
    dropout_aux: float = 0.7
    aux_loss_weight: float = 0.3

    def __post_init__(self, **kwargs):
        _check_channels(self.num_channels)
        super().__post_init__(**kwargs)
        if self.aux_logits and self.aux_num_labels is None:
            self.aux_num_labels = self.num_labels
        _auto_map(self, "GoogLeNetForImageClassification")


_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics torchvision's GoogLeNet input transform undoes
_IMAGENET_STD = (0.229, 0.224, 0.225)


class GoogLeNetInputTransform(nn.Module):
    """torchvision's GoogLeNet ``transform_input`` as a module: ImageNet-normalised RGB -> ``(x - 0.5) / 0.5``.

    Runs torchvision's own implementation on RGB. A channel-adapted model: one gray channel (normalised with the
    RGB-averaged statistics) is mapped to the same scaling; channels beyond the first three pass unchanged.
    """

    def __init__(self, enabled: bool):
        super().__init__()
        self.enabled = bool(enabled)

    @property
    def transform_input(self) -> bool:  # the attribute torchvision's implementation reads
        return self.enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if x.shape[1] == 3:
            return torchvision.models.GoogLeNet._transform_input(self, x)
        if x.shape[1] > 3:  # RGB first, extra channels (zero-initialised kernels) untouched
            return torch.cat([torchvision.models.GoogLeNet._transform_input(self, x[:, :3]), x[:, 3:]], dim=1)
        # grayscale, normalised with the RGB-averaged ImageNet statistics: map it to the (x - 0.5) / 0.5 scaling
        # the pretrained kernels (summed over RGB) expect; extra channels untouched
        mean, std = sum(_IMAGENET_MEAN) / 3, sum(_IMAGENET_STD) / 3
        gray = x[:, :1] * (std / 0.5) + (mean - 0.5) / 0.5
        return torch.cat([gray, x[:, 1:]], dim=1)

    def extra_repr(self) -> str:
        return f"enabled={self.enabled}"


@dataclass
class GoogLeNetImageClassifierOutput(ImageClassifierOutput):
    """`ImageClassifierOutput` plus the auxiliary logits (aux1, aux2) when they ran (training mode)."""

    aux_logits: tuple[torch.Tensor, torch.Tensor] | None = None


class GoogLeNetForImageClassification(_TorchvisionPreTrainedModel):
    config_class = GoogLeNetConfig
    base_model_prefix = "googlenet"

    def __init__(self, config: GoogLeNetConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.input_transform = GoogLeNetInputTransform(config.transform_input)  # any num_channels: see its forward
        net = torchvision.models.GoogLeNet(num_classes=config.num_labels, aux_logits=config.aux_logits,
                                           transform_input=False, init_weights=False, dropout=config.dropout,
                                           dropout_aux=config.dropout_aux)
        net.conv1.conv = _with_in_channels(net.conv1.conv, config.num_channels)
        if config.aux_logits and config.aux_num_labels != config.num_labels:
            for aux in (net.aux1, net.aux2):
                aux.fc2 = nn.Linear(aux.fc2.in_features, config.aux_num_labels)
        self.googlenet = net
        self.post_init()

    def _init_conv_linear(self, module: nn.Module) -> None:
        # torchvision's GoogLeNet scheme
        init.trunc_normal_(module.weight, mean=0.0, std=0.01, a=-2, b=2)
        if module.bias is not None:
            init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs) -> GoogLeNetImageClassifierOutput | tuple:
        out = self.googlenet(self.input_transform(pixel_values))
        aux = None
        if isinstance(out, tuple):  # training with auxiliary classifiers: (logits, aux2, aux1)
            out, aux2, aux1 = out
            aux = (aux1, aux2)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, out, self.config)
            if aux is not None and aux[0].shape[-1] == out.shape[-1] and self.config.aux_loss_weight:
                for a in aux:
                    loss = loss + self.config.aux_loss_weight * self.loss_function(labels, a, self.config)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            rest = (out,) + ((aux,) if aux is not None else ())
            return ((loss,) + rest) if loss is not None else rest
        return GoogLeNetImageClassifierOutput(loss=loss, logits=out, aux_logits=aux)
