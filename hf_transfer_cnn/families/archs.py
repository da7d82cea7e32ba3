"""The architectures `convert` and `init` know: for each, its transformers config, the torchvision model its
weights come from, how torchvision's parameter names map onto the transformers model, and its image processor.

ResNet and MobileNetV2 become transformers' own classes (plain ``transformers`` loads them, no extra code):

* ResNet: torchvision's ResNet is "v1.5" (the stride-2 conv of a bottleneck is the 3x3 one), which is
  transformers' ``ResNetConfig(downsample_in_bottleneck=False)``; the stem, basic/bottleneck blocks and
  shortcuts are the same layers, mapped by name.
* MobileNetV2: ``MobileNetV2Config(tf_padding=False, layer_norm_eps=1e-5)`` has torchvision's layers in
  torchvision's order, so parameters map in order (names differ, shapes are checked pair by pair).

AlexNet, VGG and GoogLeNet become this package's torchvision-backed models, LeNet-5 its own model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torchvision
from PIL import Image
from torch import nn
from transformers import (ConvNextImageProcessor, MobileNetV2Config, MobileNetV2ImageProcessor, PreTrainedConfig,
                          ResNetConfig, ViTImageProcessor)

from ..modeling import IMAGENET_MEAN, IMAGENET_STD, adapt_image_processor
from .lenet import LeNet5Config
from .torchvision_backed import AlexNetConfig, GoogLeNetConfig, VGGConfig

__all__ = ["ArchInfo", "ARCHS", "CONVERTIBLE_ARCHS", "INIT_ARCHS", "get_arch_info", "UnknownArchError"]

StateDict = Mapping[str, torch.Tensor]


class UnknownArchError(ValueError):
    """An ARCH name that `convert` / `init` do not know."""


@dataclass(frozen=True)
class ArchInfo:
    """One architecture name (as on the command line) and everything needed to build, convert and preprocess it."""

    name: str
    model_type: str
    """model_type of the checkpoint written (``resnet``, ``vgg``, ...)."""
    config_kwargs: dict = field(default_factory=dict)
    """Architecture-defining config values (depths, VGG depth/batch norm, ...)."""
    head_weight: str | None = None
    """torchvision name of the output layer's weight (its rows = number of classes); None: not convertible."""
    hf_heads: tuple[str, ...] = ()
    """Output Linear layer(s) of the transformers model, replaced when the number of labels changes."""
    default_image_size: int = 224
    default_num_channels: int = 3
    default_num_labels: int = 1000

    @property
    def convertible(self) -> bool:
        return self.head_weight is not None

    # -- configs and models --------------------------------------------------------------------------------

    def make_config(self, num_labels: int | None = None, num_channels: int | None = None,
                    image_size: int | None = None, **family_kwargs) -> PreTrainedConfig:
        """The transformers config for this architecture (labels ``LABEL_i`` unless given later)."""
        kwargs = dict(self.config_kwargs, **family_kwargs)
        kwargs.update(num_labels=num_labels or self.default_num_labels,
                      num_channels=num_channels or self.default_num_channels,
                      image_size=image_size or self.default_image_size)
        return _CONFIG_CLASSES[self.model_type](**kwargs)

    def torchvision_model(self, num_classes: int = 1000, **kwargs) -> nn.Module:
        """The torchvision network these weights belong to, built as torchvision builds it for its published
        ImageNet weights (GoogLeNet: ``transform_input=True``; aux classifiers as given)."""
        if not self.convertible:
            raise UnknownArchError(f"{self.name!r} has no torchvision counterpart to convert from.")
        if self.name == "googlenet":
            kwargs.setdefault("transform_input", True)
            kwargs.setdefault("aux_logits", True)
            kwargs.setdefault("init_weights", False)
        return torchvision.models.get_model(self.name, weights=None, num_classes=num_classes, **kwargs)

    def map_state_dict(self, state_dict: StateDict, hf_model: nn.Module) -> dict[str, torch.Tensor]:
        """torchvision parameter names -> the transformers model's (tensors are not copied)."""
        return _MAPPERS[self.model_type](state_dict, hf_model)

    # -- preprocessing and labels ---------------------------------------------------------------------------

    def image_processor(self, image_size: int | None = None, num_channels: int | None = None):
        """torchvision's evaluation preprocessing: resize to size/0.875, centre-crop to size, ImageNet mean/std
        (LeNet-5: resize to size x size, mean/std 0.5)."""
        size = image_size or self.default_image_size
        channels = num_channels or self.default_num_channels
        if self.model_type == "lenet5":
            return ViTImageProcessor(size={"height": size, "width": size}, resample=Image.BILINEAR,
                                     image_mean=[0.5] * channels, image_std=[0.5] * channels)
        if self.model_type == "mobilenet_v2" or size >= 384:  # resize + centre crop (ConvNeXt's warps at >= 384)
            proc = MobileNetV2ImageProcessor(size={"shortest_edge": int(size / 0.875)},
                                             crop_size={"height": size, "width": size}, resample=Image.BILINEAR,
                                             image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
        else:
            proc = ConvNextImageProcessor(size={"shortest_edge": size}, crop_pct=0.875, resample=Image.BILINEAR,
                                          image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
        return adapt_image_processor(proc, num_channels=channels) if channels != 3 else proc

    def imagenet_labels(self) -> list[str]:
        """The 1000 ImageNet class names torchvision ships with its weights (no download)."""
        name = self.name if self.convertible else "resnet18"
        return list(torchvision.models.get_model_weights(name).DEFAULT.meta["categories"])


# --- state-dict mappers ---------------------------------------------------------------------------------------

def _map_resnet(sd: StateDict, hf_model: nn.Module) -> dict[str, torch.Tensor]:
    block = r"layer(\d)\.(\d+)\."

    def stage(m: re.Match) -> str:
        return f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}."

    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"conv1\.weight", lambda m: "resnet.embedder.embedder.convolution.weight"),
        (r"bn1\.(.+)", lambda m: f"resnet.embedder.embedder.normalization.{m[1]}"),
        (block + r"conv(\d)\.weight", lambda m: stage(m) + f"layer.{int(m[3]) - 1}.convolution.weight"),
        (block + r"bn(\d)\.(.+)", lambda m: stage(m) + f"layer.{int(m[3]) - 1}.normalization.{m[4]}"),
        (block + r"downsample\.0\.weight", lambda m: stage(m) + "shortcut.convolution.weight"),
        (block + r"downsample\.1\.(.+)", lambda m: stage(m) + f"shortcut.normalization.{m[3]}"),
        (r"fc\.(weight|bias)", lambda m: f"classifier.1.{m[1]}"),
    ]
    out = {}
    for key, value in sd.items():
        for pattern, target in rules:
            m = re.fullmatch(pattern, key)
            if m:
                out[target(m)] = value
                break
        else:
            out[key] = value  # reported as unexpected by the strict load
    return out


