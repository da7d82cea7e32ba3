"""The new task's classes: num_labels / id2label / label2id made consistent, or a clear error."""

from __future__ import annotations

from collections import Counter

__all__ = ["normalise_labels"]


def normalise_labels(num_labels, id2label, label2id):
    if id2label is not None:
        id2label = {int(k): str(v) for k, v in dict(id2label).items()}
        if sorted(id2label) != list(range(len(id2label))):
            raise ValueError(f"id2label keys must be 0..{len(id2label) - 1}, got {sorted(id2label)}.")
        if num_labels is not None and num_labels != len(id2label):
            raise ValueError(
                f"num_labels={num_labels} but id2label has {len(id2label)} entries; pass one of them, or make them "
                "agree."
            )
        num_labels = len(id2label)
        repeated = sorted(name for name, n in Counter(id2label.values()).items() if n > 1)
        if repeated:
            raise ValueError(f"id2label names {repeated} more than once; every class needs its own name "
                             "(label2id could not map back).")
    if label2id is not None:
        label2id = {str(k): int(v) for k, v in dict(label2id).items()}
        if num_labels is None:
            num_labels = len(label2id)
        if id2label is None:
            id2label = {v: k for k, v in label2id.items()}
        if len(label2id) != num_labels or {v: k for k, v in label2id.items()} != id2label:
            raise ValueError("label2id does not match id2label/num_labels; pass id2label alone and label2id is "
                             "derived.")
    if num_labels is not None:
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels={num_labels!r}; a classifier needs at least 1 label.")
        if id2label is None:
            id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        label2id = {v: k for k, v in id2label.items()}
    return num_labels, id2label, label2id
