"""VGG 11/13/16/19, with or without BatchNorm (this package's torchvision-backed model).

Stage map: stem = block 1; stage1..4 = blocks 2..5 (a block = its convs [+ BN] + max-pool). Head: the classifier
MLP, fed by the 7x7 adaptive average pool. torchvision's flat ``features.<i>`` map onto ``features.<block>.<j>``.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..registry import ArchSpec, CheckpointSpec, Family, register_family
from .modeling.torchvision_backed import VGGConfig, VGGForImageClassification
from .statedict import StateDict


def map_vgg(sd: StateDict, hf_model: nn.Module) -> dict[str, torch.Tensor]:
    # torchvision's flat features.<i> -> features.<block>.<j> (same layers, same order)
    nested = [f"{b}.{j}" for b, blk in enumerate(hf_model.vgg.features) for j in range(len(blk))]
    out = {}
    for key, value in sd.items():
        m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
        if m and int(m[1]) < len(nested):
            key = f"features.{nested[int(m[1])]}.{m[2]}"
        out[f"vgg.{key}"] = value
    return out



def _vgg(depth: int, bn: bool) -> CheckpointSpec:
    return CheckpointSpec(f"vgg{depth}{'_bn' if bn else ''}", "vgg", dict(depth=depth, batch_norm=bn),
                          head_weight="classifier.6.weight", hf_heads=("vgg.classifier.6",), map_state_dict=map_vgg)


FAMILY = register_family(Family(
    ArchSpec(model_type="vgg", stem=("vgg.features.0",), stages="vgg.features",
             stage_paths=tuple((f"vgg.features.{i}",) for i in range(1, 5)),
             first_conv="vgg.features.0.0", pooler="vgg.avgpool", head="vgg.classifier", head_style="mlp",
             min_image_size=32),
    config_class=VGGConfig, model_class=VGGForImageClassification,
    checkpoints=tuple(_vgg(d, bn) for d in (11, 13, 16, 19) for bn in (False, True)),
))
