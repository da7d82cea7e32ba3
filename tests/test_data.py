"""Data layer: sources, unreadable images, mode/channel conversion, transforms, splits, IDX files."""

from __future__ import annotations

import io
import itertools
import logging
import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
from hf_transfer_cnn.data import (DataArguments, TransformArguments, build_transforms, collate_fn, convert_image,
                                  load_image_classification_data, to_8bit, with_transforms)
from hf_transfer_cnn.processing import processor_sizes
from hf_transfer_cnn.recipe.fashion_mnist import (FASHION_MNIST_LABELS, fashion_mnist_to_imagefolder,
                                                  load_fashion_mnist_idx, read_idx, write_idx)
from tolerance import SAME_OPS, assert_close, rounding

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RGB_CONST = (10, 128, 250)
L_CONST = 100
datasets.disable_progress_bars()


def _processor(size=32, **kw):
    from transformers import ConvNextImageProcessor

    return ConvNextImageProcessor(size={"shortest_edge": size}, crop_pct=0.875, image_mean=list(MEAN),
                                  image_std=list(STD), **kw)


def _noise(seed, shape=(20, 24, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _png_bytes(img: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """train/{a,b}: 10 readable images in L, RGBA, P, CMYK, I;16 and RGB mode, plus a corrupt and a truncated file."""
    root = tmp_path_factory.mktemp("mixed")
    a, b = root / "train" / "a", root / "train" / "b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    Image.new("L", (20, 24), L_CONST).save(a / "gray.png")
    Image.fromarray(_noise(1, (24, 20, 4)), "RGBA").save(a / "rgba.png")
    Image.fromarray(_noise(2, (24, 20, 3))).convert("P").save(a / "palette.png")
    Image.fromarray(_noise(3, (24, 20, 3))).convert("CMYK").save(a / "cmyk.jpg")
    Image.fromarray((_noise(4, (24, 20)).astype(np.uint16) * 257)).save(b / "i16.png")
    Image.new("RGB", (30, 20), RGB_CONST).save(b / "const.png")
    for i in range(4):
        Image.fromarray(_noise(10 + i)).save((a if i % 2 else b) / f"rgb{i}.png")
    (b / "corrupt.png").write_bytes(b"this is not an image" * 20)
    truncated = _png_bytes(Image.fromarray(_noise(5, (64, 64, 3))))
    (b / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    return root


def _load(tmp_path, **kw):
    kw.setdefault("dataset_cache_dir", str(tmp_path / "cache"))
    return load_image_classification_data(**kw)


def test_imagefolder_mixed_modes_skips_bad_files(mixed_folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn.data"):
        train, evaluation, id2label = _load(tmp_path, train_dir=str(mixed_folder / "train"), train_val_split=0)
    assert evaluation is None
    assert id2label == {0: "a", 1: "b"}
    assert len(train) == 10
    msgs = [r.getMessage() for r in caplog.records]
    assert any("skipped 2 unreadable image(s) of 12 in train" in m for m in msgs), msgs
    assert any("corrupt.png" in m and "truncated.png" in m for m in msgs)
    paths = [os.path.basename(c["path"]) for c in train[:]["image"]]
    assert "corrupt.png" not in paths and "truncated.png" not in paths

    proc = _processor()
    for channels in (1, 3, 4):
        train_tf, eval_tf = build_transforms(proc, channels)
        for tf in (train_tf, eval_tf):
            ds = with_transforms(train, tf)
            for row in ds:
                x = row["pixel_values"]
                assert x.shape == (channels, 32, 32) and x.dtype == torch.float32
                assert isinstance(row["labels"], int)
                assert torch.isfinite(x).all()
                if channels == 4:
                    assert (x[3] == 0).all()  # extra channel: zero after normalisation

    # a constant-colour image normalises to the expected numbers
    i = paths.index("const.png")
    _, eval_tf = build_transforms(proc, 3)
    x = with_transforms(train, eval_tf)[i]["pixel_values"]
    expected = [(c / 255 - m) / s for c, m, s in zip(RGB_CONST, MEAN, STD)]
    for ch in range(3):
        assert_close(x[ch], torch.full((32, 32), expected[ch]), ulps=SAME_OPS)
    j = paths.index("gray.png")
    _, eval_gray = build_transforms(proc, 1)
    g = with_transforms(train, eval_gray)[j]["pixel_values"]
    assert_close(g, torch.full((1, 32, 32), (L_CONST / 255 - np.mean(MEAN)) / np.mean(STD)), ulps=SAME_OPS)


@pytest.mark.parametrize("resample", [0, 1, 2, 3])  # PIL's nearest, Lanczos, bilinear, bicubic
def test_eval_transform_matches_the_image_processor_for_its_resample_filter(resample):
    """The eval transform resizes with the checkpoint processor's own filter: its output equals what the
    processor itself gives (ViT-style fixed size, ConvNeXt-style shortest edge + crop_pct), Lanczos (PIL-only
    here) to within one grey level."""
    import transformers as T
    from PIL import Image

    img = Image.fromarray(_noise(3, (57, 71, 3)))
    procs = [T.ViTImageProcessor(size={"height": 32, "width": 32}, resample=resample, image_mean=list(MEAN),
                                 image_std=list(STD)), _processor(resample=resample)]
    for proc in procs:
        expected = proc(img, return_tensors="pt").pixel_values[0]
        _, eval_tf = build_transforms(proc, 3)
        got = eval_tf(img)
        assert got.shape == expected.shape == (3, 32, 32)
        tolerance = (1.0 / 255 / min(STD) if resample == 1 else 0.0) + rounding(got, expected, ulps=SAME_OPS)
        assert (got - expected).abs().max().item() <= tolerance, type(proc).__name__
    bilinear = build_transforms(T.ViTImageProcessor(size={"height": 32, "width": 32}, resample=2,
                                                    image_mean=list(MEAN), image_std=list(STD)), 3)[1](img)
    if resample != 2:  # the filter matters: another one gives other pixels
        assert (bilinear - build_transforms(procs[0], 3)[1](img)).abs().max().item() > 0.05
    with pytest.raises(ValueError, match="resample=7 is not a PIL filter code"):
        build_transforms(T.ViTImageProcessor(resample=7), 3)
    from torchvision.transforms import InterpolationMode  # also accepted by transformers' torchvision backend

    as_mode = T.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=list(MEAN), image_std=list(STD))
    as_mode.resample = InterpolationMode[{0: "NEAREST_EXACT", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC"}[resample]]
    assert torch.equal(build_transforms(as_mode, 3)[1](img), build_transforms(procs[0], 3)[1](img))


def test_eval_transform_matches_efficientnet_processors_quirks():
    """EfficientNet's processor can subtract 1 after rescaling (rescale_offset) and divide by std a second time
    (include_top, its class default): the eval transform gives the same pixels for every combination and both
    backends, also for gray input; the default processor built for a checkpoint without one has no second /std."""
    import transformers as T
    from PIL import Image

    from hf_transfer_cnn.processing import default_image_processor

    img, gray = Image.fromarray(_noise(3, (41, 53, 3))), Image.fromarray(_noise(4, (41, 53)))
    for cls in (T.EfficientNetImageProcessor, T.EfficientNetImageProcessorPil):
        for top, offset, norm in itertools.product((True, False), (True, False), (True, False)):
            proc = cls(size={"height": 32, "width": 32}, include_top=top, rescale_offset=offset, do_normalize=norm,
                       rescale_factor=1 / 127.5 if offset else 1 / 255, image_mean=list(MEAN), image_std=list(STD),
                       resample=2)
            # the PIL backend resizes with PIL: within one grey level of the tensor resize
            level = proc.rescale_factor / min(STD) ** ((norm + top) or 1) if "Pil" in cls.__name__ else 0.0
            expected = proc(img, return_tensors="pt").pixel_values[0]
            got = build_transforms(proc, 3)[1](img)
            assert (got - expected).abs().max().item() <= level + rounding(got, expected, ulps=SAME_OPS), (
                cls.__name__, top, offset, norm)
            # gray: the same quirks with the RGB-averaged statistics (equal per channel here, to compare with the
            # processor on the gray image as RGB)
            flat = cls(**{**proc.to_dict(), "image_mean": [0.45] * 3, "image_std": [0.25] * 3})
            expected = flat(gray.convert("RGB"), return_tensors="pt").pixel_values[0, :1]
            level = flat.rescale_factor / 0.25 ** ((norm + top) or 1) if "Pil" in cls.__name__ else 0.0
            got = build_transforms(flat, 1)[1](gray)
            assert (got - expected).abs().max().item() <= level + rounding(got, expected, ulps=SAME_OPS), (top, norm)
    default = default_image_processor("efficientnet", image_size=32)
    assert default.include_top is False
    x = default(img, return_tensors="pt").pixel_values[0]
    got = build_transforms(default, 3)[1](img)
    assert (got - x).abs().max().item() <= rounding(got, x, ulps=SAME_OPS)
    restored = x * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    slack = rounding(x, ulps=SAME_OPS)
    assert -slack <= restored.min().item() and restored.max().item() <= 1 + slack  # one /std: back to 0..1


def test_on_bad_image_error_names_file(mixed_folder, tmp_path):
    with pytest.raises(ValueError, match=r"(corrupt|truncated)\.png"):
        _load(tmp_path, train_dir=str(mixed_folder / "train"), train_val_split=0, on_bad_image="error")


def test_all_unreadable_is_an_error(tmp_path):
    for cls in ("x", "y"):
        (tmp_path / "bad" / cls).mkdir(parents=True)
        (tmp_path / "bad" / cls / "0.png").write_bytes(b"junk" * 10)
    with pytest.raises(ValueError, match="All 2 images of the train split are unreadable"):
        _load(tmp_path, train_dir=str(tmp_path / "bad"), train_val_split=0)


def test_mode_conversions():
    i16 = Image.fromarray(np.array([[0, 257 * 100, 65535, 1000]], dtype=np.uint16))
    assert i16.mode == "I;16"
    assert np.asarray(to_8bit(i16)).tolist() == [[0, 100, 255, 4]]  # scaled by 1/257, not clipped
    big_endian = Image.frombytes("I;16B", (2, 1), np.array([257 * 7, 65535], ">u2").tobytes())
    assert np.asarray(to_8bit(big_endian)).tolist() == [[7, 255]]
    as_i = Image.fromarray(np.array([[0, 257 * 50]], dtype=np.int32))
    assert as_i.mode == "I" and np.asarray(to_8bit(as_i)).tolist() == [[0, 50]]
    # 8-bit values in an int64 array: datasets stores them as mode I; they keep their values (not / 257)
    stored = datasets.Dataset.from_dict({"image": [np.array([[0, 7, 240]], dtype=np.int64)]},
                                        features=datasets.Features({"image": datasets.Image()}))[0]["image"]
    assert stored.mode == "I" and np.asarray(to_8bit(stored)).tolist() == [[0, 7, 240]]
    wide_i = Image.fromarray(np.array([[-10, 0, 90]], dtype=np.int32))
    assert np.asarray(to_8bit(wide_i)).tolist() == [[0, 26, 255]]  # min-max stretched
    f01 = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_8bit(f01)).tolist() == [[0, 128, 255]]
    f_wide = Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32))
    assert np.asarray(to_8bit(f_wide)).tolist() == [[0, 128, 255]]  # min-max stretched
    # RGBA: composited on white
    rgba = Image.fromarray(np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128]]], dtype=np.uint8), "RGBA")
    assert np.asarray(to_8bit(rgba)).tolist() == [[[255, 255, 255], [255, 0, 0], [127, 127, 127]]]
    la = Image.fromarray(np.array([[[0, 0], [50, 255]]], dtype=np.uint8), "LA")
    out = to_8bit(la)
    assert out.mode == "L" and np.asarray(out).tolist() == [[255, 50]]
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    assert np.asarray(to_8bit(pal)).tolist() == [[[255, 255, 255], [200, 10, 10]]]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert np.asarray(to_8bit(cmyk)).tolist() == [[[255, 0, 0]]]
    assert to_8bit(Image.new("1", (1, 1), 1)).getpixel((0, 0)) == 255
    assert convert_image(Image.new("RGB", (1, 1), (255, 0, 0)), 1).getpixel((0, 0)) == 76  # ITU-R 601 luma
    assert convert_image(Image.new("L", (1, 1), 9), 3).getpixel((0, 0)) == (9, 9, 9)
    assert convert_image({"bytes": _png_bytes(Image.new("L", (1, 1), 3)), "path": None}, 2).mode == "L"


