"""Feature caching: with the whole backbone frozen, compute its pooled features once and train only the head.

Features are stored as an Arrow file in the datasets cache, keyed by the backbone's weights, the input
adaptation and pooling, the preprocessing and the dataset's content, so later epochs *and later runs*
skip the backbone. The content is what the features are computed from: every image's bytes (an image stored as a
path: the file's bytes, read again at every call but not decoded, so an image replaced in place — same name, same
modification time — is never served stale features) and the labels. A damaged cache file is rebuilt, with a warning
naming it. A cached dataset has ``pooled_features`` and ``labels`` columns; `TransferModel.forward`
takes ``pooled_features`` in place of ``pixel_values`` and runs only dropout + classifier, exactly what
the full forward runs after pooling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model import TransferMeta, TransferModel

logger = logging.getLogger(__name__)

__all__ = ["feature_cache_key", "cache_pooled_features", "content_digest", "features_cache_dir"]


def features_cache_dir() -> Path:
    from datasets import config

    default = Path(config.HF_DATASETS_CACHE) / "hf_transfer_cnn_features"
    return Path(os.environ.get("HF_TRANSFER_CNN_FEATURES_CACHE", default))


def _backbone_tensors(model: TransferModel) -> list[tuple[str, torch.Tensor]]:
    head_prefixes = tuple(p for p in (model.arch.head, model.arch.head_dropout) if p)
    return [(n, t) for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if not n.startswith(head_prefixes)]


CACHE_FORMAT = 2  # bump when what is stored (or how the key is made) changes
_LABEL_FIELDS = {"id2label", "label2id", "num_labels", "problem_type", "architectures", "transformers_version",
                 "_name_or_path", "label_names", "num_classes"}  # the last two: TimmWrapperConfig's labels
_COMPUTE_META = ("input_channels",)  # of our metadata, what the backbone's forward depends on (the input adapter)


def _compute_config(config) -> str:
    """The config without labels and head metadata: the settings the backbone's forward reads (activation,
    padding, norm eps, ...), which the weights alone do not fix."""
    d = {k: v for k, v in config.to_dict().items() if k not in _LABEL_FIELDS}
    d.update(TransferMeta.of(config).only(*_COMPUTE_META).as_config_entry())  # replaces the full section
    return json.dumps(d, sort_keys=True, default=str)


_RANDOM_TRANSFORMS = {"ColorJitter", "AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix", "ElasticTransform",
                      "ScaleJitter", "MixUp", "CutMix"}


def _random_steps(transform: Any) -> list[str]:
    """The random augmentations inside `transform`: torchvision ``Random*`` (and a few others) anywhere in its
    Compose tree, or a training `ImageTransform`."""
    found, stack, seen = [], [transform], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        name = type(t).__name__
        if getattr(t, "train", None) is True or name.startswith("Random") or name in _RANDOM_TRANSFORMS:
            found.append(name)
        for attr in ("pipeline", "transforms"):
            sub = getattr(t, attr, None)
            if isinstance(sub, (list, tuple, torch.nn.ModuleList)):
                stack.extend(sub)
            elif callable(sub):
                stack.append(sub)
    return found


def feature_cache_key(model: TransferModel, transform: Any, dataset: Any,
                      columns: tuple[str, str] = ("image", "label")) -> str:
    """Hash of everything the cached features depend on."""
    h = hashlib.sha256()
    h.update(repr((CACHE_FORMAT, columns)).encode())
    for name, t in _backbone_tensors(model):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(repr((model.config.model_type, model.num_input_channels, model.head_spec.pooling)).encode())
    h.update(_compute_config(model.config).encode())
    h.update(repr(transform).encode())
    h.update(content_digest(dataset, columns).encode())
    return h.hexdigest()[:32]


def content_digest(dataset: Any, columns: tuple[str, str] = ("image", "label"), batch_size: int = 1024) -> str:
    """Hash of the `columns` of `dataset` as its rows read them: the stored cells (embedded image bytes, paths,
    labels), and the bytes of every image stored only as a path (the file read again, not decoded)."""
    import pyarrow as pa

    present = [c for c in columns if c in dataset.column_names]
    h = hashlib.sha256(repr(present).encode())
    view = dataset.select_columns(present).with_format("arrow")
    for batch in view.iter(batch_size=batch_size):  # a pyarrow Table of these rows (select/shuffle applied)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_table(batch)
        h.update(sink.getvalue())
        if columns[0] in present:
            for path in _unembedded_paths(batch.column(columns[0]).combine_chunks()):
                h.update(_file_digest(path))
    return h.hexdigest()


def _unembedded_paths(column: Any) -> list[str]:
    """The paths of images the cells name without holding their bytes (`datasets.Image`'s ``{bytes, path}``
    storage), or the cells themselves for a column of path strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_struct(column.type):
        names = {column.type.field(i).name for i in range(column.type.num_fields)}
        if not {"bytes", "path"} <= names:
            return []
        paths = column.field("path")
        without = pc.and_(pc.is_null(column.field("bytes")), pc.is_valid(paths))
        return [p for p in pc.filter(paths, without).to_pylist() if p]
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return [p for p in column.to_pylist() if p and os.path.isfile(p)]
    return []


