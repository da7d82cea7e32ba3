"""ResNet (transformers' own classes). torchvision's ResNet is "v1.5" (the stride-2 conv of a bottleneck is the 3x3
one), which is transformers' ``ResNetConfig(downsample_in_bottleneck=False)``; the stem, basic/bottleneck blocks and
shortcuts are the same layers, mapped by name."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from ..registry import ArchSpec, CheckpointSpec, Family, register_family
from .statedict import StateDict


def map_resnet(sd: StateDict, hf_model: nn.Module) -> dict[str, torch.Tensor]:
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



def _resnet(name: str, layer_type: str, depths: list[int]) -> CheckpointSpec:
    hidden = [64, 128, 256, 512] if layer_type == "basic" else [256, 512, 1024, 2048]
    return CheckpointSpec(name, "resnet", dict(embedding_size=64, hidden_sizes=hidden, depths=depths,
                                               layer_type=layer_type, hidden_act="relu",
                                               downsample_in_first_stage=False, downsample_in_bottleneck=False),
                          head_weight="fc.weight", hf_heads=("classifier.1",), map_state_dict=map_resnet)


FAMILY = register_family(Family(
    ArchSpec(model_type="resnet", stem=("resnet.embedder",), stages="resnet.encoder.stages",
             first_conv="resnet.embedder.embedder.convolution", pooler="resnet.pooler", head_style="flatten_linear"),
    checkpoints=(_resnet("resnet18", "basic", [2, 2, 2, 2]), _resnet("resnet34", "basic", [3, 4, 6, 3]),
                 _resnet("resnet50", "bottleneck", [3, 4, 6, 3]), _resnet("resnet101", "bottleneck", [3, 4, 23, 3]),
                 _resnet("resnet152", "bottleneck", [3, 8, 36, 3])),
))
