"""Issue #6: cached backbone features train the same model as the full path, and are reused across runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T

from hf_transfer_cnn import TransferModel
from hf_transfer_cnn.data import build_transforms, collate_fn, load_image_classification_data, with_transforms, write_imagefolder
from hf_transfer_cnn.features import cache_pooled_features
from tolerance import OTHER_KERNELS, assert_close, max_error_ulps


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (36, 36, 3), dtype=np.uint8) for _ in range(24)]
    write_imagefolder(root, images, [i % 3 for i in range(24)], ["a", "b", "c"], split="train")
    return str(root / "train")


def _model(ckpt):
    torch.manual_seed(0)
    return TransferModel.from_pretrained(ckpt, num_labels=3, image_size=32, trainable_stages=0)


def _train(model, ds, tmp_path, collator):
    args = T.TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=0.05,
                               use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
                               seed=0, data_seed=0, remove_unused_columns=False)
    T.Trainer(model=model, args=args, train_dataset=ds, data_collator=collator).train()


def test_cached_path_trains_the_same_model(tiny_checkpoints, folder, tmp_path):
    ckpt = tiny_checkpoints["mobilenet_v2"]  # has head dropout: same masks on both paths
    train_raw, _, _ = load_image_classification_data(train_dir=folder, train_val_split=0)
    normal = _model(ckpt)
    _, eval_tf = build_transforms(normal.image_processor, 3, image_size=32, augment=False)
    _train(normal, with_transforms(train_raw, eval_tf), tmp_path / "a", collate_fn)

    cached_model = _model(ckpt)
    cache_dir = tmp_path / "cache"
    cached = cache_pooled_features(cached_model, train_raw, eval_tf, cache_dir=cache_dir)
    assert set(cached.column_names) == {"pooled_features", "labels"} and len(cached) == 24
    _train(cached_model, cached, tmp_path / "b", None)

    x = torch.stack([eval_tf(train_raw[i]["image"]) for i in range(6)])
    assert_close(cached_model.eval()(x).logits, normal.eval()(x).logits)  # six steps on two paths
    initial = _model(ckpt).classifier.weight
    assert not torch.equal(cached_model.classifier.weight, initial), "the head did not train"

    # A later run reuses the Arrow file; a different backbone gets a different file.
    files = sorted(cache_dir.glob("*.arrow"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    again = cache_pooled_features(_model(ckpt), train_raw, eval_tf, cache_dir=cache_dir)
    assert files[0].stat().st_mtime_ns == mtime and torch.equal(again[:]["pooled_features"], cached[:]["pooled_features"])
    other = _model(ckpt)
    with torch.no_grad():
        next(other.mobilenet_v2.parameters()).add_(0.01)
    cache_pooled_features(other, train_raw, eval_tf, cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.arrow"))) == 2


def test_cache_refuses_trainable_backbone_and_augmentation(tiny_checkpoints, folder, tmp_path):
    train_raw, _, _ = load_image_classification_data(train_dir=folder, train_val_split=0)
    model = TransferModel.from_pretrained(tiny_checkpoints["resnet"], num_labels=3, trainable_stages=1)
    train_tf, eval_tf = build_transforms(model.image_processor, 3, image_size=32, augment=True)
    with pytest.raises(ValueError, match="whole backbone frozen"):
        cache_pooled_features(model, train_raw, eval_tf, cache_dir=tmp_path)
    model.freeze(0)
    with pytest.raises(ValueError, match="deterministic transform"):
        cache_pooled_features(model, train_raw, train_tf, cache_dir=tmp_path)
    from torchvision.transforms import v2

    deterministic = v2.Compose([v2.ToImage(), v2.Resize(32), v2.CenterCrop(32), v2.ToDtype(torch.float32, scale=True),
                                v2.Normalize([0.5] * 3, [0.25] * 3)])
    assert len(cache_pooled_features(model, train_raw, deterministic, cache_dir=tmp_path)) == 24  # a v2 Module
    flip = v2.Compose([v2.ToImage(), v2.Resize(32), v2.CenterCrop(32), v2.RandomHorizontalFlip(),
                       v2.ToDtype(torch.float32, scale=True)])
    with pytest.raises(ValueError, match="RandomHorizontalFlip"):
        cache_pooled_features(model, train_raw, flip, cache_dir=tmp_path)
    torch.manual_seed(0)

    def coin(image):  # not a torchvision step: found by running it on the same image
        x = eval_tf(image)
        return x.flip(-1) if torch.rand(()) < 0.5 else x

    with pytest.raises(ValueError, match="different outputs for the same image"):
        cache_pooled_features(model, train_raw, coin, cache_dir=tmp_path)


def test_cache_key_follows_the_compute_config_not_the_labels(tiny_checkpoints, folder, tmp_path):
    """Same weights, another activation (the config, not the weights, sets it): another cache entry with the right
    features; new label names alone keep the entry."""
    import json
    import shutil

    from hf_transfer_cnn.features import feature_cache_key

    train_raw, _, _ = load_image_classification_data(train_dir=folder, train_val_split=0)
    gelu = tmp_path / "gelu"
    shutil.copytree(tiny_checkpoints["resnet"], gelu)
    config = json.loads((gelu / "config.json").read_text())
    assert config.get("hidden_act", "relu") == "relu"
    (gelu / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    relu_model, gelu_model = _model(tiny_checkpoints["resnet"]), _model(gelu)
    _, eval_tf = build_transforms(relu_model.image_processor, 3, image_size=32, augment=False)
    assert feature_cache_key(relu_model, eval_tf, train_raw) != feature_cache_key(gelu_model, eval_tf, train_raw)
    relabelled = TransferModel.from_pretrained(tiny_checkpoints["resnet"], id2label={0: "x", 1: "y", 2: "z"},
                                               image_size=32, trainable_stages=0)
    assert feature_cache_key(relabelled, eval_tf, train_raw) == feature_cache_key(relu_model, eval_tf, train_raw)
    cache_pooled_features(relu_model, train_raw, eval_tf, cache_dir=tmp_path / "c")
    cached = cache_pooled_features(gelu_model, train_raw, eval_tf, cache_dir=tmp_path / "c")
    with torch.no_grad():
        true = gelu_model.eval().pooled_features(torch.stack([eval_tf(im) for im in train_raw["image"]]))
    # equal up to float rounding: the frozen prefix's inference graph changes plan after its first calls at a batch
    # size (the cache ran the first call); the relu model's features are farther off by orders of magnitude
    assert_close(cached[:]["pooled_features"], true)
    relu_cached = cache_pooled_features(relu_model, train_raw, eval_tf, cache_dir=tmp_path / "c")
    assert max_error_ulps(relu_cached[:]["pooled_features"], true) > 100 * OTHER_KERNELS


def test_plain_transform_gets_the_image_as_stored(tiny_checkpoints, tmp_path):
    """A plain callable gets the decoded image as stored: 16-bit gray stays 16-bit (it had been cut to 8 bits and
    converted to the model's mode first), and the cached features are those of its tensors."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "deep" / "train"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(3):
            arr = (np.arange(32 * 32, dtype=np.int64).reshape(32, 32) * (7 + 5 * i + 11 * c)) % 65536
            Image.fromarray(arr.astype(np.uint16)).save(root / f"c{c}" / f"{i}.png")
    train_raw, _, _ = load_image_classification_data(train_dir=str(root), train_val_split=0)
    model = _model(tiny_checkpoints["resnet"])
    modes = set()

    def deep(img):  # the user's own decoding of 16-bit data
        modes.add(img.mode)
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 65535.0).expand(3, -1, -1).contiguous()

    cached = cache_pooled_features(model, train_raw, deep, cache_dir=tmp_path / "c")
    assert modes == {"I;16"} or modes == {"I"}, modes  # PIL opens 16-bit PNGs as I;16 (or I): never 8-bit L
    from hf_transfer_cnn.data import load_image

    with torch.no_grad():
        true = model.eval().pooled_features(torch.stack([deep(load_image(c)) for c in train_raw["image"]]))
    assert_close(cached[:]["pooled_features"], true)  # failed at 1.19e-6 with a fixed atol=1e-6