def _memory_dataset(n=40, num_classes=2, image_col="image", label_col="label"):
    images = [Image.new("L", (8, 8), i) for i in range(n)]  # unique pixel value = identity
    features = datasets.Features({image_col: datasets.Image(),
                                  label_col: datasets.ClassLabel(names=[f"c{k}" for k in range(num_classes)])})
    return datasets.Dataset.from_dict({image_col: images, label_col: [i % num_classes for i in range(n)]},
                                      features=features)


def _ids(ds):
    return [Image.open(io.BytesIO(c["bytes"])).getpixel((0, 0)) for c in ds[:]["image"]]


def test_load_from_disk_dataset_dict_and_single(tmp_path):
    dd = datasets.DatasetDict({"train": _memory_dataset(20), "validation": _memory_dataset(6)})
    dd.save_to_disk(str(tmp_path / "dd"))
    train, evaluation, id2label = load_image_classification_data(dataset_name=str(tmp_path / "dd"))
    assert (len(train), len(evaluation), id2label) == (20, 6, {0: "c0", 1: "c1"})
    assert train.features["image"].decode is False

    _memory_dataset(20).save_to_disk(str(tmp_path / "single"))
    train, evaluation, _ = load_image_classification_data(DataArguments(train_dir=str(tmp_path / "single"),
                                                                        train_val_split=0.25))
    assert (len(train), len(evaluation)) == (15, 5)


