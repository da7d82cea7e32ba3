"""The model card of a finished transfer-learning run.

* `TransferReport` — the facts about a run (base checkpoint, freezing schedule, learning rates, data,
  metrics, plots) that the training recipe fills in.
* `build_model_card` / `write_model_card` — a README.md model card with YAML metadata (library, pipeline tag,
  base model, datasets, tags, license, model-index with the eval metrics) and a body describing the transfer;
  `parse_card_metadata` reads the metadata back.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..model import TransferMeta
from ..registry import in_transformers
from .privacy import portable_base_model
from .usage import usage_snippet

__all__ = [
    "TransferReport",
    "build_model_card",
    "write_model_card",
    "parse_card_metadata",
    "loadable_with_transformers",
    "CARD_TAGS",
]

logger = logging.getLogger(__name__)

CARD_TAGS = ("hf-transfer-cnn", "image-classification", "transfer-learning")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")

# canonical metric key -> (accepted input keys, model-index metric type, display name, metric args)
_METRICS: dict[str, tuple[tuple[str, ...], str, str, dict | None]] = {
    "accuracy": (("accuracy", "top1_accuracy", "top_1_accuracy", "acc"), "accuracy", "Accuracy", None),
    "top5_accuracy": (("top5_accuracy", "top_5_accuracy", "top5_acc", "accuracy_top5", "top5"),
                      "top_5_accuracy", "Top-5 Accuracy", {"k": 5}),
    "macro_f1": (("macro_f1", "f1_macro", "macro_f1_score", "f1_score_macro"), "f1", "Macro F1", {"average": "macro"}),
}


# --- the facts about a run -----------------------------------------------------------------------------

@dataclass
class TransferReport:
    """Everything the model card says about a run. Only `base_model` and `model_type` are required.

    Metrics are fractions in [0, 1] keyed ``accuracy``, ``top5_accuracy``, ``macro_f1`` (an ``eval_`` prefix and a
    few spellings such as ``f1_macro`` / ``top_5_accuracy`` are accepted); other numeric entries are listed in the
    results table but not in the model-index.
    """

    base_model: str
    """The checkpoint the run started from: a Hub id (goes into the ``base_model`` metadata) or a local checkpoint
    (a path or its folder's name; the card shows only the name)."""
    model_type: str
    class_names: list[str] = field(default_factory=list)
    strategy: str | None = None
    """Free text, e.g. "feature extraction, then gradual unfreezing"."""
    phases: list[tuple[int, list[str]]] = field(default_factory=list)
    """(training step at which the phase starts, names of the backbone stages trainable in it); the head
    always trains."""
    stage_names: list[str] = field(default_factory=list)
    """All freezable backbone stages, input to output (lets the card list the frozen ones too)."""
    learning_rate: float | None = None
    """Base learning rate (the head's)."""
    lr_factor: float | None = None
    """Backbone learning rate relative to the base learning rate."""
    stage_lr_decay: float | None = None
    """Further factor per stage going down from the top of the backbone (discriminative learning rates)."""
    num_train_epochs: float | None = None
    train_steps: int | None = None
    batch_size: int | None = None
    dataset_id: str | None = None
    """Hub dataset id (goes into the ``datasets`` metadata)."""
    dataset_dir: str | None = None
    """Local image folder the run was trained on (when not a Hub dataset)."""
    dataset_name: str | None = None
    """Display name; defaults to the dataset id or the folder name."""
    eval_split: str = "validation"
    num_train_images: int | None = None
    num_eval_images: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    per_class_accuracy: dict[str, float] = field(default_factory=dict)
    per_class_support: dict[str, int] = field(default_factory=dict)
    """Number of eval images per class (optional column of the per-class table)."""
    plots: list[str] | None = None
    """PNG paths relative to the output folder; None = every ``*.png`` at the top of the folder."""
    license: str | None = None
    image_size: int | None = None
    num_channels: int | None = None
    head: str | None = None
    """Description of the classifier head (None = the architecture's native linear classifier)."""
    loadable_with_transformers: bool = True
    """Whether plain ``AutoModelForImageClassification`` can load the result (no custom head/adapter)."""
    repo_id: str | None = None
    model_name: str | None = None
    extra_tags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Extra free-text lines for the training section."""
    base_model_local: bool | None = None
    """True: `base_model` names a local checkpoint, even where it reads like a Hub id (a folder's name); None:
    judged from the name (an absolute or existing path is local)."""

    @classmethod
    def from_model(cls, model: Any, **fields: Any) -> TransferReport:
        """Fill base model, type, classes, input size/channels, head and loadability from a `TransferModel`."""
        config = model.config
        meta = TransferMeta.of(config).to_dict()
        id2label = getattr(config, "id2label", None) or {}
        values: dict[str, Any] = {
            "base_model": meta.get("base_model") or getattr(config, "_name_or_path", "") or "unknown",
            "model_type": config.model_type,
            "class_names": [str(id2label[k]) for k in sorted(id2label, key=int)],
            "image_size": meta.get("image_size") or getattr(config, "image_size", None),
            "num_channels": meta.get("input_channels") or getattr(config, "num_channels", None),
            "loadable_with_transformers": loadable_with_transformers(config),
        }
        if meta.get("head"):
            values["head"] = ", ".join(f"{k}={v}" for k, v in meta["head"].items())
        stage_names = getattr(model, "stage_names", None)
        if stage_names:
            values["stage_names"] = list(stage_names)
        values.update(fields)
        return cls(**values)


def loadable_with_transformers(config: Any) -> bool:
    """True when plain transformers (no hf_transfer_cnn installed) can rebuild the model from its config."""

    config = getattr(config, "config", config)
    meta = TransferMeta.of(config).to_dict()
    return (in_transformers(config.model_type) and not meta.get("head")
            and meta.get("input_channels") is None)


# --- model card ----------------------------------------------------------------------------------------

def _hub_id(name: str | None) -> str | None:
    """`name` if it reads as a Hub repo id (and is not an existing local path), else None."""
    if not name or os.path.exists(name) or not _HUB_ID.match(name) or ".." in name:
        return None
    return name


def _canonical_metrics(metrics: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(the model-index metrics by canonical key, the other numeric metrics) from a Trainer-style dict."""
    known: dict[str, float] = {}
    other: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, (bool, str)):
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isnan(value):
            continue
        bare = key[len("eval_"):] if key.startswith("eval_") else key
        for canon, (aliases, *_rest) in _METRICS.items():
            if bare in aliases:
                known.setdefault(canon, value)
                break
        else:
            other[key] = value
    return known, other


def _fmt(value: float) -> str:
    """A metric value: 4 decimals, or compact for large numbers (runtimes, counts)."""
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:g}"


