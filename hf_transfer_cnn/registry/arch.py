"""Per-architecture facts, as data.

Everything hf-transfer-cnn knows about a model type's layout lives in one `ArchSpec`: where the stem, the stages,
the neck and the head are (as dotted module paths of the *ForImageClassification* model), which conv sees the
pixels, the smallest input it can take, and how the model runs: as the chain of those modules (``forward="chain"``,
CNNs whose forward is exactly that chain) or through the model's own forward (``forward="native"``: ViTs, Swin,
timm models whose forward is not a chain; frozen stages still run frozen, because freezing works on the modules).
The rest of the library derives behaviour from these facts with small pure functions (`stage_units`,
`get_module`). Families (``hf_transfer_cnn.families``) register their specs here; this module imports nothing else
of the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Literal

from torch import nn

__all__ = ["ArchSpec", "StageUnit", "register_arch", "get_arch", "resolve_arch", "forget_resolved_arch",
           "supported_model_types", "stage_units", "get_module", "set_module", "group_by_stride", "group_evenly",
           "UnsupportedArchitectureError", "in_transformers", "CONFIG_KEY", "input_size_hint"]

CONFIG_KEY = "hf_transfer_cnn"
"""The config section where a TransferModel records itself (`model.meta.TransferMeta`)."""


class UnsupportedArchitectureError(ValueError):
    """Raised for a `model_type` the registry does not know."""


@dataclass(frozen=True)
class ArchSpec:
    """Where things are in one architecture's image-classification model.

    Paths are dotted attribute paths from the top-level classification model.
    """

    model_type: str
    stem: tuple[str, ...]
    """Modules run in order on the pixels, before the first stage."""
    stages: str
    """A ModuleList: each entry a stage (``grouping="modules"``) or a block (``grouping="stride"``/``"even"``)."""
    first_conv: str
    """The conv that sees the pixels (input-channel adaptation happens here)."""
    _: KW_ONLY  # the rest by name, so that a new field never shifts a positional argument
    grouping: Literal["modules", "stride", "even"] = "modules"
    """"stride": consecutive blocks are grouped into stages by output resolution; a block that
    downsamples starts a new stage. "even": the blocks (all at one resolution, as in a ViT) are split into
    ``min(even_stages, len(blocks))`` consecutive groups as equal as possible, earlier groups taking the extra block
    (12 layers -> 3+3+3+3, 6 -> 2+2+1+1)."""
    even_stages: int = 4
    """How many stages ``grouping="even"`` makes."""
    forward: Literal["chain", "native"] = "chain"
    """"chain": TransferModel runs stem -> stages -> neck -> pooler -> head itself (and can run a frozen prefix as
    one inference graph, pool by max/concat, return stage outputs as hidden states). "native": it runs the model
    class's own forward (the stages named here are what freezing acts on; the classifier at `head` is what a new
    task replaces); only the head's own pooling is available."""
    forward_kwargs: tuple[tuple[str, object], ...] = ()
    """Keyword arguments the native forward always gets (ViT: ``(("interpolate_pos_encoding", True),)``, so that
    any input size runs)."""
    position_embeddings: str | None = None
    """Absolute position embeddings (a Parameter path) on a grid fixed by ``config.image_size``: a new image size
    resamples them (bicubic, as the model interpolates) and sets ``config.image_size``, so the saved folder runs the
    new size in plain transformers. Without it, a native-forward model keeps ``config.image_size`` (it fixes parameter
    shapes) and runs other sizes by its own interpolation."""
    prefix_tokens: int = 1
    """Tokens before the patch tokens in `position_embeddings` (class token; DeiT: class + distillation)."""
    neck: tuple[str, ...] = ()
    """Modules after the last stage, before pooling; frozen and unfrozen with the last stage."""
    pooler: str | None = None
    """Module producing the pooled features (then flattened); None means a global mean over H and W."""
    post_pool: tuple[str, ...] = ()
    """Modules applied to the pooled vector before the head; they belong to the last stage."""
    head_dropout: str | None = None
    """Dropout module applied before the classifier (part of the head)."""
    head_dropout_config: str | None = None
    """The config key the head dropout's rate comes from (kept in step when a new head resets an unusable rate)."""
    head_dropout_rate: float = 0.0
    """Dropout the model applies functionally before its classifier, when it has no such module (timm's
    ``drop_rate`` in ResNet/EfficientNet): applied as `head_dropout` would be."""
    head: str = "classifier"
    """The classifier: the "DNN layers" a new task replaces."""
    extra_heads: tuple[str, ...] = ()
    """Further classifiers whose logits the model's own forward combines with `head`'s (distillation heads): a new
    task replaces them alongside it (native layout only)."""
    head_style: Literal["linear", "flatten_linear", "mlp", "conv"] = "linear"
    """How the native classifier is built: a Linear, Sequential(Flatten, Linear), an MLP whose last
    Linear is the output layer, or a 1x1 Conv2d on the pooled ``[N, C, 1, 1]`` map (timm's DLA)."""
    min_image_size: int = 32
    """Smallest square input (pixels) the network is built for."""
    min_image_size_for: Callable[[object], int] | None = None
    """When the minimum depends on the config (LeNet-5: on C1's padding): config -> minimum, used instead."""
    standardized_stem: bool = False
    """The first conv standardises its own weights (BiT), so channel changes cannot be folded into it."""
    channels_keys: tuple[str, ...] = ("num_channels",)
    """Where a config states the input channels its native class builds the stem for: attributes, or
    ``attr.key`` for a key inside a dict attribute (timm reads ``model_args.in_chans``). A folder saved with an input
    adapter writes its input channels there, so that plain transformers refuses it rather than drop the adapter."""
    stage_paths: tuple[tuple[str, ...], ...] = ()
    """Explicit stage map: one tuple of module paths per stage, in forward order. When given it is used instead of
    `stages`/`grouping`, for models whose stages are not one ModuleList (torchvision's AlexNet/GoogLeNet, timm).
    A path whose module is None (an optional part the config leaves out, e.g. BEiT's shared position bias) is
    skipped."""
    stem_params: tuple[str, ...] = ()
    """Parameters of the stem that no stem module owns: the model's own forward uses them directly (timm ViTs'
    ``cls_token``/``pos_embed``). Only for ``forward="native"``."""
    resolver: Callable[[nn.Module], ArchSpec] | None = None
    """For model types whose layout differs per checkpoint (``timm_wrapper``): returns the spec of one model
    instance (see `resolve_arch`); the registered spec then only serves checks made before a model exists."""

    def min_size(self, config: object | None = None) -> int:
        """The smallest square input for a model with `config` (the static `min_image_size` without one)."""
        if config is not None and self.min_image_size_for is not None:
            return int(self.min_image_size_for(config))
        return self.min_image_size


