"""Publishing a finished transfer-learning run on the Hugging Face Hub.

* `TransferReport` — the facts about a run (base checkpoint, freezing schedule, learning rates, data,
  metrics, plots) that the training recipe fills in.
* `build_model_card` / `write_model_card` — a README.md model card with YAML metadata (library, pipeline tag,
  base model, datasets, tags, license, model-index with the eval metrics) and a body describing the transfer.
* `push_output_dir` — upload an output folder to a Hub repo. Any failure raises `HubPushError`, whose message
  says what failed, that the local folder is untouched, and how to retry. Local files are only ever read.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..model import TransferMeta
from ..registry import in_transformers

__all__ = [
    "TransferReport",
    "HubPushError",
    "build_model_card",
    "write_model_card",
    "parse_card_metadata",
    "push_output_dir",
    "retry_instructions",
    "loadable_with_transformers",
    "PUSH_IGNORE_PATTERNS",
    "CARD_TAGS",
]

logger = logging.getLogger(__name__)

CARD_TAGS = ("hf-transfer-cnn", "image-classification", "transfer-learning")

# Left out of a push: training checkpoints (also an overwritten run's, moved aside by the recipe), TensorBoard runs,
# resume-only optimizer state, and Trainer's pickled TrainingArguments (training_args.bin holds hub_token; the model
# card and all_results.json record the settings).
PUSH_IGNORE_PATTERNS = [
    "training_args.bin",
    "*/training_args.bin",
    "checkpoints/",
    "checkpoint-*/",
    "*/checkpoint-[0-9]*/",
    "overwritten-*/",
    "runs/",
    ".ipynb_checkpoints/",
    "__pycache__/",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
]

_DEFAULT_ENDPOINT = "https://huggingface.co"
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
    """The checkpoint the run started from: a Hub id (goes into the ``base_model`` metadata) or a local path."""
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
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:g}"


def _fmt_lr(value: float) -> str:
    return f"{value:g}"


def _plots(report: TransferReport, output_dir: Path | None) -> list[str]:
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
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def _card_metadata(report: TransferReport, model_name: str, dataset_name: str) -> dict[str, Any]:
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
        base_model=_hub_id(report.base_model),
        datasets=[dataset_id] if dataset_id else None,
        license=report.license,
        tags=tags,
        metrics=[_METRICS[k][1] for k in _METRICS if k in known] or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    return data.to_dict()


def build_model_card(report: TransferReport, output_dir: str | os.PathLike | None = None) -> str:
    """The README.md text (YAML front matter + markdown) for a run.

    With `output_dir`, plot links are checked against the folder (missing ones are left out) and, when
    ``report.plots`` is None, every top-level ``*.png`` of the folder is embedded. The YAML is parsed back and
    checked before returning.
    """
    out = Path(output_dir) if output_dir is not None else None
    local = report.dataset_dir or (report.dataset_id if not _hub_id(report.dataset_id) else None)
    dataset_name = (report.dataset_name or _hub_id(report.dataset_id)  # a local path is named by its folder only
                    or (Path(local).resolve().name if local else None) or "custom image dataset")
    model_name = (report.model_name or (report.repo_id.split("/")[-1] if report.repo_id else None)
                  or (out.resolve().name if out is not None else None) or f"{report.model_type}-transfer")
    metadata = _card_metadata(report, model_name, dataset_name)
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)

    base_hub = _hub_id(report.base_model)
    base_ref = f"[`{base_hub}`](https://huggingface.co/{base_hub})" if base_hub else f"a local checkpoint (`{report.base_model}`)"
    known, other = _canonical_metrics(report.metrics)
    n_classes = len(report.class_names) or len(report.per_class_accuracy)
    lines: list[str] = [f"# {model_name}", ""]
    lines.append(
        f"An image classifier fine-tuned from {base_ref} (`{report.model_type}`) on **{dataset_name}** with "
        "hf-transfer-cnn transfer learning"
        + (f", predicting {n_classes} classes." if n_classes else ".")
    )
    lines.append("")

    # results
    lines += ["## Results", ""]
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
    if report.per_class_accuracy:
        lines += ["### Per-class accuracy", ""]
        header = ["Class", "Accuracy"] + (["Eval images"] if report.per_class_support else [])
        rows = []
        for name, acc in report.per_class_accuracy.items():
            row = [str(name), _fmt(float(acc))]
            if report.per_class_support:
                row.append(str(report.per_class_support.get(name, "—")))
            rows.append(row)
        lines += _table(header, rows) + [""]
    plots = _plots(report, out)
    if plots:
        lines += ["### Plots", ""]
        for rel in plots:
            caption = Path(rel).stem.replace("_", " ").replace("-", " ").capitalize()
            lines += [f"![{caption}]({rel})", ""]

    # transfer setup
    lines += ["## Transfer learning", ""]
    lines.append(f"- **Base checkpoint:** {base_ref}, architecture `{report.model_type}`")
    if report.strategy:
        lines.append(f"- **Strategy:** {report.strategy}")
    lines.append(f"- **Classifier head:** {report.head or 'the architecture’s native linear classifier, re-initialised for the new classes'}")
    if report.image_size or report.num_channels:
        size = f"{report.image_size}×{report.image_size} px" if report.image_size else "native size"
        chans = f", {report.num_channels} channel(s)" if report.num_channels else ""
        lines.append(f"- **Input:** {size}{chans}")
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
    if report.num_train_epochs is not None:
        lines.append(f"- **Epochs:** {float(report.num_train_epochs):g}")
    if report.train_steps is not None:
        lines.append(f"- **Training steps:** {report.train_steps}")
    if report.batch_size is not None:
        lines.append(f"- **Batch size:** {report.batch_size} (per optimizer step: all devices and accumulation steps)")
    lines += [f"- {note}" for note in report.notes]
    lines.append("")
    if report.phases:
        lines += ["### Freezing schedule", "", "The head trains throughout; backbone stages train as listed "
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
        lines += _table(header, rows) + [""]

    # data
    lines += ["## Data", ""]
    if _hub_id(report.dataset_id):
        lines.append(f"- **Dataset:** [`{report.dataset_id}`](https://huggingface.co/datasets/{report.dataset_id})")
    elif local:
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

    # usage
    lines += ["## How to use", "", *_usage(report, report.repo_id or f"path/to/{model_name}")]

    text = f"---\n{front}---\n\n" + "\n".join(lines).rstrip() + "\n"
    _check_card(text, metadata)
    return text


def _usage(report: TransferReport, ref: str) -> list[str]:
    """The card's "How to use": pipeline() for RGB models plain transformers loads; the processor on an L image for
    gray ones (pipeline() converts every image to RGB); a normalised tensor for other channel counts (no image
    format has them); `TransferModel` where plain transformers cannot rebuild the model."""
    channels = report.num_channels or 3
    further = ["With hf-transfer-cnn, `TransferModel.from_pretrained` loads it ready for further transfer learning "
               "(stage freezing, a new head, other input sizes/channels).", ""]
    if report.loadable_with_transformers and channels == 3:
        return ["Plain transformers loads this model (hf-transfer-cnn is not needed):", "",
                "```python", "from transformers import pipeline", "",
                f'classifier = pipeline("image-classification", model="{ref}")',
                'print(classifier("image.jpg"))', "```", "", *further]
    if report.loadable_with_transformers:
        intro = ["Plain transformers loads this model (hf-transfer-cnn is not needed). It takes "
                 + ("1-channel (grayscale) images, and `pipeline()` converts every image to RGB, so call the "
                    "processor on an `L` image:" if channels == 1 else
                    f"{channels}-channel input, which `pipeline()` and image files do not give: pass a normalised "
                    "tensor:"), ""]
        imports = ["from transformers import AutoImageProcessor, AutoModelForImageClassification"]
        load = [f'processor = AutoImageProcessor.from_pretrained("{ref}")',
                f'model = AutoModelForImageClassification.from_pretrained("{ref}").eval()']
        tail = ["", *further]
    else:
        intro = ["This model uses hf-transfer-cnn parts (a custom head, an input adapter or a non-transformers "
                 "architecture), so load it with the package (`pip install hf-transfer-cnn`):", ""]
        imports = ["from hf_transfer_cnn import TransferModel"]
        load = [f'model = TransferModel.from_pretrained("{ref}").eval()', "processor = model.image_processor"]
        tail = [""]
    if channels in (1, 3):
        image = 'Image.open("image.jpg").convert("L")' if channels == 1 else 'Image.open("image.jpg")'
        imports = ["import torch", "from PIL import Image", *imports]
        inputs = [f'inputs = processor({image}, return_tensors="pt")']
    else:
        size = report.image_size or 224
        imports = ["import torch", *imports]
        inputs = [f"pixels = torch.rand(1, {channels}, {size}, {size})  # your image(s): {channels} channels, "
                  "values in 0..1",
                  "mean = torch.tensor(processor.image_mean)[:, None, None]",
                  "std = torch.tensor(processor.image_std)[:, None, None]",
                  "inputs = {\"pixel_values\": (pixels - mean) / std}"]
    return [*intro, "```python", *imports, "", *load, *inputs, "with torch.no_grad():",
            "    predicted = model(**inputs).logits.argmax(-1).item()",
            "print(model.config.id2label[predicted])", "```", *tail]


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


# --- pushing --------------------------------------------------------------------------------------------

class HubPushError(RuntimeError):
    """A push to the Hub failed. The local output folder was not changed; the message says how to retry."""

    def __init__(self, message: str, *, output_dir: str, repo_id: str, reason: str, retry_command: str,
                 status_code: int | None = None):
        super().__init__(message)
        self.output_dir = output_dir
        self.repo_id = repo_id
        self.reason = reason
        """"auth", "connection", "offline", "server", "not_found", "rejected" or "other"."""
        self.retry_command = retry_command
        self.status_code = status_code


def retry_instructions(output_dir: str | os.PathLike, repo_id: str, *, private: bool = False,
                       endpoint: str | None = None) -> tuple[str, str]:
    """(shell command, python call) that push `output_dir` to `repo_id` again (token from login / HF_TOKEN)."""
    out = str(Path(output_dir).resolve())
    custom = endpoint.rstrip("/") if endpoint and endpoint.rstrip("/") != _DEFAULT_ENDPOINT else None
    env = f"HF_ENDPOINT={shlex.quote(custom)} " if custom else ""
    cmd = f"{env}hf-transfer-cnn push {shlex.quote(out)} --repo-id {shlex.quote(repo_id)}" + (" --private" if private else "")
    py = (f"from hf_transfer_cnn.hub import push_output_dir; push_output_dir({out!r}, {repo_id!r}"
          + (", private=True" if private else "") + (f", endpoint={custom!r}" if custom else "") + ")")
    return cmd, py


def _classify(err: BaseException) -> tuple[str, int | None, str]:
    """(reason, HTTP status, short description) for an exception raised while pushing."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return "offline", None, "huggingface_hub is in offline mode (HF_HUB_OFFLINE=1)"
    if isinstance(err, LocalTokenNotFoundError):
        return "auth", None, "no Hugging Face token was found"
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if getattr(err, "response", None) is not None else None
        server = (getattr(err, "server_message", None) or "").strip().splitlines()
        detail = f"HTTP {status}" + (f": {server[0]}" if server else "")
        if status in (401, 403):
            return "auth", status, f"the Hub refused the credentials ({detail})"
        if status == 404:
            return "not_found", status, f"the repository or its namespace was not found ({detail})"
        if status is not None and status >= 500:
            return "server", status, f"the Hub answered with a server error ({detail})"
        return "rejected", status, f"the Hub rejected the request ({detail})"
    if isinstance(err, (*_transport_errors(), ConnectionError, TimeoutError)):
        return "connection", None, f"could not reach the Hub ({type(err).__name__}: {err})"
    if isinstance(err, ValueError) and "metadata" in str(err).lower():
        return "rejected", None, f"the Hub rejected README.md ({err})"
    return "other", None, f"{type(err).__name__}: {err}"


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network-level exception types of the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in 1.x)."""
    import importlib

    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


_HINTS = {
    "auth": "Log in with `hf auth login` (or export HF_TOKEN=...) using a token with write access to the "
            "repository's namespace, then retry.",
    "connection": "Check the network connection (and HF_ENDPOINT / proxy settings), then retry.",
    "offline": "Unset HF_HUB_OFFLINE (offline mode blocks every Hub request), then retry.",
    "server": "This is usually temporary on the Hub's side; retry in a few minutes.",
    "not_found": "Check the repo id (OWNER/NAME, where OWNER is your user name or an organization you can write "
                 "to) and that your token can see it, then retry.",
    "rejected": "Fix what the Hub objected to (shown above), then retry.",
    "other": "Retry once the cause above is fixed.",
}


def push_output_dir(
    output_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload model trained with hf-transfer-cnn",
    *,
    endpoint: str | None = None,
) -> str:
    """Upload a finished output folder to the Hub model repo `repo_id` (created if needed); returns the commit URL.

    Uploads everything in the folder (weights, config.json, preprocessor_config.json, README.md, plots,
    all_results.json, ...) except `PUSH_IGNORE_PATTERNS` (``checkpoint-*/``, ``overwritten-*/``, ``checkpoints/``, ``runs/``,
    optimizer/scheduler state). The folder is only read. Files already on the Hub with the same content are
    skipped, so running the same call again after a failure finishes the upload.

    The returned value is huggingface_hub's `CommitInfo` (a `str` equal to the commit URL, with ``.oid`` and
    ``.repo_url``).

    Raises:
        FileNotFoundError / ValueError: `output_dir` is missing or empty, or `repo_id` is malformed (nothing sent).
        HubPushError: the Hub could not be reached or refused the upload (auth, server error, ...); the message
            names the cause, states that `output_dir` is intact, and gives the command to retry.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects, validate_repo_id

    folder = Path(output_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"Output folder {str(folder)!r} does not exist (or is not a folder); nothing was pushed.")
    validate_repo_id(repo_id)
    files = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    to_upload = list(filter_repo_objects(files, ignore_patterns=PUSH_IGNORE_PATTERNS))
    if not to_upload:
        raise ValueError(f"Output folder {str(folder)!r} has no files to push (checkpoints and runs/ are left out).")
    if "config.json" not in to_upload:
        logger.warning("%s has no config.json: the pushed repo will not load as a model.", folder)

    api = HfApi(endpoint=endpoint, token=token)
    stage = "creating the repository"
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        stage = "uploading the files"
        commit = api.upload_folder(
            repo_id=repo_url.repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=commit_message,
            ignore_patterns=list(PUSH_IGNORE_PATTERNS),
        )
    except Exception as err:  # noqa: BLE001 - every failure becomes one actionable error
        reason, status, what = _classify(err)
        cmd, py = retry_instructions(folder, repo_id, private=private, endpoint=api.endpoint)
        hint = _HINTS[reason]
        if reason == "auth" and token is not None:
            hint = "The token passed to push_output_dir was refused. " + hint
        message = (
            f"Pushing {str(folder.resolve())!r} to the Hub repo {repo_id!r} failed while {stage}: {what}.\n"
            f"Nothing local was changed: the output at {str(folder.resolve())!r} is intact.\n"
            f"{hint}\n"
            f"Retry with:\n    {cmd}\n"
            f"or from Python:\n    {py}\n"
            "Files that already reached the Hub unchanged are skipped on retry."
        )
        raise HubPushError(message, output_dir=str(folder.resolve()), repo_id=repo_id, reason=reason,
                           retry_command=cmd, status_code=status) from err
    logger.info("Pushed %d file(s) from %s to %s", len(to_upload), folder, repo_url)
    return commit
