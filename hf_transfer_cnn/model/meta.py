"""`TransferMeta`: what a TransferModel records about itself, saved as the ``hf_transfer_cnn`` section of its config.

One typed value read and written in one place: `TransferMeta.of(config)` parses the section (a malformed one is an
error naming the key), `meta.write(config)` stores it back. Unset fields are left out of ``config.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..registry import CONFIG_KEY

__all__ = ["CONFIG_KEY", "TransferMeta"]


@dataclass(frozen=True)
class TransferMeta:
    """The ``hf_transfer_cnn`` config section."""

    base_model: str | None = None
    """The checkpoint this model was loaded from (a Hub id, or the folder's name for a local one)."""
    head: dict | None = None
    """A custom head's `HeadSpec` as a dict; None for the native classifier."""
    input_channels: int | None = None
    """Input channels fed through a 1x1 input adapter (stems that cannot absorb a channel change)."""
    image_size: int | None = None
    trainable_stages: int | None = None
    feature_dim: int | None = None
    """Width of the pooled features the classifier sees."""
    channels_dim: int | None = None
    """Channels of the last feature map (max/concat pooling)."""
    batch_norm_momentum: float | None = None
    """The PyTorch momentum the weights were trained with (recorded by ``convert`` for TensorFlow-style ports)."""
    backbone_config: dict | None = None
    """Config values the saved config.json overrides (an adapter folder states its input channels there)."""

    @classmethod
    def of(cls, config: Any) -> TransferMeta:
        """The section of `config` (empty when it has none); wrong keys or value types are an error naming them."""
        raw = getattr(config, CONFIG_KEY, None) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config.{CONFIG_KEY} must be a mapping, got {type(raw).__name__}; fix or remove it in "
                             "config.json.")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"config.{CONFIG_KEY} has unknown key(s) {unknown}; known keys: {sorted(known)}. Fix or "
                             "remove them in config.json.")
        for key, value in raw.items():
            _check_type(key, value)
        return cls(**raw)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def updated(self, **changes: Any) -> TransferMeta:
        return replace(self, **changes)

    def only(self, *names: str) -> TransferMeta:
        """This section with every field but `names` unset."""
        return TransferMeta(**{name: getattr(self, name) for name in names})

    def as_config_entry(self) -> dict[str, dict]:
        """``{"hf_transfer_cnn": {...}}``: the section as a config dict holds it."""
        return {CONFIG_KEY: self.to_dict()}

    def write(self, config: Any) -> None:
        config.update(self.as_config_entry())


_INT_KEYS = {"input_channels", "image_size", "trainable_stages", "feature_dim", "channels_dim"}
_DICT_KEYS = {"head", "backbone_config"}


def _check_type(key: str, value: Any) -> None:
    if value is None:
        return
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 0 if key in _INT_KEYS
          else isinstance(value, dict) if key in _DICT_KEYS
          else isinstance(value, str) if key == "base_model"
          else isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok:
        raise ValueError(f"config.{CONFIG_KEY}.{key}={value!r} has the wrong type; fix or remove it in config.json.")
