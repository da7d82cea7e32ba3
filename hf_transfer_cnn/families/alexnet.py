"""AlexNet (this package's torchvision-backed model, `modeling.torchvision_backed`).

Stage map: stem = conv1 + pool; stage1 = conv2 + pool; stage2 = conv3; stage3 = conv4; stage4 = conv5 + pool.
Head: torchvision's classifier MLP (dropout, 3 Linear layers), fed by the 6x6 adaptive average pool.
"""

from __future__ import annotations

from ..registry import ArchSpec, CheckpointSpec, Family, register_family
from .modeling.torchvision_backed import AlexNetConfig, AlexNetForImageClassification
from .statedict import map_prefix


def _a(*indices: int) -> tuple[str, ...]:
    return tuple(f"alexnet.features.{i}" for i in indices)


FAMILY = register_family(Family(
    ArchSpec(model_type="alexnet", stem=_a(0, 1, 2), stages="alexnet.features",
             stage_paths=(_a(3, 4, 5), _a(6, 7), _a(8, 9), _a(10, 11, 12)),
             first_conv="alexnet.features.0", pooler="alexnet.avgpool", head="alexnet.classifier",
             head_style="mlp", min_image_size=63),
    config_class=AlexNetConfig, model_class=AlexNetForImageClassification,
    checkpoints=(CheckpointSpec("alexnet", "alexnet", head_weight="classifier.6.weight",
                                hf_heads=("alexnet.classifier.6",), map_state_dict=map_prefix("alexnet")),),
))
