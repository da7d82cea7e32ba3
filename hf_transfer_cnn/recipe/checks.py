"""Checks of the recipe's option values, each error naming the option and the bad value: the config file read
strictly (a key given twice is an error, a value of the wrong type is one instead of reaching the run as it is),
then every parsed value in range (finite learning rates, a stage count, a schedule, hidden sizes, an image size).

Why here: argparse converts command-line strings with the option's type, but uses a config file's values (its
defaults) as they are, so ``max_steps: 2.5`` or ``image_mean: "0.5"`` reached Trainer and the transforms
unchecked, and ``num_stages: two`` failed deep in the run with ``invalid literal for int()``."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

__all__ = ["MAX_IMAGE_SIZE", "load_config_mapping", "check_file_values", "parse_schedule", "check_values"]

MAX_IMAGE_SIZE = 4096
"""The largest `image_size` accepted (one 4096² RGB image is 200 MB as float32)."""
_OWN = ("ModelArguments", "DataArguments", "TransformArguments")
"""The recipe's own argument classes: their text options must be text (or a number: ``num_stages: 2``)."""


def load_config_mapping(path: str) -> dict:
    """The mapping of a YAML or JSON config file; a key given twice is an error naming it (and its line)."""
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.load(text, Loader=_loader_class(path)) or {}
    else:
        data = json.loads(text, object_pairs_hook=lambda pairs: _unique_pairs(pairs, path))
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(data).__name__}.")
    return data


def _unique_pairs(pairs: list[tuple[str, Any]], path: str) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"{path}: key {key!r} is given twice (values {seen[key]!r} and {value!r}); keep one.")
        seen[key] = value
    return seen


