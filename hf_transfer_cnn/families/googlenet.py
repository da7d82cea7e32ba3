"""GoogLeNet (this package's torchvision-backed model).

Stage map: stem = input transform, conv1-3 with their pools; stage1 = inception 3a-3b + pool (28x28); stage2 =
inception 4a-4e + pool (14x14); stage3 = inception 5a-5b (7x7). Head: dropout + fc. The auxiliary classifiers are
not part of TransferModel's forward (they run in the native forward, in training only). ``init`` uses torchvision's
from-scratch defaults (aux classifiers on, no input transform); ``convert`` builds it as torchvision does for its
published weights.
"""

from __future__ import annotations

from ..registry import ArchSpec, CheckpointSpec, Family, register_family
from .modeling.torchvision_backed import GoogLeNetConfig, GoogLeNetForImageClassification
from .statedict import map_prefix

_STAGES = (
    ("inception3a", "inception3b", "maxpool3"),
    ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4"),
    ("inception5a", "inception5b"),
)

FAMILY = register_family(Family(
    ArchSpec(model_type="googlenet",
             stem=("input_transform", "googlenet.conv1", "googlenet.maxpool1", "googlenet.conv2",
                   "googlenet.conv3", "googlenet.maxpool2"),
             stages="googlenet", stage_paths=tuple(tuple(f"googlenet.{m}" for m in s) for s in _STAGES),
             first_conv="googlenet.conv1.conv", pooler="googlenet.avgpool", head_dropout="googlenet.dropout",
             head="googlenet.fc", min_image_size=32),
    config_class=GoogLeNetConfig, model_class=GoogLeNetForImageClassification,
    checkpoints=(CheckpointSpec("googlenet", "googlenet", dict(aux_logits=True, transform_input=False),
                                head_weight="fc.weight", hf_heads=("googlenet.fc",),
                                map_state_dict=map_prefix("googlenet"),
                                torchvision_kwargs=dict(transform_input=True, aux_logits=True, init_weights=False)),),
))
