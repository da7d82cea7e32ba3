"""timm checkpoints (transformers' ``TimmWrapper``) as TransferModels: stage maps from timm's own metadata.

Every timm checkpoint has ``model_type="timm_wrapper"``, but the layout depends on the timm architecture, so the
registry entry carries a `resolver` that reads the layout off each model instance, in one of two ways.

As a chain (``forward="chain"``; CNNs laid out as stem -> stages -> [neck] -> global_pool -> classifier):

* stem: the leading modules matched by ``group_matcher()["stem"]`` (plus parameter-free ones between them);
* stages: the remaining modules, split after each module named in ``feature_info`` (a child container such as
  ``blocks`` is opened when ``feature_info`` points inside it);
* neck: modules after the last ``feature_info`` module (e.g. EfficientNet's ``conv_head``/``bn2``);
* pooling and classifier: ``global_pool`` and ``pretrained_cfg["classifier"]`` (top-level, or inside a
  ``ClassifierHead``); ``first_conv`` from ``pretrained_cfg["first_conv"]``.

The chain is checked against timm's own ``forward_features`` + ``forward_head`` at the size the model is adapted to
(``image_size=``, else the checkpoint's ``pretrained_cfg["input_size"]``). Where it does not reproduce timm's forward
(a head that normalises after pooling: ConvNeXt; a conv after pooling: MobileNetV3; transformers), the model runs
through timm's own forward (``forward="native"``, `timm_layout`): stages are timm's coarse ``group_matcher`` groups
(the parameter groups of layer-wise LR decay), checked to cover every parameter and to be called as modules by that
forward. What neither way describes is refused with an error naming the model and both reasons.

Channel changes go through TransferModel's 1x1 input adapter (``standardized_stem``), because transformers rebuilds
a timm model from its config with the original number of input channels.
Head dropout is timm's: the ``ClassifierHead``'s or a top-level dropout module after pooling, else the functional
``drop_rate`` of models that apply ``F.dropout`` before the classifier (ResNet, EfficientNet).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..registry import ArchSpec, Family, get_module, input_size_hint, register_family
from .timm_layout import (CHANNELS_KEYS, MODEL_TYPE, ROOT, UnsupportedTimmModelError, fixed_size, input_channels,
                           native_spec, refuser)

__all__ = ["timm_arch_spec", "UnsupportedTimmModelError"]

_ROOT = ROOT
_CHANNELS_KEYS = CHANNELS_KEYS
_refuser = refuser


def _feature_modules(timm_model: nn.Module) -> list[tuple[str, int]]:
    info = getattr(timm_model, "feature_info", None)
    if info is None:
        return []
    if hasattr(info, "get_dicts"):
        info = info.get_dicts()
    return [(d["module"], int(d.get("reduction", 1))) for d in info if d.get("module")]


def _pieces(timm_model: nn.Module, exclude: set[str], feature_paths: list[str]) -> list[tuple[str, nn.Module]]:
    """Modules in definition order; a container is opened when a feature_info path points inside it."""
    out: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if path in exclude:
                continue
            if any(f.startswith(path + ".") for f in feature_paths):
                visit(path + ".", child)
            else:
                out.append((path, child))

    visit("", timm_model)
    return out


def _stem_regex(timm_model: nn.Module) -> str | None:
    try:
        matcher = timm_model.group_matcher(coarse=True)
    except Exception:  # not every timm model implements it
        return None
    stem = matcher.get("stem") if isinstance(matcher, dict) else None
    return stem if isinstance(stem, str) else None


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


@dataclass(frozen=True)
class _Head:
    """Where a timm model pools and classifies (paths below ``timm_model``, except `dropout`: from the root)."""

    classifier: str
    first_conv: str
    parent: str
    """The ``ClassifierHead`` holding pool and classifier, or "" when they sit at the top."""
    pool: str
    after_pool: tuple[str, ...]
    """Top-level dropouts after the pool (no ``ClassifierHead``)."""
    dropout: str | None
    drop_rate: float

    @property
    def excluded(self) -> set[str]:
        """Modules that are not part of the stem -> stages -> neck chain."""
        return {self.parent} if self.parent else {"global_pool", self.classifier, *self.after_pool}


def _head_dropout(timm_model: nn.Module, head_parent: str, owner: nn.Module,
                  refuse) -> tuple[str | None, tuple[str, ...]]:
    """``(dropout path, top-level dropouts after pooling)``: a ClassifierHead's ``drop``, or one after the pool."""
    if head_parent:
        drop = getattr(owner, "drop", None)
        return (f"{_ROOT}.{head_parent}.drop" if isinstance(drop, nn.Dropout) else None), ()
    # pool, dropout and classifier at the top (DenseNet's head_drop): the dropout acts on pooled features
    names = [n for n, _ in timm_model.named_children()]
    after_pool = [n for n in names[names.index("global_pool") + 1:]
                  if isinstance(getattr(timm_model, n), nn.Dropout)] if "global_pool" in names else []
    if len(after_pool) > 1:
        raise refuse(f"it applies several dropouts after pooling ({', '.join(after_pool)})")
    return (f"{_ROOT}.{after_pool[0]}" if after_pool else None), tuple(after_pool)