def _map_in_order(sd: StateDict, hf_model: nn.Module) -> dict[str, torch.Tensor]:
    targets = hf_model.state_dict()
    if len(targets) != len(sd):
        raise ValueError(f"{len(sd)} tensors in the weights but {len(targets)} in {type(hf_model).__name__}.")
    out = {}
    for (src, value), (dst, ref) in zip(sd.items(), targets.items()):
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(f"in-order mapping broke at {src} {tuple(value.shape)} -> {dst} {tuple(ref.shape)}.")
        out[dst] = value
    return out


def _map_prefix(prefix: str) -> Callable[[StateDict, nn.Module], dict[str, torch.Tensor]]:
    def mapper(sd: StateDict, hf_model: nn.Module) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{k}": v for k, v in sd.items()}
    return mapper


def _map_vgg(sd: StateDict, hf_model: nn.Module) -> dict[str, torch.Tensor]:
    # torchvision's flat features.<i> -> features.<block>.<j> (same layers, same order)
    nested = [f"{b}.{j}" for b, blk in enumerate(hf_model.vgg.features) for j in range(len(blk))]
    out = {}
    for key, value in sd.items():
        m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
        if m and int(m[1]) < len(nested):
            key = f"features.{nested[int(m[1])]}.{m[2]}"
        out[f"vgg.{key}"] = value
    return out


