"""Model families: one module per family, each registering one `Family` (stage map, classes, checkpoints) with the
registry when imported. Importing this package imports every family module in it, so adding a family is adding a
file here; families defined elsewhere call `hf_transfer_cnn.register_family` themselves.

Model code of this package's own families lives in `families.modeling` (self-contained files, saved next to the
weights for ``trust_remote_code``).
"""

import importlib
import pkgutil

_NOT_FAMILIES = {"modeling", "statedict"}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in _NOT_FAMILIES:
        importlib.import_module(f"{__name__}.{_info.name}")