def _read_head(timm_model: nn.Module, refuse) -> _Head:
    """Pool, dropout, classifier and first conv from ``pretrained_cfg``, checked to be what TransferModel runs."""
    cfg = dict(getattr(timm_model, "pretrained_cfg", None) or {})
    classifier, first_conv = cfg.get("classifier"), cfg.get("first_conv")
    if not isinstance(classifier, str) or not isinstance(first_conv, str):
        raise refuse("its pretrained_cfg names no classifier/first_conv")
    head_parent = classifier.rpartition(".")[0]
    owner = get_module(timm_model, head_parent) if head_parent else timm_model
    if not isinstance(getattr(owner, "global_pool", None), nn.Module):
        raise refuse(f"no `global_pool` next to its classifier {classifier!r}")
    if head_parent:  # a ClassifierHead: pool -> [dropout] -> classifier, nothing else that computes
        leaf = classifier.rpartition(".")[2]
        extra = [n for n, m in owner.named_children()
                 if n not in ("global_pool", "drop", leaf) and not isinstance(m, (nn.Identity, nn.Flatten, nn.Dropout))]
        if extra:
            raise refuse(f"its head {head_parent!r} applies {', '.join(extra)} between pooling and the classifier")
    dropout, after_pool = _head_dropout(timm_model, head_parent, owner, refuse)
    drop_rate = 0.0 if dropout else float(getattr(timm_model, "drop_rate", 0.0) or 0.0)
    if not isinstance(get_module(timm_model, classifier), nn.Linear):
        raise refuse(f"its classifier {classifier!r} is not a Linear layer")
    if not isinstance(get_module(timm_model, first_conv), nn.Conv2d):
        raise refuse(f"its first conv {first_conv!r} is not a Conv2d")
    pool = f"{head_parent}.global_pool" if head_parent else "global_pool"
    return _Head(classifier, first_conv, head_parent, pool, after_pool, dropout, drop_rate)


def _stem_end(timm_model: nn.Module, pieces: list[tuple[str, nn.Module]], features: dict[str, int], refuse) -> int:
    """How many leading pieces form the stem: those timm's group_matcher names (param-free pieces in between join)."""
    stem_end = 0
    regex = _stem_regex(timm_model)
    if regex:
        for i, (path, m) in enumerate(pieces):
            if re.match(regex, path):
                stem_end = i + 1
            elif _has_params(m):
                break
    if stem_end == 0:  # fallback: everything before the first feature module (inclusive if it is the stem output)
        first = next((i for i, (p, _) in enumerate(pieces) if p in features), None)
        if first is None:
            raise refuse("none of its feature_info modules is part of its forward chain")
        stem_end = first + 1 if features[pieces[first][0]] <= 2 else first
    return stem_end


def _split_stages(body: list[tuple[str, nn.Module]], features: dict[str, int],
                  refuse) -> tuple[list[list[str]], list[str]]:
    """``(stages, neck)``: a stage ends at each feature_info module; what follows the last one is the neck."""
    stages: list[list[str]] = []
    current: list[str] = []
    for path, _ in body:
        current.append(path)
        if path in features:
            stages.append(current)
            current = []
    if not stages:
        raise refuse("no feature_info module follows its stem")
    return stages, current


