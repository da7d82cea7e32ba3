"""Metrics from logits, checked against scikit-learn; ignored labels (-100) are left out everywhere."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from hf_transfer_cnn.metrics import classification_metrics, confusion_matrix, per_class_accuracy


def _data(n=200, classes=7, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(classes, n, p=np.r_[0.4, np.full(classes - 1, 0.6 / (classes - 1))])  # imbalanced
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += rng.uniform(0, 2.5, n)  # right often, not always
    return logits, labels


def test_metrics_equal_scikit_learn_on_imbalanced_classes():
    logits, labels = _data()
    preds = logits.argmax(1)
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert m["top5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(labels, logits, k=5, labels=range(7)))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro"))
    cm = confusion_matrix(labels, preds, 7)
    assert np.array_equal(cm, skm.confusion_matrix(labels, preds, labels=range(7)))
    np.testing.assert_allclose(per_class_accuracy(cm), skm.recall_score(labels, preds, average=None))
    absent = per_class_accuracy(confusion_matrix(labels[labels != 3], preds[labels != 3], 7))
    assert np.isnan(absent[3]) and np.isnan(absent).sum() == 1


@pytest.mark.parametrize("classes", [7, 120])
def test_ignored_labels_are_left_out(classes):
    """-100 rows would index the confusion matrix from the end (a wrong class for >= 100 classes, an error below)
    and count as errors; they are dropped, as the loss drops them."""
    logits, labels = _data(classes=classes, seed=1)
    with_ignored = labels.copy()
    with_ignored[::4] = -100
    kept = with_ignored >= 0
    assert classification_metrics(logits, with_ignored) == classification_metrics(logits[kept], labels[kept])
    cm = confusion_matrix(with_ignored, logits.argmax(1), classes)
    assert np.array_equal(cm, confusion_matrix(labels[kept], logits.argmax(1)[kept], classes))
    assert cm.sum() == kept.sum()
    with pytest.raises(ValueError, match="outside 0..6"):
        confusion_matrix(np.array([0, 7]), np.array([0, 1]), 7)