def test_cache_key_ignores_timm_label_fields(folder, tmp_path):
    """TimmWrapperConfig keeps labels in label_names/num_classes too: new class names keep the cache entry; the
    1x1 input adapter (a compute setting in our metadata) does not."""
    import timm
    import transformers as T

    from hf_transfer_cnn.features import feature_cache_key

    net = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    native = T.TimmWrapperForImageClassification(T.TimmWrapperConfig(
        architecture="test_resnet", num_labels=3, pretrained_cfg=net.pretrained_cfg))
    native.timm_model.load_state_dict(net.state_dict())
    native.save_pretrained(tmp_path / "timm")
    train_raw, _, _ = load_image_classification_data(train_dir=folder, train_val_split=0)

    def key(**kw):
        model = TransferModel.from_pretrained(tmp_path / "timm", image_size=64, trainable_stages=0, **kw)
        _, eval_tf = build_transforms(model.image_processor, model.num_input_channels, image_size=64, augment=False)
        return feature_cache_key(model, eval_tf, train_raw)

    a, b = key(id2label={0: "a", 1: "b", 2: "c"}), key(id2label={0: "x", 1: "y", 2: "z"})
    assert a == b
    assert key(id2label={0: "a", 1: "b", 2: "c"}, num_channels=1) != a