_MAPPERS = {"resnet": _map_resnet, "mobilenet_v2": _map_in_order, "alexnet": _map_prefix("alexnet"),
            "googlenet": _map_prefix("googlenet"), "vgg": _map_vgg}


# --- the catalogue --------------------------------------------------------------------------------------------

def _resnet(name: str, layer_type: str, depths: list[int]) -> ArchInfo:
    hidden = [64, 128, 256, 512] if layer_type == "basic" else [256, 512, 1024, 2048]
    return ArchInfo(name, "resnet", dict(embedding_size=64, hidden_sizes=hidden, depths=depths, layer_type=layer_type,
                                         hidden_act="relu", downsample_in_first_stage=False,
                                         downsample_in_bottleneck=False),
                    head_weight="fc.weight", hf_heads=("classifier.1",))


def _vgg(depth: int, bn: bool) -> ArchInfo:
    return ArchInfo(f"vgg{depth}{'_bn' if bn else ''}", "vgg", dict(depth=depth, batch_norm=bn),
                    head_weight="classifier.6.weight", hf_heads=("vgg.classifier.6",))


_ENTRIES = [
    ArchInfo("lenet5", "lenet5", default_image_size=32, default_num_channels=1, default_num_labels=10),
    ArchInfo("alexnet", "alexnet", head_weight="classifier.6.weight", hf_heads=("alexnet.classifier.6",)),
    # init: torchvision's from-scratch defaults (aux classifiers on, no input transform); convert: from the file
    ArchInfo("googlenet", "googlenet", dict(aux_logits=True, transform_input=False), head_weight="fc.weight",
             hf_heads=("googlenet.fc",)),
    *[_vgg(d, bn) for d in (11, 13, 16, 19) for bn in (False, True)],
    _resnet("resnet18", "basic", [2, 2, 2, 2]),
    _resnet("resnet34", "basic", [3, 4, 6, 3]),
    _resnet("resnet50", "bottleneck", [3, 4, 6, 3]),
    _resnet("resnet101", "bottleneck", [3, 4, 23, 3]),
    _resnet("resnet152", "bottleneck", [3, 8, 36, 3]),
    ArchInfo("mobilenet_v2", "mobilenet_v2",
             dict(depth_multiplier=1.0, tf_padding=False, layer_norm_eps=1e-5, hidden_act="relu6",
                  classifier_dropout_prob=0.2, first_layer_is_expansion=True, finegrained_output=True),
             head_weight="classifier.1.weight", hf_heads=("classifier",)),
]

ARCHS: dict[str, ArchInfo] = {e.name: e for e in _ENTRIES}
CONVERTIBLE_ARCHS: list[str] = [e.name for e in _ENTRIES if e.convertible]
INIT_ARCHS: list[str] = [e.name for e in _ENTRIES]

_CONFIG_CLASSES: dict[str, type[PreTrainedConfig]] = {
    "lenet5": LeNet5Config, "alexnet": AlexNetConfig, "googlenet": GoogLeNetConfig, "vgg": VGGConfig,
    "resnet": ResNetConfig, "mobilenet_v2": MobileNetV2Config,
}


def get_arch_info(name: str, *, convertible: bool = False) -> ArchInfo:
    """The catalogue entry for ARCH `name`, or an error listing the supported names."""
    info = ARCHS.get(name)
    choices = CONVERTIBLE_ARCHS if convertible else INIT_ARCHS
    if info is None or (convertible and not info.convertible):
        what = "convert from torchvision weights" if convertible else "initialise"
        hint = " (LeNet-5 has no torchvision weights; use `init lenet5`.)" if name == "lenet5" and convertible else ""
        raise UnknownArchError(f"Unknown ARCH {name!r}: hf-transfer-cnn can {what}: {', '.join(choices)}.{hint}")
    return info
