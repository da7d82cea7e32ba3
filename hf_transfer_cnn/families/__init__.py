"""Model families: one module per family, each registering one `Family` (stage map, classes, checkpoints) with the
registry when imported. Importing this package imports every module in it (in file-name order), so nothing else
names a family.

Adding a family is one file with one `register_family` call:

1. Create ``families/<name>.py``. For a model type transformers already defines, the stage map is all it needs::

       from ..registry import ArchSpec, Family, register_family

       FAMILY = register_family(Family(ArchSpec("<model_type>", stem=("<path>",), stages="<ModuleList path>",
                                                first_conv="<conv path>", pooler="<path>", head="classifier")))

   Paths are dotted module paths of the ``*ForImageClassification`` model (see `ArchSpec`).
2. A family with its own model code puts it in ``families/modeling/<name>.py`` (self-contained: it imports only
   torch and transformers, because ``save_pretrained`` copies it next to the weights for ``trust_remote_code``)
   and passes ``config_class=`` / ``model_class=`` (and ``base_model_class=``) to `Family`; they are registered
   with transformers' Auto classes.
3. Checkpoints that ``init``/``convert`` can write are ``checkpoints=(CheckpointSpec(...), ...)``; torchvision
   state-dict mappers shared by families live in `families.statedict`.

A family defined outside this package (a plugin) makes the same single call, ``hf_transfer_cnn.register_family(
Family(...))``, in its own module; importing that module before loading the checkpoint is enough
(``tests/test_family_plugin.py`` is a complete example).
"""

import importlib
import pkgutil

_NOT_FAMILIES = {"modeling", "statedict", "timm_layout"}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in _NOT_FAMILIES:
        importlib.import_module(f"{__name__}.{_info.name}")
