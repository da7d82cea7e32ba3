"""The forward pass: stage units (a frozen prefix as one graph with `FastOptions(jit=True)`), neck, pooling, head —
or, for architectures registered with ``forward="native"``, the model class's own forward (its frozen stages run
frozen all the same: freezing acts on the modules).

`ForwardMixin` is one of `TransferModel`'s bases; it uses what `TransferModel` defines (``arch``, ``stage_units``,
``head_spec``, ``num_input_channels``, ``freeze_state``, ``_native_class``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from ..fastpath import run_frozen_prefix
from ..freezing import is_frozen
from ..registry import StageUnit, get_module
from .head import HeadSpec

__all__ = ["ForwardMixin"]


class _Captured(Exception):
    """Stops a native forward once the head's input is known (`pooled_features`)."""


class ForwardMixin:
    """`forward` and its parts: `forward_features`, `forward_head`, `pooled_features`, `classify_pooled`."""

    def _check_input(self, pixel_values: torch.Tensor) -> None:
        if pixel_values is None:
            raise ValueError("pixel_values is required.")
        if pixel_values.dim() != 4:
            raise ValueError("pixel_values must be [batch, channels, height, width], got shape "
                             f"{tuple(pixel_values.shape)}.")
        c, h, w = pixel_values.shape[1:]
        if c != self.num_input_channels:
            raise ValueError(
                f"pixel_values has {c} channels but the model expects {self.num_input_channels}; convert the images "
                f"(the model's image_processor does) or adapt the model with num_channels={c}."
            )
        minimum = self.arch.min_size(self.config)
        if min(h, w) < minimum:
            raise ValueError(f"Input {h}x{w} is smaller than the minimum {minimum}x{minimum} for "
                             f"{self.config.model_type!r}.")

    @property
    def runs_native_forward(self) -> bool:
        """Whether this model runs its class's own forward (``ArchSpec.forward == "native"``)."""
        return self.arch.forward == "native"

    def _no_chain(self, what: str) -> ValueError:
        return ValueError(f"{what} is not available for this {self.config.model_type} model: it runs its own forward "
                          "(its stages are not a chain of feature maps). Use model(pixel_values) for logits or "
                          "model.pooled_features(pixel_values) for what the classifier sees.")

    def forward_features(self, pixel_values: torch.Tensor, output_hidden_states: bool = False,
                         start: int = 0) -> Any:
        """Run stage units ``start..end`` (and the neck); returns the final feature map.

        `start` > 0 feeds `pixel_values` as the output of unit ``start - 1``. Without hidden states, the frozen
        prefix runs as one inference graph where opted in (`FastOptions(jit=True)`, `fastpath.run_frozen_prefix`).
        """
        if self.runs_native_forward:
            raise self._no_chain("forward_features")
        hidden = []
        x = pixel_values
        units = self.stage_units()
        arch = self.arch
        tail = len(arch.neck) + len(arch.post_pool)
        neck_done = False
        if start == 0 and not output_hidden_states:
            x, start, neck_done = self._run_frozen_prefix(units, x)
        checkpointing = self._checkpoints_activations()
        for unit in units[start:]:
            mods = unit.modules[: len(unit.modules) - tail] if unit is units[-1] and tail else unit.modules
            for m in mods:
                x = _checkpointed(m, x) if checkpointing and _trains(m) else m(x)
            if output_hidden_states:
                hidden.append(x)
        if not neck_done:
            for path in arch.neck:
                x = get_module(self, path)(x)
        return (x, tuple(hidden)) if output_hidden_states else x

    def _checkpoints_activations(self) -> bool:
        """Whether gradient checkpointing is on (transformers' flag, or timm's ``grad_checkpointing`` that
        TimmWrapper's ``gradient_checkpointing_enable`` sets) and a backward will follow."""
        if not (self.training and torch.is_grad_enabled()):
            return False
        return any(getattr(m, "gradient_checkpointing", False) is True or getattr(m, "grad_checkpointing", False)
                   is True for m in self.modules())

    def _run_frozen_prefix(self, units: list[StageUnit], x: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
        """The frozen units as one inference graph: (their output, the first unit left to run, neck done);
        ``(x, 0, False)`` where nothing is frozen or no graph applies."""
        state = self.freeze_state
        n_frozen = len(units) - state.trainable_stages if state is not None else 0
        if n_frozen:
            arch = self.arch
            mods = [m for u in units[:n_frozen] for m in u.modules]
            if n_frozen == len(units):  # everything frozen: the neck too (post-pool modules run after pooling)
                mods = mods[: len(mods) - len(arch.post_pool)] if arch.post_pool else mods
            out = run_frozen_prefix(self, mods, x)
            if out is not None:
                return out, n_frozen, n_frozen == len(units)
        return x, 0, False

    def _pool(self, x: torch.Tensor, spec: HeadSpec) -> torch.Tensor:
        arch = self.arch
        if spec.pooling == "avg":
            pooled = get_module(self, arch.pooler)(x).flatten(1) if arch.pooler else x.mean((-2, -1))
            return self._post_pool(pooled)
        mx = x.amax((-2, -1))
        if spec.pooling == "max":
            return self._post_pool(mx)
        return torch.cat([self._post_pool(x.mean((-2, -1))), self._post_pool(mx)], dim=-1)

    def _post_pool(self, pooled: torch.Tensor) -> torch.Tensor:
        for path in self.arch.post_pool:
            pooled = get_module(self, path)(pooled)
        return pooled

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pool a feature map and classify it."""
        if self.runs_native_forward:
            raise self._no_chain("forward_head")
        return self.classify_pooled(self._pool(features, self.head_spec))

    def pooled_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The vector the head sees (after pooling and any post-pool norm), before head dropout.

        For a model that runs its own forward: the input of its head dropout (or classifier), taken from that forward;
        call it in eval mode (in training mode a functional dropout may already have acted on it)."""
        self._check_input(pixel_values)
        if self.runs_native_forward:
            return self._native_pooled(pixel_values).flatten(1)
        return self._pool(self.forward_features(pixel_values), self.head_spec)

    def _native_forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False,
                        **kwargs) -> tuple[torch.Tensor, Any]:
        """(logits, hidden states) from the model class's own forward, after the input adapter if there is one."""
        adapter = self._modules.get("input_adapter")
        if adapter is not None:
            pixel_values = adapter(pixel_values)
        call = {**dict(self.arch.forward_kwargs), **kwargs}
        if output_hidden_states:
            call["output_hidden_states"] = True
        out = self._native_class.forward(self, pixel_values=pixel_values, return_dict=True, **call)
        return out.logits, getattr(out, "hidden_states", None)

    def _native_pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        arch = self.arch
        if arch.extra_heads:
            raise ValueError(f"This {self.config.model_type} model combines {len(arch.extra_heads) + 1} classifiers on "
                             "different features: it has no single pooled vector (no feature cache).")
        captured: list[torch.Tensor] = []

        def grab(module: nn.Module, args: tuple) -> None:
            captured.append(args[0])
            raise _Captured

        handle = get_module(self, arch.head_dropout or arch.head).register_forward_pre_hook(grab)
        try:
            self._native_forward(pixel_values)
        except _Captured:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"The {self.config.model_type} forward never called {arch.head_dropout or arch.head}; "
                               "its registered head is not the classifier this forward uses.")
        return captured[0]

    def classify_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Head dropout + classifier on pooled features."""
        arch = self.arch
        if arch.head_dropout:
            pooled = get_module(self, arch.head_dropout)(pooled)
        elif arch.head_dropout_rate:
            pooled = nn.functional.dropout(pooled, arch.head_dropout_rate, self.training)
        if arch.head_style == "conv":  # a 1x1 conv classifier takes the pooled vector as a 1x1 map
            return get_module(self, arch.head)(pooled[:, :, None, None]).flatten(1)
        return get_module(self, arch.head)(pooled)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        pooled_features: torch.Tensor | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        """Classify `pixel_values`, or precomputed `pooled_features` (see `hf_transfer_cnn.features`)."""
        hidden = None
        if pooled_features is not None:
            if pixel_values is not None:
                raise ValueError("Pass either pixel_values or pooled_features, not both.")
            logits = self.classify_pooled(pooled_features)
        else:
            self._check_input(pixel_values)
            output_hidden_states = bool(output_hidden_states if output_hidden_states is not None
                                        else self.config.output_hidden_states)
            if self.runs_native_forward:
                logits, hidden = self._native_forward(pixel_values, output_hidden_states, **kwargs)
            elif output_hidden_states:
                features, hidden = self.forward_features(pixel_values, output_hidden_states=True)
                logits = self.forward_head(features)
            else:
                logits = self.forward_head(self.forward_features(pixel_values))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            out = (logits,) + ((hidden,) if hidden is not None else ())
            return ((loss,) + out) if loss is not None else out
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden)


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters()) and not is_frozen(module)


def _checkpointed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` with its activations recomputed in the backward instead of kept (gradient checkpointing)."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(module, x, use_reentrant=False)
