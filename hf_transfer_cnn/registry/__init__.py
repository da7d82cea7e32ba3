"""The registry: facts about model families, as data. Imports nothing else of the package; families register here.

* `ArchSpec` (`registry.arch`): where the stem, stages, neck and head of a model type are;
* `Family` / `CheckpointSpec` (`registry.family`): a family's classes and the checkpoints ``init``/``convert`` write.
"""

from .arch import (CONFIG_KEY, ArchSpec, StageUnit, UnsupportedArchitectureError, forget_resolved_arch, get_arch,
                   get_module, group_by_stride, group_evenly, in_transformers, input_size_hint, register_arch,
                   resolve_arch, set_module, stage_units, supported_model_types)
from .family import (CheckpointSpec, Family, UnknownArchError, checkpoint_names, get_checkpoint_spec, get_family,
                     model_class, register_family)

__all__ = ["CONFIG_KEY", "ArchSpec", "StageUnit", "UnsupportedArchitectureError", "forget_resolved_arch", "get_arch",
           "get_module", "group_by_stride", "group_evenly", "in_transformers", "input_size_hint", "register_arch",
           "resolve_arch", "set_module", "stage_units", "supported_model_types",
           "CheckpointSpec", "Family", "UnknownArchError", "checkpoint_names", "get_checkpoint_spec", "get_family",
           "model_class", "register_family"]