def test_validation_split_seeded_stratified_disjoint(tmp_path):
    _memory_dataset(40).save_to_disk(str(tmp_path / "d"))
    args = DataArguments(dataset_name=str(tmp_path / "d"), train_val_split=0.25, split_seed=1)
    t1, e1, _ = load_image_classification_data(args)
    t2, e2, _ = load_image_classification_data(args)
    t3, e3, _ = load_image_classification_data(args, split_seed=2)
    assert (len(t1), len(e1)) == (30, 10)
    assert _ids(e1) == _ids(e2) and _ids(t1) == _ids(t2)
    assert sorted(_ids(e1)) != sorted(_ids(e3))
    assert not set(_ids(t1)) & set(_ids(e1)) and len(set(_ids(t1)) | set(_ids(e1))) == 40
    assert sorted(e1[:]["label"]).count(0) == 5  # stratified: 5 of each class

    t4, e4, _ = load_image_classification_data(args, max_train_samples=7, max_eval_samples=3)
    t5, e5, _ = load_image_classification_data(args, max_train_samples=7, max_eval_samples=3)
    assert (len(t4), len(e4)) == (7, 3) and _ids(t4) == _ids(t5) and set(_ids(t4)) <= set(_ids(t1))


@pytest.mark.parametrize("labels", ["int", "str"])
def test_plain_int_or_string_labels_are_stratified_and_home_paths_resolve(tmp_path, monkeypatch, labels):
    """Labels stored as plain ints/strings (parquet, no ClassLabel) get a stratified hold-out too (32 + 8 images,
    0.25: 8 + 2 in validation for every seed), and a dataset_name under ~ is read as the local folder it is."""
    monkeypatch.setenv("HOME", str(tmp_path))
    root = tmp_path / "pq"
    root.mkdir()
    values = [0] * 32 + [1] * 8 if labels == "int" else ["cat"] * 32 + ["dog"] * 8
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.Value("int64" if labels == "int" else "string")})
    datasets.Dataset.from_dict({"image": [Image.new("L", (8, 8), i) for i in range(40)], "label": values},
                               features=features).to_parquet(str(root / "train.parquet"))
    seen = set()
    for seed in range(5):
        train, evaluation, id2label = load_image_classification_data(
            dataset_name="~/pq", train_val_split=0.25, split_seed=seed, dataset_cache_dir=str(tmp_path / "c"))
        assert len(id2label) == 2 and (len(train), len(evaluation)) == (30, 10)
        counts = sorted(Counter(evaluation[:]["label"]).values())
        assert counts == [2, 8], (seed, counts)
        assert not set(_ids(train)) & set(_ids(evaluation))
        seen.add(tuple(sorted(_ids(evaluation))))
    assert len(seen) > 1  # the seed matters
    from hf_transfer_cnn.recipe.publish import dataset_title

    assert dataset_title(DataArguments(dataset_name="~/pq")) == "pq"  # the model card's name, not "~/pq"


