"""Hardening of the data layer: degenerate data (one class, only unreadable images, a one-image class, boolean
labels) and image bombs (extreme pixel counts or aspect ratios), each injected the way it happens in life."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from PIL import Image

import datasets
from hf_transfer_cnn.data import DataArguments, load_image_classification_data

datasets.disable_progress_bars()


def _folder(root, classes=("cat", "dog"), n=3, size=(8, 8)):
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", size, (i * 40, 2, 3)).save(root / cls / f"{i}.png")
    return root


def _load(tmp_path, **kw):
    kw.setdefault("dataset_cache_dir", str(tmp_path / "cache"))
    kw.setdefault("train_val_split", 0)
    return load_image_classification_data(**kw)


def _saved(tmp_path, name, labels, feature):
    images = [Image.new("L", (4, 4), i) for i in range(len(labels))]
    ds = datasets.Dataset.from_dict({"image": images, "label": labels},
                                    features=datasets.Features({"image": datasets.Image(), "label": feature}))
    ds.save_to_disk(str(tmp_path / name))
    return str(tmp_path / name)


# --- A. degenerate data ----------------------------------------------------------------------------------------

def test_single_class_folder_is_an_error_naming_the_class(tmp_path):
    """An image folder with one class subfolder: datasets gives it no label column at all."""
    root = _folder(tmp_path / "train", classes=("cat",))
    with pytest.raises(ValueError, match=r"one class \('cat'\).*two or more classes.*one subfolder per class"):
        _load(tmp_path, train_dir=str(root))


@pytest.mark.parametrize("labels, feature, found", [
    (["cat"] * 6, datasets.Value("string"), "['cat']"),
    ([0] * 6, datasets.Value("int64"), "['0']"),
    ([0] * 6, datasets.ClassLabel(names=["cat"]), "['cat']"),
])
def test_single_class_dataset_is_an_error_not_a_warning(tmp_path, labels, feature, found):
    """One class would build a 1-label model, which transformers trains as a regression (accuracy 1.0)."""
    path = _saved(tmp_path, "one", labels, feature)
    with pytest.raises(ValueError, match=r"have 1 class \(" + re.escape(found) + r"\).*two or more"):
        load_image_classification_data(dataset_name=path, train_val_split=0.3)


def test_one_class_left_with_training_images_is_an_error(tmp_path):
    """Two class folders, but every image of one of them is unreadable: training would see one class only."""
    root = _folder(tmp_path / "train", classes=("cat",))
    (root / "dog").mkdir()
    for i in range(3):
        (root / "dog" / f"{i}.png").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ValueError, match=r"Only class 'cat' has training images.*'dog': 0.*two or more classes"):
        _load(tmp_path, train_dir=str(root))


def test_folder_of_only_unreadable_images_says_what_happened_and_what_to_do(tmp_path):
    root = tmp_path / "train"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            (root / cls / f"{i}.jpg").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n")
    with pytest.raises(ValueError) as err:
        _load(tmp_path, train_dir=str(root))
    text = str(err.value)
    assert "All 4 images of the train split are unreadable" in text, text
    assert "UnidentifiedImageError" in text and "0.jpg" in text, text
    assert "Git LFS" in text and "train_dir" in text, text  # what to do


def test_class_with_one_image_stays_in_train_when_holding_out_validation(tmp_path, caplog):
    """10 + 10 + 1 images, 20% held out: the one-image class cannot be stratified; it stays in training (a plain
    random split would put it in the evaluation set for some seeds, an error later) and that is logged."""
    path = _saved(tmp_path, "rare", [0] * 10 + [1] * 10 + [2], datasets.ClassLabel(names=["a", "b", "rare"]))
    for seed in range(8):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn.data"):
            train, evaluation, id2label = load_image_classification_data(dataset_name=path, train_val_split=0.2,
                                                                         split_seed=seed)
        assert 2 in train[:]["label"] and 2 not in evaluation[:]["label"], seed
        assert sorted(np.bincount(evaluation[:]["label"], minlength=3).tolist()) == [0, 2, 2], seed
        assert len(train) + len(evaluation) == 21
        assert "['rare'] have a single image: kept in training" in caplog.text, caplog.text


def test_every_class_with_one_image_cannot_be_held_out(tmp_path):
    path = _saved(tmp_path, "singles", ["a", "b", "c", "d"], datasets.Value("string"))
    with pytest.raises(ValueError, match=r"every class has a single image.*train_val_split=0"):
        load_image_classification_data(dataset_name=path, train_val_split=0.5)


def test_boolean_labels_are_two_classes_false_and_true(tmp_path):
    path = _saved(tmp_path, "bool", [True, False] * 6, datasets.Value("bool"))
    train, evaluation, id2label = load_image_classification_data(dataset_name=path, train_val_split=0.25)
    assert id2label == {0: "False", 1: "True"}
    assert (len(train), len(evaluation)) == (9, 3)
    assert set(train[:]["label"]) == {0, 1} and all(type(v) is int for v in train[:]["label"])


# --- B. image bombs ---------------------------------------------------------------------------------------------

def test_extreme_aspect_ratio_image_is_skipped_and_counted(tmp_path, caplog):
    """A 1 x 600000 PNG (a few hundred bytes) would be resized into a giant or degenerate tensor."""
    root = _folder(tmp_path / "train")
    Image.new("L", (600000, 1), 7).save(root / "dog" / "strip.png")
    assert (root / "dog" / "strip.png").stat().st_size < 5000
    with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn.data"):
        train, _, _ = _load(tmp_path, train_dir=str(root))
    assert len(train) == 6
    assert "skipped 1 unreadable image(s) of 7 in train" in caplog.text, caplog.text
    assert "strip.png" in caplog.text and "aspect ratio" in caplog.text and "max_aspect_ratio" in caplog.text

    train, _, _ = _load(tmp_path, train_dir=str(root), max_aspect_ratio=0)  # 0 turns the check off
    assert len(train) == 7
    with pytest.raises(ValueError, match=r"strip\.png.*aspect ratio"):
        _load(tmp_path, train_dir=str(root), on_bad_image="error")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns between 1x and 2x
def test_image_beyond_the_pixel_limit_is_skipped_before_decoding(tmp_path, caplog, monkeypatch):
    """PIL only warns between 1x and 2x Image.MAX_IMAGE_PIXELS (and raises beyond 2x): both are skipped."""
    root = _folder(tmp_path / "train")
    Image.new("RGB", (40, 40), (9, 9, 9)).save(root / "cat" / "big.png")  # 1600 px: 1.6x the limit below
    Image.new("RGB", (50, 50), (9, 9, 9)).save(root / "dog" / "huge.png")  # 2500 px: 2.5x
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn.data"):
        train, _, _ = _load(tmp_path, train_dir=str(root))
    assert len(train) == 6
    assert "skipped 2 unreadable image(s) of 8 in train" in caplog.text, caplog.text
    assert "big.png" in caplog.text and "huge.png" in caplog.text and "MAX_IMAGE_PIXELS" in caplog.text


@pytest.mark.parametrize("value", [-1, 0.5, float("nan"), float("inf"), "64"])
def test_max_aspect_ratio_is_checked(value):
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        DataArguments(train_dir="x", max_aspect_ratio=value)
    assert DataArguments(train_dir="x", max_aspect_ratio=None).max_aspect_ratio is None
    assert DataArguments(train_dir="x").max_aspect_ratio == 64.0