# --- the cache is keyed on content, and a damaged file is rebuilt -------------------------------------------------

def _fresh_features(model, raw, eval_tf):
    from hf_transfer_cnn.data import load_image

    with torch.no_grad():
        return model.eval().pooled_features(torch.stack([eval_tf(load_image(c)) for c in raw["image"]]))


def test_image_replaced_in_place_is_never_served_stale_features(tiny_checkpoints, tmp_path):
    """One image overwritten with other pixels, its modification time restored (a sync tool, a checkout): same
    names, same mtimes, same datasets fingerprint. The next call recomputes, for the loaded dataset and a new load."""
    import os

    from PIL import Image

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (36, 36, 3), dtype=np.uint8) for _ in range(8)]
    train_dir = write_imagefolder(tmp_path / "imgs", images, [i % 2 for i in range(8)], ["a", "b"], split="train")
    raw, _, _ = load_image_classification_data(train_dir=train_dir, train_val_split=0,
                                               dataset_cache_dir=str(tmp_path / "ds_cache"))
    model = _model(tiny_checkpoints["resnet"])
    _, eval_tf = build_transforms(model.image_processor, 3, image_size=32, augment=False)
    before = cache_pooled_features(model, raw, eval_tf, cache_dir=tmp_path / "c")[:]["pooled_features"]

    victim = raw[3]["image"]["path"]
    stat = os.stat(victim)
    Image.fromarray(255 - np.asarray(Image.open(victim))).save(victim)  # other pixels, same name
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(victim).st_mtime_ns == stat.st_mtime_ns

    reloaded, _, _ = load_image_classification_data(train_dir=train_dir, train_val_split=0,
                                                    dataset_cache_dir=str(tmp_path / "ds_cache"))
    for ds in (raw, reloaded):
        after = cache_pooled_features(model, ds, eval_tf, cache_dir=tmp_path / "c")[:]["pooled_features"]
        fresh = _fresh_features(model, ds, eval_tf)
        assert not torch.equal(after[3], before[3]), "stale features served for the replaced image"
        assert_close(after, fresh)
        assert torch.equal(torch.cat([after[:3], after[4:]]), torch.cat([before[:3], before[4:]]))


def test_damaged_cache_file_is_rebuilt_with_a_warning_naming_it(tiny_checkpoints, folder, tmp_path, caplog):
    """The real Arrow cache file cut short (a full disk, a killed copy): rebuilt, not an ArrowInvalid traceback."""
    import logging

    raw, _, _ = load_image_classification_data(train_dir=folder, train_val_split=0)
    model = _model(tiny_checkpoints["resnet"])
    _, eval_tf = build_transforms(model.image_processor, 3, image_size=32, augment=False)
    cache_dir = tmp_path / "c"
    first = cache_pooled_features(model, raw, eval_tf, cache_dir=cache_dir)[:]["pooled_features"]
    (path,) = cache_dir.glob("*.arrow")
    data = path.read_bytes()
    for cut in (0, len(data) // 2, len(data) - 9):  # empty; mid-batch; the last byte before the end marker
        path.write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn"):
            again = cache_pooled_features(model, raw, eval_tf, cache_dir=cache_dir)[:]["pooled_features"]
        assert any(str(path) in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records), caplog.text
        assert torch.equal(again, first) and path.stat().st_size == len(data)