def _loader_class(path: str):
    """A yaml SafeLoader that refuses a mapping key given twice (PyYAML keeps the last one without a word)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ValueError(f"{path}: key {key!r} is given twice (lines {seen[key]} and "
                                     f"{line}); keep one.")
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


# --- the config file's values --------------------------------------------------------------------------------

def check_file_values(parser, cfg: dict, config: str) -> None:
    """Convert `cfg`'s values (in place) to their option's type, or raise naming the option and the value."""
    owner = {f.name: dc.__name__ for dc in parser.dataclass_types for f in fields(dc)}
    actions: dict[str, Any] = {}
    for action in parser._actions:
        if action.type is not None:
            actions.setdefault(action.dest, action)
    for name, value in list(cfg.items()):
        if value is None or name not in actions:
            continue
        cfg[name] = _file_value(actions[name], name, value, owner.get(name) in _OWN, config)


def _file_value(action, name: str, value: Any, own: bool, config: str) -> Any:
    if action.nargs in ("+", "*"):
        if not isinstance(value, list):
            raise ValueError(f"{config}: {name}: {value!r} is not a list; write a YAML/JSON list, e.g. "
                             f"{name}: [0.5, 0.5, 0.5].")
        return [_scalar(action, name, v, own, config) for v in value]
    return _scalar(action, name, value, own, config)


def _scalar(action, name: str, value: Any, own: bool, config: str) -> Any:
    kind = action.type
    if kind is int:
        return _number(int, name, value, config)
    if kind is float:
        return _number(float, name, value, config)
    if getattr(kind, "__name__", "") == "string_to_bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return kind(value)
            except Exception:  # noqa: BLE001 - argparse's converter raises its own types
                pass
        raise ValueError(f"{config}: {name}: {value!r} is not a boolean; use true or false.")
    if action.choices:
        if value is False and "no" in [str(c) for c in action.choices]:
            value = "no"  # YAML 1.1 reads an unquoted `no` as false: `save_strategy: no` means "no"
        choice = kind(value) if isinstance(value, str) else value
        if choice not in action.choices:
            raise ValueError(f"{config}: {name}: {value!r} is not one of {', '.join(map(str, action.choices))}.")
        return choice
    if name == "resume_from_checkpoint" and isinstance(value, bool):
        return "true" if value else None
    if not own or isinstance(value, str):
        return value
    if name == "schedule" and isinstance(value, int):  # YAML 1.1 reads an unquoted 300:2 as a base-60 number
        raise ValueError(f"{config}: schedule: the file's value was read as the number {value} (YAML reads an "
                         "unquoted step:stages as a base-60 number); quote it, e.g. schedule: \"300:2\".")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{config}: {name}: {value!r} is not text; give a string, e.g. {name}: \"...\".")


def _number(kind: type, name: str, value: Any, config: str) -> int | float:
    what = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{config}: {name}: {value!r} is not {what}.")
    try:
        number = float(value) if isinstance(value, str) else value  # YAML reads 1e-3 (no dot) as text
    except ValueError:
        raise ValueError(f"{config}: {name}: {value!r} is not {what}.") from None
    if kind is float:
        return float(number)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    if isinstance(number, float):
        raise ValueError(f"{config}: {name}: {value!r} is not {what}; use a whole number.")
    return int(number)


# --- the parsed values -----------------------------------------------------------------------------------------

def parse_schedule(text: str) -> list[tuple[int, int | str]]:
    """``"0:0,300:2,900:all"`` → ``[(0, 0), (300, 2), (900, "all")]``; a malformed entry is an error naming it."""
    phases = []
    for part in str(text).split(","):
        step, _, stages = (s.strip() for s in part.strip().partition(":"))
        if not step.isdigit() or not (stages.isdigit() or stages.lower() == "all"):
            raise ValueError(f"schedule={text!r}: entry {part.strip()!r} must look like 'step:stages' (a step number, "
                             "then a number of stages or 'all'), e.g. '0:0,300:2,900:all'.")
        phases.append((int(step), "all" if stages.lower() == "all" else int(stages)))
    return phases



def check_values(model_args, transform_args, training_args) -> None:
    """Every option in range, each error naming the option and its value."""
    _check_stages(model_args)
    _check_model_numbers(model_args)
    for key in ("image_mean", "image_std"):
        for v in getattr(transform_args, key, None) or []:
            _finite(key, v, getattr(transform_args, key))
    t = training_args
    _finite("learning_rate", t.learning_rate, minimum=0)
    _finite("weight_decay", t.weight_decay)
    if t.gradient_accumulation_steps < 1:
        raise ValueError(f"gradient_accumulation_steps={t.gradient_accumulation_steps!r}: use 1 or more (1 = an "
                         "optimizer step after every batch).")
    if t.per_device_train_batch_size < 1:
        raise ValueError(f"per_device_train_batch_size={t.per_device_train_batch_size!r}: use 1 or more.")
    if not t.max_steps or t.max_steps <= 0:
        _finite("num_train_epochs", t.num_train_epochs, minimum=0, exclusive=True)


def _check_stages(model_args) -> None:
    value = str(model_args.num_stages).strip()
    if value.lower() != "all" and not (value.isdigit()):
        raise ValueError(f"num_stages={model_args.num_stages!r}: use a number of backbone stages (0 or more) or "
                         "'all'.")
    if model_args.schedule is not None:
        parse_schedule(model_args.schedule)
    if model_args.head_hidden_sizes:
        parts = [h.strip() for h in str(model_args.head_hidden_sizes).split(",") if h.strip()]
        if not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"head_hidden_sizes={model_args.head_hidden_sizes!r}: use comma-separated positive "
                             "integers, e.g. '512,256'.")


def _check_model_numbers(model_args) -> None:
    m = model_args
    _finite("lr_factor", m.lr_factor, minimum=0)
    if m.stage_lr_decay is not None:
        _finite("stage_lr_decay", m.stage_lr_decay, minimum=0, exclusive=True)
    if m.unfreeze_at_epoch is not None:
        _finite("unfreeze_at_epoch", m.unfreeze_at_epoch, minimum=0)
    if m.unfreeze_at_step is not None and m.unfreeze_at_step < 0:
        raise ValueError(f"unfreeze_at_step={m.unfreeze_at_step!r}: use 0 or more.")
    _finite("head_dropout", m.head_dropout, minimum=0)
    if m.head_dropout >= 1:
        raise ValueError(f"head_dropout={m.head_dropout!r}: use a probability below 1.")
    if m.image_size is not None and not 1 <= m.image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size={m.image_size!r}: use a side length in pixels from 1 to {MAX_IMAGE_SIZE} "
                         "(or leave it unset for the checkpoint's).")
    if m.num_channels is not None and m.num_channels < 1:
        raise ValueError(f"num_channels={m.num_channels!r}: use 1 or more (1 = grayscale, 3 = RGB).")
    if m.shuffle_buffer_size < 0:
        raise ValueError(f"shuffle_buffer_size={m.shuffle_buffer_size!r}: use 0 or more (0 = no shuffling).")


def _finite(name: str, value: float, whole: Any = None, *, minimum: float | None = None,
            exclusive: bool = False) -> None:
    shown = f"{name}={whole!r}" if whole is not None else f"{name}={value!r}"
    if not math.isfinite(value):
        raise ValueError(f"{shown}: not a finite number; give a finite value.")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise ValueError(f"{shown}: use a value {'above' if exclusive else 'of at least'} {minimum}.")