def _fmt_lr(value: float) -> str:
    """A learning rate or factor, shortest form."""
    return f"{value:g}"


def _plots(report: TransferReport, output_dir: Path | None) -> list[str]:
    """The plots to embed: the listed ones present in `output_dir` (or, listing none, its top-level PNGs)."""
    if report.plots is None:
        if output_dir is None:
            return []
        return sorted(p.name for p in output_dir.glob("*.png") if p.is_file())
    plots = []
    for rel in report.plots:
        rel = Path(rel).as_posix()
        if output_dir is not None and not (output_dir / rel).is_file():
            logger.warning("Model card: plot %s is not in %s; it is left out of the card.", rel, output_dir)
            continue
        plots.append(rel)
    return plots


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table (``|`` in cells escaped)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def _card_metadata(report: TransferReport, model_name: str, dataset_name: str) -> dict[str, Any]:
    """The YAML front matter: library, pipeline tag, base model, datasets, tags, license and model-index."""
    from huggingface_hub import EvalResult, ModelCardData

    known, _ = _canonical_metrics(report.metrics)
    dataset_id = _hub_id(report.dataset_id)
    eval_results = [
        EvalResult(
            task_type="image-classification", task_name="Image Classification",
            dataset_type=dataset_id or "imagefolder", dataset_name=dataset_name, dataset_split=report.eval_split,
            metric_type=_METRICS[key][1], metric_name=_METRICS[key][2], metric_value=known[key],
            metric_args=_METRICS[key][3],
        )
        for key in _METRICS if key in known
    ]
    tags = list(dict.fromkeys([*CARD_TAGS, report.model_type, *report.extra_tags]))
    data = ModelCardData(  # the Hub's "Use in Transformers" button / widget only where plain transformers works
        library_name="transformers" if report.loadable_with_transformers else "hf-transfer-cnn",
        pipeline_tag="image-classification",
        base_model=_base_hub(report),
        datasets=[dataset_id] if dataset_id else None,
        license=report.license,
        tags=tags,
        metrics=[_METRICS[k][1] for k in _METRICS if k in known] or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    return data.to_dict()



def _dataset_local(report: TransferReport) -> str | None:
    """The local folder the run's data came from (``dataset_dir``, or a ``dataset_id`` that is no Hub id)."""
    return report.dataset_dir or (report.dataset_id if not _hub_id(report.dataset_id) else None)


def _dataset_name(report: TransferReport) -> str:
    """Display name of the data: as given, else the Hub id, else the local folder's name (never its path)."""
    local = _dataset_local(report)
    return (report.dataset_name or _hub_id(report.dataset_id)
            or (Path(local).resolve().name if local else None) or "custom image dataset")


def _model_name(report: TransferReport, out: Path | None) -> str:
    """Card title / model-index name: as given, else the repo's name, else the output folder's name."""
    return (report.model_name or (report.repo_id.split("/")[-1] if report.repo_id else None)
            or (out.resolve().name if out is not None else None) or f"{report.model_type}-transfer")


def _base_hub(report: TransferReport) -> str | None:
    """The base checkpoint's Hub id, or None for a local one."""
    if report.base_model_local or os.path.isabs(os.path.expanduser(report.base_model or "")):
        return None
    return _hub_id(report.base_model)


def _base_ref(report: TransferReport) -> str:
    """Markdown naming the base checkpoint: a Hub link, or the local checkpoint's folder name (never its path)."""
    base_hub = _base_hub(report)
    if base_hub:
        return f"[`{base_hub}`](https://huggingface.co/{base_hub})"
    return f"a local checkpoint (`{portable_base_model(report.base_model)}`)"


def _intro_section(report: TransferReport, model_name: str, dataset_name: str, base_ref: str) -> list[str]:
    """Title and one-sentence summary."""
    n_classes = len(report.class_names) or len(report.per_class_accuracy)
    summary = (f"An image classifier fine-tuned from {base_ref} (`{report.model_type}`) on **{dataset_name}** with "
               "hf-transfer-cnn transfer learning" + (f", predicting {n_classes} classes." if n_classes else "."))
    return [f"# {model_name}", "", summary, ""]


def _results_section(report: TransferReport, out: Path | None) -> list[str]:
    """"Results": the metrics table, per-class accuracy and the plots."""
    lines = ["## Results", ""]
    known, other = _canonical_metrics(report.metrics)
    split_desc = f"the `{report.eval_split}` split"
    if report.num_eval_images is not None:
        split_desc += f" ({report.num_eval_images} images)"
    if known or other:
        lines += [f"Evaluated on {split_desc}.", ""]
        rows = [[_METRICS[k][2], _fmt(known[k])] for k in _METRICS if k in known]
        rows += [[k, _fmt(v)] for k, v in other.items()]
        lines += _table(["Metric", "Value"], rows) + [""]
    else:
        lines += ["No evaluation metrics were recorded for this run.", ""]
    return lines + _per_class_lines(report) + _plot_lines(_plots(report, out))


def _per_class_lines(report: TransferReport) -> list[str]:
    """The per-class accuracy table (with the eval images per class when known); nothing without per-class data."""
    if not report.per_class_accuracy:
        return []
    header = ["Class", "Accuracy"] + (["Eval images"] if report.per_class_support else [])
    rows = []
    for name, acc in report.per_class_accuracy.items():
        row = [str(name), _fmt(float(acc))]
        if report.per_class_support:
            row.append(str(report.per_class_support.get(name, "—")))
        rows.append(row)
    return ["### Per-class accuracy", "", *_table(header, rows), ""]


def _plot_lines(plots: Sequence[str]) -> list[str]:
    """The embedded plots, captioned from their file names."""
    if not plots:
        return []
    lines = ["### Plots", ""]
    for rel in plots:
        caption = Path(rel).stem.replace("_", " ").replace("-", " ").capitalize()
        lines += [f"![{caption}]({rel})", ""]
    return lines


def _transfer_section(report: TransferReport, base_ref: str) -> list[str]:
    """"Transfer learning": base, strategy, head, input, learning rates, training length, freezing schedule."""
    lines = ["## Transfer learning", ""]
    lines.append(f"- **Base checkpoint:** {base_ref}, architecture `{report.model_type}`")
    if report.strategy:
        lines.append(f"- **Strategy:** {report.strategy}")
    head = report.head or "the architecture’s native linear classifier, re-initialised for the new classes"
    lines.append(f"- **Classifier head:** {head}")
    if report.image_size or report.num_channels:
        size = f"{report.image_size}×{report.image_size} px" if report.image_size else "native size"
        chans = f", {report.num_channels} channel(s)" if report.num_channels else ""
        lines.append(f"- **Input:** {size}{chans}")
    lines += _lr_lines(report)
    if report.num_train_epochs is not None:
        lines.append(f"- **Epochs:** {float(report.num_train_epochs):g}")
    if report.train_steps is not None:
        lines.append(f"- **Training steps:** {report.train_steps}")
    if report.batch_size is not None:
        lines.append(f"- **Batch size:** {report.batch_size} (per optimizer step: all devices and accumulation steps)")
    lines += [f"- {note}" for note in report.notes]
    lines.append("")
    return lines + _schedule_lines(report)


def _lr_lines(report: TransferReport) -> list[str]:
    """Bullets for the base learning rate, ``lr_factor`` and ``stage_lr_decay`` (those that were set)."""
    lines = []
    if report.learning_rate is not None:
        lines.append(f"- **Learning rate:** {_fmt_lr(report.learning_rate)} (the configured schedule's peak)")
    if report.lr_factor is not None:
        text = (f"- **lr_factor:** {_fmt_lr(report.lr_factor)} (from the first unfreeze on, every learning rate — "
                "head and backbone — is this factor times the configured schedule")
        if report.learning_rate is not None:
            text += f"; peak {_fmt_lr(report.learning_rate * report.lr_factor)}"
        lines.append(text + ")")
    if report.stage_lr_decay is not None:
        lines.append(f"- **stage_lr_decay:** {_fmt_lr(report.stage_lr_decay)} (the top trainable stage trains at this "
                     "factor times the head's learning rate, each lower stage at this factor times the stage above)")
    return lines


def _schedule_lines(report: TransferReport) -> list[str]:
    """The freezing schedule table: trainable (and frozen) backbone stages from each phase's first step."""
    if not report.phases:
        return []
    lines = ["### Freezing schedule", "", "The head trains throughout; backbone stages train as listed "
             "(frozen stages run in inference mode: no gradients, BatchNorm statistics kept).", ""]
    header = ["From step", "Trainable backbone stages"] + (["Frozen stages"] if report.stage_names else [])
    rows = []
    for step, trainable in sorted(report.phases, key=lambda p: p[0]):
        trainable = list(trainable)
        row = [str(step), ", ".join(trainable) or "none (head only)"]
        if report.stage_names:
            frozen = [s for s in report.stage_names if s not in trainable]
            row.append(", ".join(frozen) or "none")
        rows.append(row)
    return lines + _table(header, rows) + [""]


def _data_section(report: TransferReport, dataset_name: str) -> list[str]:
    """"Data": the dataset (a Hub link, or a local folder's name), image counts and the classes."""
    lines = ["## Data", ""]
    if _hub_id(report.dataset_id):
        lines.append(f"- **Dataset:** [`{report.dataset_id}`](https://huggingface.co/datasets/{report.dataset_id})")
    elif _dataset_local(report):
        lines.append(f"- **Dataset:** local data `{dataset_name}`")
    else:
        lines.append(f"- **Dataset:** {dataset_name}")
    if report.num_train_images is not None:
        lines.append(f"- **Training images:** {report.num_train_images}")
    if report.num_eval_images is not None:
        lines.append(f"- **Evaluation images ({report.eval_split}):** {report.num_eval_images}")
    if report.class_names:
        shown = ", ".join(f"`{c}`" for c in report.class_names[:50])
        more = f" … (+{len(report.class_names) - 50} more)" if len(report.class_names) > 50 else ""
        lines.append(f"- **Classes ({len(report.class_names)}):** {shown}{more}")
    lines.append("")
    return lines


def _usage_section(report: TransferReport, model_name: str) -> list[str]:
    """"How to use": loading code for the pushed repo (or a placeholder path)."""
    ref = report.repo_id or f"path/to/{model_name}"
    return ["## How to use", "", *usage_snippet(ref, num_channels=report.num_channels, image_size=report.image_size,
                                                loadable=report.loadable_with_transformers)]


def build_model_card(report: TransferReport, output_dir: str | os.PathLike | None = None) -> str:
    """The README.md text (YAML front matter + markdown) for a run.

    With `output_dir`, plot links are checked against the folder (missing ones are left out) and, when
    ``report.plots`` is None, every top-level ``*.png`` of the folder is embedded. The YAML is parsed back and
    checked before returning.
    """
    out = Path(output_dir) if output_dir is not None else None
    dataset_name = _dataset_name(report)
    model_name = _model_name(report, out)
    metadata = _card_metadata(report, model_name, dataset_name)
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    base_ref = _base_ref(report)
    lines = [*_intro_section(report, model_name, dataset_name, base_ref), *_results_section(report, out),
             *_transfer_section(report, base_ref), *_data_section(report, dataset_name),
             *_usage_section(report, model_name)]
    text = f"---\n{front}---\n\n" + "\n".join(lines).rstrip() + "\n"
    _check_card(text, metadata)
    return text


def parse_card_metadata(text: str) -> dict[str, Any]:
    """The YAML front matter of a model card, as a dict (empty when there is none)."""
    match = re.match(r"^---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|$)", text, flags=re.S)
    if not match:
        return {}
    data = yaml.safe_load(match.group(1))
    if data is not None and not isinstance(data, dict):
        raise ValueError("Model card metadata is not a YAML mapping.")
    return data or {}


def _check_card(text: str, expected: dict[str, Any]) -> None:
    """Raise ValueError unless `text`'s metadata parses back to `expected` and passes huggingface_hub's checks."""
    from huggingface_hub import ModelCard

    parsed = parse_card_metadata(text)
    if parsed != expected:
        raise ValueError("Model card metadata does not round-trip through YAML.")
    for key in ("library_name", "pipeline_tag", "tags"):
        if key not in parsed:
            raise ValueError(f"Model card metadata lacks {key!r}.")
    ModelCard(text, ignore_metadata_errors=False)  # huggingface_hub's own parser (model-index included)


def write_model_card(report: TransferReport, output_dir: str | os.PathLike) -> Path:
    """Write ``README.md`` for `report` into `output_dir` and return its path."""
    path = Path(output_dir) / "README.md"
    path.write_text(build_model_card(report, output_dir), encoding="utf-8")
    return path