def test_parquet_directory_via_dataset_name(tmp_path):
    root = tmp_path / "pq"
    root.mkdir()
    _memory_dataset(12, image_col="img").to_parquet(str(root / "train.parquet"))
    _memory_dataset(4, image_col="img").to_parquet(str(root / "test.parquet"))
    args = dict(dataset_name=str(root), image_column_name="img", dataset_cache_dir=str(tmp_path / "c"))
    train, evaluation, id2label = load_image_classification_data(**args, train_val_split=0.25)
    assert (len(train), len(evaluation), id2label) == (9, 3, {0: "c0", 1: "c1"})  # 'test' is not used implicitly
    train, evaluation, _ = load_image_classification_data(**args, eval_split_name="test")
    assert (len(train), len(evaluation)) == (12, 4)
    with pytest.raises(ValueError, match=r"image_column_name='img'"):
        load_image_classification_data(dataset_name=str(root), dataset_cache_dir=str(tmp_path / "c"))


def test_string_and_int_labels(tmp_path):
    images = [Image.new("L", (4, 4), i) for i in range(6)]
    ds = datasets.Dataset.from_dict({"image": images, "label": ["dog", "cat", "dog", "cat", "emu", "dog"]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "s"))
    train, _, id2label = load_image_classification_data(dataset_name=str(tmp_path / "s"), train_val_split=0)
    assert id2label == {0: "cat", 1: "dog", 2: "emu"} and train[:]["label"] == [1, 0, 1, 0, 2, 1]
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 2, 1, 2, 0, -1]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("int64")}))
    ds.save_to_disk(str(tmp_path / "i"))
    with pytest.raises(ValueError, match=r"label\(s\) \[-1\]"):
        load_image_classification_data(dataset_name=str(tmp_path / "i"), train_val_split=0)
    ds.select(range(5)).save_to_disk(str(tmp_path / "i5"))
    _, _, id2label = load_image_classification_data(dataset_name=str(tmp_path / "i5"), train_val_split=0)
    assert id2label == {0: "0", 1: "1", 2: "2"}