def timm_arch_spec(model: nn.Module) -> ArchSpec:
    """The stage map of one TimmWrapper model (`model.timm_model`): as a chain where that reproduces timm's forward at
    the model's input size, else through timm's own forward; refused (both reasons) where neither applies."""
    timm_model = getattr(model, _ROOT, None)
    name = getattr(getattr(model, "config", None), "architecture", type(timm_model).__name__)
    if timm_model is None:
        raise UnsupportedTimmModelError(f"{type(model).__name__} has no `timm_model`; is it a TimmWrapper model?")
    refuse = _refuser(name)
    size = _probe_size(model, timm_model)
    try:
        spec = _chain_spec(model, timm_model, refuse)
        _check_chain(model, spec, size, refuse)
    except UnsupportedTimmModelError as chain_error:
        try:
            spec = native_spec(model, size, refuse)
        except UnsupportedTimmModelError as native_error:
            raise refuse(f"{native_error.why} (through its own forward); as a chain: {chain_error.why}") from None
    if getattr(model.config, "num_channels", None) is None:
        model.config.num_channels = input_channels(model)
    return spec


def _probe_size(model: nn.Module, timm_model: nn.Module) -> int:
    """The size layouts are checked at: what the model is adapted to (``image_size=``), else timm's input size."""
    hint = input_size_hint(model)
    if hint:
        return hint
    size = (getattr(timm_model, "pretrained_cfg", None) or {}).get("input_size")
    return int(max(size[1:])) if size and len(size) == 3 else 224


def _chain_spec(model: nn.Module, timm_model: nn.Module, refuse) -> ArchSpec:
    """The stem -> stages -> neck -> pool -> classifier layout read off timm's metadata (not yet checked)."""
    head = _read_head(timm_model, refuse)
    reductions = _feature_modules(timm_model)
    features = dict(reductions)
    if not features:
        raise refuse("it has no feature_info")
    pieces = _pieces(timm_model, head.excluded, list(features))
    stem_end = _stem_end(timm_model, pieces, features, refuse)
    stages, neck = _split_stages(pieces[stem_end:], features, refuse)

    p = lambda path: f"{_ROOT}.{path}"  # noqa: E731
    return ArchSpec(
        model_type=MODEL_TYPE, stem=tuple(p(s) for s, _ in pieces[:stem_end]), stages=_ROOT,
        stage_paths=tuple(tuple(p(s) for s in stage) for stage in stages), neck=tuple(p(s) for s in neck),
        first_conv=p(head.first_conv), pooler=p(head.pool), head_dropout=head.dropout,
        head_dropout_rate=head.drop_rate, head=p(head.classifier),
        min_image_size=fixed_size(timm_model) or max(32, max(r for _, r in reductions)), standardized_stem=True,
        channels_keys=_CHANNELS_KEYS,
    )


def _check_chain(model: nn.Module, spec: ArchSpec, size: int, refuse) -> None:
    """The stage chain must reproduce timm's forward (eval mode, a random input of `size` pixels)."""
    timm_model = getattr(model, _ROOT)
    ref_param = next(timm_model.parameters())
    if ref_param.device.type == "meta":
        return
    modes = {m: m.training for m in model.modules()}
    try:
        for m in model.modules():
            m.training = False
        size = max(size, spec.min_image_size)
        x = torch.randn(1, input_channels(model), size, size, generator=torch.Generator().manual_seed(0))
        x = x.to(device=ref_param.device, dtype=ref_param.dtype)
        with torch.no_grad():
            expected = timm_model.forward_head(timm_model.forward_features(x))
            h = x
            for path in spec.stem + tuple(q for stage in spec.stage_paths for q in stage) + spec.neck:
                h = get_module(model, path)(h)
            h = get_module(model, spec.pooler)(h).flatten(1)
            got = get_module(model, spec.head)(h)
        ok = got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    except Exception as err:  # a layout we misread fails here rather than later
        raise refuse(f"its modules do not run as a chain ({type(err).__name__}: {err})") from err
    finally:
        for m, mode in modes.items():
            m.training = mode
    if not ok:
        raise refuse("running its modules in order does not reproduce timm's forward")


FAMILY = register_family(Family(ArchSpec(model_type=MODEL_TYPE, stem=(), stages=_ROOT, first_conv=_ROOT,
                                         resolver=timm_arch_spec, standardized_stem=True,
                                         channels_keys=_CHANNELS_KEYS)))