@dataclass
class StageUnit:
    """One freezable unit: a named stage and the modules it is made of, in forward order; `params` are parameters
    no module of the unit owns (used directly by a parent's forward: timm ViTs' class token and position embedding)."""

    name: str
    modules: list[nn.Module]
    params: list[nn.Parameter] = field(default_factory=list)

    def parameters(self):
        for m in self.modules:
            yield from m.parameters()
        yield from self.params


_REGISTRY: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec, *, overwrite: bool = False) -> ArchSpec:
    """Add an architecture's facts to the registry."""
    if spec.model_type in _REGISTRY and not overwrite:
        raise ValueError(f"model_type {spec.model_type!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[spec.model_type] = spec
    return spec


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_arch(model_type: str | None) -> ArchSpec:
    """The registry entry for `model_type`, or an error naming it and listing what is supported."""
    spec = _REGISTRY.get(model_type or "")
    if spec is None:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not supported by hf-transfer-cnn. Supported model types: "
            f"{', '.join(supported_model_types())}. To add one, describe it with "
            "`hf_transfer_cnn.registry.register_arch(ArchSpec(...))`."
        )
    return spec


_RESOLVED_ATTR = "_hf_transfer_resolved_arch"


def resolve_arch(model: nn.Module, spec: ArchSpec | None = None) -> ArchSpec:
    """The spec that describes `model`: the registered one, or — for model types with a `resolver` — the one
    derived from this instance (computed once, then cached on the model)."""
    if spec is None:
        spec = get_arch(getattr(getattr(model, "config", None), "model_type", None))
    if spec.resolver is None:
        return spec
    resolved = model.__dict__.get(_RESOLVED_ATTR)
    if resolved is None:
        resolved = spec.resolver(model)
        model.__dict__[_RESOLVED_ATTR] = resolved
    return resolved