def test_column_and_source_errors(tmp_path, mixed_folder):
    _memory_dataset(10).save_to_disk(str(tmp_path / "d"))
    d = str(tmp_path / "d")
    with pytest.raises(ValueError, match=r"Label column 'labels' not found.*\['image', 'label'\].*label_column_name='label'"):
        load_image_classification_data(dataset_name=d, label_column_name="labels")
    with pytest.raises(ValueError, match=r"Image column 'pixels' not found.*\['image', 'label'\].*image_column_name='image'"):
        load_image_classification_data(dataset_name=d, image_column_name="pixels")
    with pytest.raises(ValueError, match="No data source"):
        load_image_classification_data()
    with pytest.raises(ValueError, match="Both dataset_name"):
        load_image_classification_data(dataset_name=d, train_dir=str(mixed_folder / "train"))
    with pytest.raises(ValueError, match="validation_dir was given without train_dir"):
        load_image_classification_data(validation_dir=d)
    with pytest.raises(ValueError, match="on_bad_image"):
        DataArguments(train_dir=d, on_bad_image="ignore")
    with pytest.raises(ValueError, match=r"data has 2 classes .* 3 were expected"):
        load_image_classification_data(dataset_name=d, expected_labels={0: "x", 1: "y", 2: "z"})
    datasets.Dataset.from_dict({"image": [], "label": []}, features=_memory_dataset(1).features).save_to_disk(
        str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"Could not load the saved dataset .*Is it empty\? A dataset needs at least one example"):
        load_image_classification_data(dataset_name=str(tmp_path / "empty"))
    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_dict({"image": [], "label": []}, features=_memory_dataset(1).features).to_parquet(
        str(tmp_path / "pq" / "train.parquet"))
    with pytest.raises(ValueError, match="empty"):
        load_image_classification_data(dataset_name=str(tmp_path / "pq"), dataset_cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="too few"):
        load_image_classification_data(train_dir=d, train_val_split=0.01)