def _file_digest(path: str) -> bytes:
    """sha256 of a file's bytes (local, or remote through datasets' opener, as decoding reads it)."""
    try:
        if os.path.exists(path):
            with open(path, "rb") as f:
                return hashlib.sha256(f.read()).digest()
        from datasets.utils.file_utils import xopen

        with xopen(path, "rb") as f:
            return hashlib.sha256(f.read()).digest()
    except OSError as err:
        raise OSError(f"cannot read image {path!r} to check the feature cache against it: {err}") from err


def _check_cache_file(path: Path, num_rows: int) -> None:
    """Delete a cache file that cannot be read back whole (truncated, damaged), with a warning naming it, so that
    it is rebuilt."""
    if not path.exists():
        return
    from datasets import Dataset

    try:
        cached = Dataset.from_file(str(path))
        problem = (None if cached.num_rows == num_rows and set(cached.column_names) == {"pooled_features", "labels"}
                   else f"{cached.num_rows} rows {cached.column_names}, expected {num_rows} rows of pooled_features "
                        "and labels")
        del cached
    except Exception as err:  # noqa: BLE001 - whatever pyarrow/datasets raise for a damaged file
        problem = f"{type(err).__name__}: {err}"
    if problem is not None:
        logger.warning("Feature cache file %s is damaged (%s): deleting it and computing the features again.", path,
                       problem)
        path.unlink()


def cache_pooled_features(model: TransferModel, dataset: Any, transform: Any, *, image_column: str = "image",
                          label_column: str = "label", batch_size: int = 64,
                          cache_dir: str | os.PathLike | None = None) -> Any:
    """A `datasets.Dataset` of ``pooled_features``/``labels`` for `dataset` (raw images), cached on disk.

    `transform` must be deterministic (the eval transform): augmentation would be frozen into the cache. Random
    torchvision steps are refused by name; any other transform must give the same tensor for the first image.
    Requires every backbone stage of `model` to be frozen.
    """
    state = model.freeze_state
    if state is None or state.trainable_stages != 0:
        raise ValueError("Feature caching needs the whole backbone frozen (trainable_stages=0); with trainable stages "
                         "the features change every step. Use strategy='feature_extraction'.")
    from .data import ImageTransform, load_image

    if isinstance(transform, ImageTransform):
        apply = transform
    else:  # a plain (torchvision) transform gets the decoded PIL image as stored (mode, bit depth, alpha kept)

        def apply(image):
            return transform(load_image(image))

    random_steps = _random_steps(transform)
    if not random_steps and len(dataset):  # any other callable: the same image must give the same tensor
        first = dataset[0][image_column]
        ref = apply(first)
        if not all(torch.equal(ref, apply(first)) for _ in range(3)):
            random_steps = [f"{type(transform).__name__} (different outputs for the same image)"]
    if random_steps:
        raise ValueError(f"Feature caching needs a deterministic transform (augment=False / the eval transform); "
                         f"random augmentation cannot be cached, and this one has {random_steps}.")
    key = feature_cache_key(model, transform, dataset, (image_column, label_column))
    directory = Path(cache_dir) if cache_dir else features_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key}.arrow"
    _check_cache_file(path, len(dataset))
    hit = path.exists()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    def encode(batch):
        x = torch.stack([apply(img) for img in batch[image_column]]).to(device)
        with torch.no_grad():
            pooled = model.pooled_features(x).float().cpu().numpy()
        return {"pooled_features": pooled.astype(np.float32), "labels": np.asarray(batch[label_column], np.int64)}

    try:
        cached = dataset.map(encode, batched=True, batch_size=batch_size, remove_columns=dataset.column_names,
                             cache_file_name=str(path), load_from_cache_file=True, new_fingerprint=key,
                             desc="Computing backbone features")
    finally:
        model.train(was_training)
    logger.info("%s backbone features for %d images (%s)", "Loaded cached" if hit else "Computed", len(cached), path)
    return cached.with_format("torch")
