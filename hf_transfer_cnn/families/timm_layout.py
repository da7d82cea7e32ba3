"""timm models that run through timm's own forward (``ArchSpec.forward="native"``): their stage map from timm's coarse
``group_matcher`` (the layer groups of layer-wise LR decay), checked against the model itself.

* stem: the first group (``group_matcher()["stem"]``); parameters it names that no stem module owns (a ViT's
  ``cls_token``/``pos_embed``) are the stem's loose parameters (`ArchSpec.stem_params`);
* stages: the groups between stem and head, in order; more than 8 (one per ViT block) are merged into 4 as equal as
  possible (earlier ones larger), like transformers' ViTs;
* the last group (what no matcher names: a head norm, MobileNetV3's ``conv_head``) less the classifier belongs to the
  last stage; the classifier (``pretrained_cfg["classifier"]``, a Linear or 1x1 conv) is the head; further classifiers
  (distillation heads: named there too, or per-class layers in that group) are replaced with it
  (`ArchSpec.extra_heads`).

Checks, at the size the model is adapted to: timm's forward runs, and each group maps onto whole modules that forward
calls as modules (a frozen module runs frozen only when called; a container it never calls is opened): every
parameter is then in a stage or the head. A stage parameter outside every such module is refused (freezing could
not keep its gradient out); the stem's are guarded (`freezing` drops their gradient while frozen).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..registry import ArchSpec, get_module

__all__ = ["MODEL_TYPE", "ROOT", "CHANNELS_KEYS", "UnsupportedTimmModelError", "refuser", "native_spec",
           "fixed_size", "input_channels"]

MODEL_TYPE = "timm_wrapper"
ROOT = "timm_model"
CHANNELS_KEYS = ("num_channels", "model_args.in_chans")  # TimmWrapper builds the stem from model_args
_MAX_STAGES = 8
_EVEN_STAGES = 4


class UnsupportedTimmModelError(ValueError):
    """The timm model's layout can be described neither as a chain nor as stages timm's own forward runs."""

    def __init__(self, message: str, why: str = ""):
        super().__init__(message)
        self.why = why or message


def refuser(name: str) -> Callable[[str], UnsupportedTimmModelError]:
    """`refuse(why)`: the error for timm model `name`, with what is supported."""
    def refuse(why: str) -> UnsupportedTimmModelError:
        return UnsupportedTimmModelError(
            f"timm model {name!r} is not supported by TransferModel: {why}. Supported are timm models laid out as "
            "stem -> stages -> [neck] -> global_pool -> classifier (ResNet, EfficientNet, RegNet, ...), and models "
            "whose own forward calls timm's stem and stage groups (group_matcher) as modules with a Linear classifier "
            "(ConvNeXt, MobileNetV3, ViT, ...).", why)
    return refuse


def input_channels(model: nn.Module) -> int:
    """Channels a TimmWrapper model's timm model takes: its config's ``model_args["in_chans"]``, else timm's
    ``pretrained_cfg["input_size"]`` (not the first conv's: TResNet's sees 16x the channels after space-to-depth)."""
    args = getattr(getattr(model, "config", None), "model_args", None) or {}
    if isinstance(args.get("in_chans"), int):
        return int(args["in_chans"])
    size = (getattr(getattr(model, ROOT), "pretrained_cfg", None) or {}).get("input_size") or (3,)
    return int(size[0])


def fixed_size(timm_model: nn.Module) -> int | None:
    """The one input size a timm model takes (``pretrained_cfg["fixed_input_size"]``), else None."""
    cfg = getattr(timm_model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return int(max(size[1:])) if cfg.get("fixed_input_size") and size and len(size) == 3 else None


def _classifiers(timm_model: nn.Module, refuse) -> list[str]:
    """``pretrained_cfg["classifier"]`` (one path, or several: distillation heads), each a Linear or 1x1 conv."""
    cfg = dict(getattr(timm_model, "pretrained_cfg", None) or {})
    found = cfg.get("classifier")
    paths = list(found) if isinstance(found, (tuple, list)) else [found]
    if not paths or not all(isinstance(c, str) for c in paths):
        raise refuse("its pretrained_cfg names no classifier")
    for path in paths:
        try:
            module = get_module(timm_model, path)
        except AttributeError:
            raise refuse(f"its classifier {path!r} is not a module of the model") from None
        if not _is_classifier_layer(module):
            raise refuse(f"its classifier {path!r} is a {type(module).__name__}, not a Linear layer or 1x1 conv")
    return paths


def _is_classifier_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1))


def _more_classifiers(timm_model: nn.Module, head_group: list[str], known: list[str]) -> list[str]:
    """Layers in timm's head group that, like the classifier, output one value per class (a distillation head
    pretrained_cfg does not name): replaced with it."""
    num_classes = getattr(timm_model, "num_classes", None)
    names = set(head_group)
    out = []
    for path, m in timm_model.named_modules():
        width = getattr(m, "out_features", None) or getattr(m, "out_channels", None)
        if (path not in known and _is_classifier_layer(m) and width == num_classes
                and all(f"{path}.{n}" in names for n, _ in m.named_parameters())):
            out.append(path)
    return out


def _first_conv(timm_model: nn.Module) -> str | None:
    """pretrained_cfg's first conv, else the first Conv2d (None without one: the channels come from the config)."""
    path = (getattr(timm_model, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(path, str):
        try:
            if isinstance(get_module(timm_model, path), nn.Conv2d):
                return path
        except AttributeError:
            pass
    return next((n for n, m in timm_model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _groups(timm_model: nn.Module, refuse) -> list[list[str]]:
    """Parameter names by timm's coarse layer groups, input to output (unmatched ones, the head, last); without a
    group_matcher, by ``feature_info`` (`_feature_groups`)."""
    from timm.models import group_parameters

    try:
        matcher = timm_model.group_matcher(coarse=True)
    except Exception:  # not every timm model implements it
        return _feature_groups(timm_model, refuse)
    by_id = group_parameters(timm_model, matcher)
    return [list(by_id[k]) for k in sorted(by_id)]


def _feature_groups(timm_model: nn.Module, refuse) -> list[list[str]]:
    """Groups from ``feature_info``: the modules (in definition order; a container is opened when a feature module
    lies inside it) up to the first feature module are the stem (with it when it is the stride-2 stem output), each
    following feature module closes a stage, and what follows the last one is the head group."""
    info = getattr(timm_model, "feature_info", None)
    info = info.get_dicts() if hasattr(info, "get_dicts") else (info or [])
    features = {d["module"]: int(d.get("reduction", 1)) for d in info if d.get("module")}
    if not features:
        raise refuse("it has neither a group_matcher nor feature_info to name its stages")
    groups: list[list[str]] = [[]]

    def visit(prefix: str, module: nn.Module) -> None:
        for pname, _ in module.named_parameters(recurse=False):
            groups[-1].append(prefix + pname)
        for cname, child in module.named_children():
            path = prefix + cname
            if any(f.startswith(path + ".") for f in features):
                visit(path + ".", child)
                continue
            if len(groups) == 1 and features.get(path, 0) > 2 and groups[-1]:
                groups.append([])  # the first stage: the stem ended before it
            groups[-1].extend(f"{path}.{n}" for n, _ in child.named_parameters())
            if path in features:
                groups.append([])

    visit("", timm_model)
    return [g for g in groups if g]


def _cover(root: nn.Module, names: set[str], called: set[str]) -> tuple[list[str], list[str]]:
    """(module paths, loose parameter paths) holding exactly `names`: the largest submodules the forward calls whose
    parameters all lie in `names` (a container it never calls, a ModuleList, is opened), and parameters of `names`
    no such module holds."""
    modules: list[str] = []
    loose: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for pname, _ in module.named_parameters(recurse=False):
            if prefix + pname in names:
                loose.append(prefix + pname)
        for cname, child in module.named_children():
            path = prefix + cname
            params = [path + "." + n for n, _ in child.named_parameters()]
            if params and path in called and all(p in names for p in params):
                modules.append(path)
            elif any(p in names for p in params):
                visit(path + ".", child)

    visit("", root)
    return modules, loose


def _layout(timm_model: nn.Module, classifiers: list[str], called: set[str],
            refuse) -> tuple[list[str], list[str], list[list[str]], list[str]]:
    """(stem modules, stem loose parameters, stage modules per stage, neck modules); `classifiers` grows by the
    further per-class layers the head group holds."""
    groups = _groups(timm_model, refuse)
    classifiers.extend(_more_classifiers(timm_model, groups[-1], classifiers))
    head = {f"{c}.{n}" for c in classifiers for n, _ in get_module(timm_model, c).named_parameters()}
    if not head <= set(groups[-1]):
        raise refuse(f"its classifier {classifiers[0]!r} is not in timm's last (head) parameter group")
    if len(groups) < 3:
        raise refuse("timm groups its parameters into fewer than stem, one stage and head")
    stem, body, tail = groups[0], groups[1:-1], [n for n in groups[-1] if n not in head]
    if len(body) > _MAX_STAGES:
        n = _EVEN_STAGES
        size, extra = divmod(len(body), n)
        bounds = [i * size + min(i, extra) for i in range(n + 1)]
        body = [[name for group in body[bounds[i]:bounds[i + 1]] for name in group] for i in range(n)]
    stem_modules, stem_loose = _cover(timm_model, set(stem), called)
    stages, neck = [], []
    for names, out in [(g, None) for g in body] + [(tail, neck)]:
        modules, loose = _cover(timm_model, set(names), called)
        if loose:
            raise refuse(f"its forward uses parameter(s) {', '.join(loose[:3])} of a stage outside any module it "
                         "calls (freezing acts on called modules)")
        if out is None:
            stages.append(modules)
        else:
            out.extend(modules)
    return stem_modules, stem_loose, stages, neck


def _called(timm_model: nn.Module, channels: int, size: int, refuse) -> set[str]:
    """The submodules timm's forward calls as modules (eval mode, one random `size` px input)."""
    called: set[str] = set()
    handles = [m.register_forward_pre_hook(lambda m, a, p=p: called.add(p))
               for p, m in timm_model.named_modules() if p]
    modes = {m: m.training for m in timm_model.modules()}
    ref = next(timm_model.parameters())
    try:
        timm_model.eval()
        x = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            timm_model(x.to(device=ref.device, dtype=ref.dtype))
    except Exception as err:
        raise refuse(f"its forward fails at {size}x{size} px ({type(err).__name__}: {str(err)[:200]})") from None
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return called


def _head_dropout(timm_model: nn.Module, classifier: str) -> tuple[str | None, float]:
    """The dropout before the classifier: the head's ``drop``, a top-level ``head_drop``, else timm's drop_rate."""
    parent = classifier.rpartition(".")[0]
    for path in ((f"{parent}.drop" if parent else "drop"), "head_drop"):
        try:
            if isinstance(get_module(timm_model, path), nn.Dropout):
                return f"{ROOT}.{path}", 0.0
        except AttributeError:
            continue
    return None, float(getattr(timm_model, "drop_rate", 0.0) or 0.0)


def native_spec(model: nn.Module, size: int, refuse) -> ArchSpec:
    """The stage map of a TimmWrapper model that runs timm's own forward, checked at `size` pixels."""
    timm_model = getattr(model, ROOT)
    classifiers = _classifiers(timm_model, refuse)
    classifier = classifiers[0]
    first_conv = _first_conv(timm_model)
    channels = input_channels(model)
    minimum = fixed_size(timm_model) or 32
    if size < minimum:
        raise refuse(f"it takes {minimum} px inputs only (pretrained_cfg fixed_input_size), not {size} px")
    if next(timm_model.parameters()).device.type == "meta":  # nothing to run: every module counts as called
        called = {p for p, _ in timm_model.named_modules() if p}
    else:
        called = _called(timm_model, channels, size, refuse)
    stem, stem_loose, stages, neck = _layout(timm_model, classifiers, called, refuse)
    dropout, drop_rate = _head_dropout(timm_model, classifier)
    style = "conv" if isinstance(get_module(timm_model, classifier), nn.Conv2d) else "linear"
    def p(paths):
        return tuple(f"{ROOT}.{path}" for path in paths)

    return ArchSpec(
        model_type=MODEL_TYPE, stem=p(stem), stages=ROOT, stage_paths=tuple(p(s) for s in stages), neck=p(neck),
        stem_params=p(stem_loose), first_conv=p([first_conv])[0] if first_conv else ROOT, head=p([classifier])[0],
        extra_heads=p(classifiers[1:]), head_style=style, head_dropout=dropout, head_dropout_rate=drop_rate,
        forward="native", min_image_size=minimum, standardized_stem=True, channels_keys=CHANNELS_KEYS,
    )