def test_train_dir_with_validation_dir(tmp_path, mixed_folder):
    val = tmp_path / "val"
    for name, cls in (("x.png", "a"), ("y.png", "b")):
        (val / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (1, 2, 3)).save(val / cls / name)
    train, evaluation, id2label = _load(tmp_path, train_dir=str(mixed_folder / "train"), validation_dir=str(val))
    assert (len(train), len(evaluation), id2label) == (10, 2, {0: "a", 1: "b"})


def test_evaluated_classes_need_training_images(tmp_path, caplog):
    """A class folder only in validation_dir (the two folders are loaded together, so it joins the label set) or an
    integer label only in the evaluation set is an error; a class with no images anywhere (1-based integer labels)
    gets a warning."""
    for split, classes in (("train", ("cat", "dog")), ("val", ("bird", "cat", "dog"))):
        for cls in classes:
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (i, 2, 3)).save(tmp_path / split / cls / f"{i}.png")
    with pytest.raises(ValueError, match=r"class\(es\) \['bird'\] with no training images.*'bird': 0, 'cat': 2"):
        _load(tmp_path, train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    images = [Image.new("L", (4, 4), i) for i in range(6)]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": images[:4], "label": [1, 2, 1, 2]}, features=feats),
                          "test": datasets.Dataset.from_dict({"image": images[4:], "label": [1, 3]}, features=feats)}
                         ).save_to_disk(str(tmp_path / "ints"))
    with pytest.raises(ValueError, match=r"class\(es\) \['3'\] with no training images"):
        load_image_classification_data(dataset_name=str(tmp_path / "ints"), eval_split_name="test")
    datasets.Dataset.from_dict({"image": images[:4], "label": [1, 2, 1, 2]}, features=feats).save_to_disk(
        str(tmp_path / "ints_train"))
    with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn.data"):
        train, evaluation, id2label = load_image_classification_data(dataset_name=str(tmp_path / "ints_train"),
                                                                     train_val_split=0)
    assert evaluation is None and id2label == {0: "0", 1: "1", 2: "2"}
    assert "1 class(es) have no training images: ['0']" in caplog.text


def test_processor_sizes():
    from transformers import BitImageProcessor, EfficientNetImageProcessor

    assert processor_sizes(_processor(224)) == ((224, 224), 256)
    assert processor_sizes(_processor(224), image_size=64) == ((64, 64), 73)
    assert processor_sizes(_processor(384)) == ((384, 384), (384, 384))
    assert processor_sizes(EfficientNetImageProcessor(size={"height": 60, "width": 50})) == ((60, 50), (60, 50))
    bit = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224})
    assert processor_sizes(bit) == ((224, 224), 256)


