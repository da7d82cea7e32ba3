"""Freezing: which stages train (`apply_freeze`, `FreezeState`) and what a frozen stage is (`freezing.module`)."""

from .policy import FreezeState, apply_freeze, freeze_model, is_frozen, resolve_trainable_stages, units_for

__all__ = ["FreezeState", "apply_freeze", "freeze_model", "is_frozen", "resolve_trainable_stages", "units_for"]