def forget_resolved_arch(model: nn.Module) -> None:
    """Drop the spec `resolve_arch` cached on `model` (after a change the resolver reads: the input size)."""
    model.__dict__.pop(_RESOLVED_ATTR, None)


def input_size_hint(model: nn.Module) -> int | None:
    """The square input size `model` is adapted to (the ``image_size`` its `CONFIG_KEY` section records), else the
    config's own ``image_size``; None when neither says."""
    config = getattr(model, "config", None)
    section = getattr(config, CONFIG_KEY, None)
    size = section.get("image_size") if isinstance(section, dict) else None
    if size is None:
        size = getattr(config, "image_size", None)
    if isinstance(size, (tuple, list)) and size:
        size = max(size)
    return int(size) if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def in_transformers(model_type: str) -> bool:
    """Whether transformers itself defines an image-classification model for `model_type` (no remote code)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    return model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Resolve a dotted attribute path (`"resnet.encoder.stages"`) below `root`."""
    mod = root
    for part in path.split("."):
        indexed = part.isdigit() and isinstance(mod, (nn.ModuleList, nn.Sequential))
        mod = mod[int(part)] if indexed else getattr(mod, part)
    return mod


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = get_module(root, parent_path) if parent_path else root
    if name.isdigit() and isinstance(parent, (nn.ModuleList, nn.Sequential)):
        parent[int(name)] = new
    else:
        setattr(parent, name, new)


def block_stride(block: nn.Module) -> int:
    """How much a block downsamples: the largest stride of any conv or pool inside it."""
    stride = 1
    for m in block.modules():
        s = getattr(m, "stride", None)
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and s is not None:
            s = s if isinstance(s, int) else max(s)
            stride = max(stride, int(s))
    return stride


def group_by_stride(blocks: list[nn.Module]) -> list[list[nn.Module]]:
    """Consecutive blocks at the same output resolution form one stage; a downsampling block opens one."""
    groups: list[list[nn.Module]] = []
    for block in blocks:
        if not groups or block_stride(block) > 1:
            groups.append([block])
        else:
            groups[-1].append(block)
    return groups


def group_evenly(blocks: list[nn.Module], num_stages: int) -> list[list[nn.Module]]:
    """`blocks` in ``min(num_stages, len(blocks))`` consecutive groups as equal as possible (earlier ones larger)."""
    n = max(1, min(num_stages, len(blocks)))
    size, extra = divmod(len(blocks), n)
    groups, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        groups.append(blocks[start:end])
        start = end
    return [g for g in groups if g]


def _modules_at(model: nn.Module, paths: tuple[str, ...]) -> list[nn.Module]:
    """The modules at `paths`, leaving out optional ones the config did not build (None)."""
    return [m for m in (get_module(model, p) for p in paths) if m is not None]


def _parameter_at(model: nn.Module, path: str) -> nn.Parameter | None:
    owner, _, name = path.rpartition(".")
    return getattr(get_module(model, owner) if owner else model, name, None)


def stage_units(model: nn.Module, spec: ArchSpec) -> list[StageUnit]:
    """The model's freezable units, input to output: ``stem``, ``stage1`` … ``stageN``.

    The neck and post-pool modules are part of the last stage. The head is not a unit: it always trains.
    """
    spec = resolve_arch(model, spec)
    stem = _modules_at(model, spec.stem)
    adapter = getattr(model, "input_adapter", None)
    if isinstance(adapter, nn.Module):
        stem.insert(0, adapter)
    if spec.stage_paths:
        groups = [_modules_at(model, paths) for paths in spec.stage_paths]
    else:
        stage_list = list(get_module(model, spec.stages))
        groups = (group_by_stride(stage_list) if spec.grouping == "stride"
                  else group_evenly(stage_list, spec.even_stages) if spec.grouping == "even"
                  else [[s] for s in stage_list])
    loose = [_parameter_at(model, p) for p in spec.stem_params]
    units = [StageUnit("stem", stem, [p for p in loose if p is not None])]
    units += [StageUnit(f"stage{i + 1}", g) for i, g in enumerate(groups)]
    units[-1].modules.extend(_modules_at(model, spec.neck + spec.post_pool))
    return units