def test_transforms_random_vs_deterministic():
    img = Image.fromarray(_noise(7, (40, 50, 3)))
    train_tf, eval_tf = build_transforms(_processor(), 3)
    assert torch.equal(eval_tf(img), eval_tf(img))
    torch.manual_seed(0)
    assert not torch.equal(train_tf(img), train_tf(img))
    train_tf, eval_tf = build_transforms(_processor(), 3, augment=False)
    assert torch.equal(train_tf(img), eval_tf(img))
    # overrides: size, mean/std (one value broadcasts), TransformArguments plumbing
    _, tf = build_transforms(_processor(), 3, image_size=16, mean=[0.5], std=[0.5])
    x = tf(Image.new("RGB", (20, 20), (255, 0, 255)))
    assert x.shape == (3, 16, 16)
    assert_close(x[:, 0, 0], torch.tensor([1.0, -1.0, 1.0]), ulps=SAME_OPS)
    targs = TransformArguments(image_mean=[0.0], image_std=[1.0], augment=False)
    train_tf, eval_tf = build_transforms(_processor(), 1, **targs.to_kwargs())
    assert train_tf is eval_tf
    assert_close(eval_tf(Image.new("L", (20, 20), 51)), torch.full((1, 32, 32), 0.2), ulps=SAME_OPS)


def test_random_erasing():
    """RandomErasing runs after normalising: an erased rectangle holds exactly 0 (= the channel mean) in every
    channel, the rest equals the same crop without erasing; eval never erases; bad probabilities are refused."""
    img = Image.new("RGB", (32, 32), RGB_CONST)  # normalises to values far from 0 in every channel
    kw = dict(crop_scale=(1.0, 1.0), horizontal_flip=False)
    plain, _ = build_transforms(_processor(), 3, **kw)
    train_tf, eval_tf = build_transforms(_processor(), 3, random_erasing=1.0, **kw)
    ref = plain(img)
    assert (ref.abs() > 0.1).all()
    torch.manual_seed(0)
    for _ in range(5):
        x = train_tf(img)
        erased = (x == 0).all(0)
        frac = erased.float().mean().item()
        assert 0.02 * 0.9 <= frac <= 0.33 * 1.1  # one rectangle of 2-33 % of the area (RandomErasing's default)
        rows, cols = erased.any(1).nonzero().flatten(), erased.any(0).nonzero().flatten()
        assert erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a filled rectangle
        assert torch.equal(x[:, ~erased], ref[:, ~erased])
    assert torch.equal(eval_tf(img), ref)
    never, _ = build_transforms(_processor(), 3, random_erasing=0.0, **kw)
    assert torch.equal(never(img), ref)
    targs = TransformArguments(random_erasing=0.25)
    assert targs.to_kwargs()["random_erasing"] == 0.25
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="random_erasing.*probability in \\[0, 1\\]"):
            build_transforms(_processor(), 3, random_erasing=bad)
        with pytest.raises(ValueError, match="random_erasing"):
            TransformArguments(random_erasing=bad)


def test_normalisation_stats_length():
    """mean/std take 1 value, one per channel, or RGB's 3 (averaged for gray); other lengths are refused, and the
    processor a recipe saves holds the per-channel values its transforms used."""
    from hf_transfer_cnn.recipe.prepare import with_stats as _with_stats

    for channels, mean in ((3, [0.1, 0.2, 0.3, 0.4]), (3, [0.1, 0.2]), (1, [0.1, 0.2]), (4, [0.1, 0.2])):
        with pytest.raises(ValueError, match=f"mean has {len(mean)} values for a {channels}-channel model"):
            build_transforms(_processor(), channels, mean=mean)
    _, gray = build_transforms(_processor(), 1, mean=[0.2, 0.4, 0.6], std=[1.0])
    # 102/255 - 0.4 = 0: a cancellation, so the rounding scale is the operands' (~0.4, std 1), not the result's
    assert_close(gray(Image.new("L", (32, 32), 102)), torch.full((1, 32, 32), 0.0), ulps=SAME_OPS, scale=1.0)
    targs = TransformArguments(image_mean=[0.2, 0.4, 0.6], image_std=[0.5])
    saved = _with_stats(_processor(), targs, 1)
    assert list(saved.image_mean) == pytest.approx([0.4]) and list(saved.image_std) == [0.5]
    saved = _with_stats(_processor(), targs, 4)
    assert list(saved.image_mean) == pytest.approx([0.2, 0.4, 0.6, 0.4]) and list(saved.image_std) == [0.5] * 4


def test_collate_fn():
    rows = [{"pixel_values": torch.zeros(2, 8, 8), "labels": i} for i in range(3)]
    batch = collate_fn(rows)
    assert batch["pixel_values"].shape == (3, 2, 8, 8)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1, 2]


def test_hf_argument_parser():
    from transformers import HfArgumentParser

    data, tfm = HfArgumentParser((DataArguments, TransformArguments)).parse_args_into_dataclasses(
        ["--train_dir", "x", "--train_val_split", "0.2", "--on_bad_image", "error", "--image_mean", "0.1", "0.2",
         "0.3", "--no_augment", "--max_train_samples", "5", "--random_erasing", "0.5"])
    assert (data.train_dir, data.train_val_split, data.on_bad_image, data.max_train_samples) == ("x", 0.2, "error", 5)
    assert tfm.image_mean == [0.1, 0.2, 0.3] and tfm.augment is False and tfm.random_erasing == 0.5


def test_idx_round_trip_and_fashion_mnist_export(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, arr)
        back = read_idx(tmp_path / name)
        assert back.dtype == np.uint8 and np.array_equal(back, arr)
    f = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_idx(tmp_path / "f", f)
    assert np.array_equal(read_idx(tmp_path / "f"), f)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "bad")

    fm = tmp_path / "fm"
    fm.mkdir()
    labels = np.array([0, 9, 3, 0, 5], dtype=np.uint8)
    write_idx(fm / "train-images-idx3-ubyte.gz", arr)
    write_idx(fm / "train-labels-idx1-ubyte.gz", labels)
    write_idx(fm / "t10k-images-idx3-ubyte", arr[:2])
    write_idx(fm / "t10k-labels-idx1-ubyte", labels[:2])
    tx, ty, vx, vy = load_fashion_mnist_idx(fm)
    assert tx.shape == (5, 28, 28) and ty.tolist() == labels.tolist() and vx.shape == (2, 28, 28)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist_idx(tmp_path / "nowhere")

    dirs = fashion_mnist_to_imagefolder(fm, tmp_path / "out")
    assert sorted(os.listdir(dirs["train"])) == sorted({"T-shirt_top", "Ankle boot", "Dress", "Sandal"})
    train, evaluation, id2label = _load(tmp_path, train_dir=dirs["train"], validation_dir=dirs["test"])
    assert (len(train), len(evaluation)) == (5, 2)
    by_name = {}
    for cell, lab in zip(train[:]["image"], train[:]["label"]):
        by_name[os.path.basename(cell["path"])] = id2label[lab]
    assert by_name["000001.png"] == "Ankle boot" and by_name["000000.png"] == "T-shirt_top"
    assert np.array_equal(np.asarray(Image.open(os.path.join(dirs["train"], "Ankle boot", "000001.png"))), arr[1])
    assert FASHION_MNIST_LABELS[9] == "Ankle boot"


def test_separate_validation_dir_labels_are_aligned(tmp_path):
    _memory_dataset(8).save_to_disk(str(tmp_path / "train"))
    val = _memory_dataset(4)  # labels c0, c1, c0, c1 -> stored as c1=0, c0=1 below
    flipped = datasets.ClassLabel(names=["c1", "c0"])
    val = val.cast_column("label", datasets.Value("int64")).map(lambda r: {"label": 1 - r["label"]})
    val.cast_column("label", flipped).save_to_disk(str(tmp_path / "val"))
    train, evaluation, id2label = load_image_classification_data(train_dir=str(tmp_path / "train"),
                                                                 validation_dir=str(tmp_path / "val"))
    assert id2label == {0: "c0", 1: "c1"}
    assert evaluation[:]["label"] == [0, 1, 0, 1]  # same class names as before, now under train's ids
    datasets.Dataset.from_dict({"image": [Image.new("L", (4, 4))], "label": [0]},
                               features=datasets.Features({"image": datasets.Image(),
                                                           "label": datasets.ClassLabel(names=["zebra"])})
                               ).save_to_disk(str(tmp_path / "other"))
    with pytest.raises(ValueError, match=r"classes \['zebra'\] that the training set lacks"):
        load_image_classification_data(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "other"))
