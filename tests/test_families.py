"""Issue #4: the classic families (LeNet-5, AlexNet, VGG, GoogLeNet, ResNet, MobileNetV2, timm) as TransferModels:
stage maps, freezing through Trainer (static and FreezeScheduler), save/reload, heads, GoogLeNet's aux classifiers,
and LeNet-5 trained from scratch."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
import transformers as T
from transformers import TrainerCallback

from hf_transfer_cnn import FastOptions, HeadSpec, TransferModel
from hf_transfer_cnn.convert import convert_torchvision, init_checkpoint
from hf_transfer_cnn.freezing import units_for
from hf_transfer_cnn.model import ClassificationHead
from hf_transfer_cnn.registry import get_module
from tolerance import assert_close

FAMILIES = ["lenet5", "alexnet", "vgg", "googlenet", "resnet", "mobilenet_v2", "timm"]
STAGES = {"lenet5": 2, "alexnet": 4, "vgg": 4, "googlenet": 3, "resnet": 4, "mobilenet_v2": 4, "timm": 4,
          "timm_efficientnet": 5}


def _timm_checkpoint(arch: str, path) -> str:
    """A timm model built locally, saved as transformers' TimmWrapper checkpoint."""
    import timm  # a test extra (make test installs it): never skipped
    torch.manual_seed(0)
    net = timm.create_model(arch, pretrained=False, num_classes=10)
    config = T.TimmWrapperConfig(architecture=arch, num_labels=10, pretrained_cfg=net.pretrained_cfg)
    model = T.TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(net.state_dict())
    model.save_pretrained(path)
    return str(path)


def _torchvision_weights(arch: str, path, **kwargs) -> str:
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(arch, weights=None, **kwargs).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, str]:
    """family -> checkpoint directory: converted from torchvision (GoogLeNet with its aux classifiers, ResNet,
    MobileNetV2), initialised with `init` (LeNet-5, AlexNet, VGG-11-BN), or a local timm model."""
    root = tmp_path_factory.mktemp("families")
    dirs = {
        "lenet5": init_checkpoint("lenet5", root / "lenet5", seed=0),
        "alexnet": init_checkpoint("alexnet", root / "alexnet", seed=0),
        "vgg": init_checkpoint("vgg11_bn", root / "vgg", seed=0),
        "googlenet": convert_torchvision("googlenet", _torchvision_weights(
            "googlenet", root / "g.pth", aux_logits=True, transform_input=True, init_weights=True), root / "googlenet"),
        "resnet": convert_torchvision("resnet18", _torchvision_weights("resnet18", root / "r.pth"), root / "resnet"),
        "mobilenet_v2": convert_torchvision("mobilenet_v2", _torchvision_weights("mobilenet_v2", root / "m.pth"),
                                            root / "mobilenet_v2"),
    }
    dirs["timm"] = _timm_checkpoint("test_resnet", root / "timm")
    dirs["timm_efficientnet"] = _timm_checkpoint("test_efficientnet", root / "timm_eff")
    return {k: str(v) for k, v in dirs.items()}


def _dir(family_dirs, family):
    return family_dirs[family]


def _native_logits(model, x):
    if model.config.model_type == "timm_wrapper":
        return model.timm_model(x)
    return model(pixel_values=x).logits


# --- stage maps ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES + ["timm_efficientnet"])
def test_stage_map_covers_the_network(family_dirs, family):
    """TransferModel's registry-driven forward equals the native forward, and every parameter belongs to exactly
    one stage or the head (GoogLeNet's aux classifiers are the documented exception)."""
    path = _dir(family_dirs, family)
    model = TransferModel.from_pretrained(path, trainable_stages="all").eval()
    native = T.AutoModelForImageClassification.from_pretrained(path).eval()
    assert model.stage_names == ["stem"] + [f"stage{i}" for i in range(1, STAGES[family] + 1)]
    size = 32 if family == "lenet5" else 64
    x = torch.randn(2, model.num_input_channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(model(pixel_values=x).logits, _native_logits(native, x))
    owner: dict[int, str] = {}
    for unit in model.stage_units():
        for p in unit.parameters():
            assert id(p) not in owner, f"{unit.name} shares a parameter with {owner[id(p)]}"
            owner[id(p)] = unit.name
    for p in get_module(model, model.arch.head).parameters():
        assert id(p) not in owner
        owner[id(p)] = "head"
    rest = [n for n, p in model.named_parameters() if id(p) not in owner]
    if family == "googlenet":
        assert rest and all(n.startswith(("googlenet.aux1.", "googlenet.aux2.")) for n in rest)
    else:
        assert rest == []


# --- freezing through Trainer ---------------------------------------------------------------------------------------


def _flat(tensors) -> torch.Tensor:
    tensors = [t.detach().reshape(-1).float() for t in tensors]
    return torch.cat(tensors).clone() if tensors else torch.zeros(0)


def _snapshot(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """unit -> (parameters, BatchNorm running stats); plus the head's parameters."""
    snap = {}
    for unit in units_for(model):
        bn = [b for m in unit.modules for mod in m.modules()
              if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for b in (mod.running_mean, mod.running_var)]
        snap[unit.name] = (_flat(unit.parameters()), _flat(bn))
    snap["head"] = (_flat(get_module(model, model.arch.head).parameters()), torch.zeros(0))
    return snap


class Snapshots(TrainerCallback):
    def __init__(self, model):
        self.model, self.by_step = model, {0: _snapshot(model)}

    def on_step_end(self, args, state, control, **kwargs):
        self.by_step[state.global_step] = _snapshot(self.model)


def _train(model, tmp_path, callbacks=(), *, random_images):
    args = T.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4,
                               learning_rate=0.01, weight_decay=0.1, use_cpu=True, report_to=[],
                               save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0)
    size = 64 if model.config.model_type != "lenet5" else 32
    rec = Snapshots(model)
    T.Trainer(model=model, args=args, train_dataset=random_images(n=8, channels=1, num_labels=3, size=size), callbacks=[rec, *callbacks]).train()
    return rec


def _check_frozen_and_trained(rec, frozen: list[str], trained: list[str], start: int = 0):
    before, after = rec.by_step[start], rec.by_step[3]
    for name in frozen:
        assert torch.equal(before[name][0], after[name][0]), f"frozen {name} changed"
        assert torch.equal(before[name][1], after[name][1]), f"frozen {name}'s BatchNorm statistics changed"
        assert torch.equal(rec.by_step[0][name][0], after[name][0])
    for name in trained:
        assert not torch.equal(before[name][0], after[name][0]), f"{name} did not train"


def _check_reload(model, tmp_path, trainable_stages):
    model.save_pretrained(tmp_path / "saved")
    reloaded = TransferModel.from_pretrained(tmp_path / "saved", trainable_stages=trainable_stages).eval()
    assert reloaded.num_input_channels == 1 and reloaded.config.num_labels == 3
    size = 64 if model.config.model_type != "lenet5" else 32
    x = torch.randn(3, 1, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(model.eval()(pixel_values=x).logits, reloaded(pixel_values=x).logits)
        # the features too: a tiny random backbone's signal can be too small to move the logits (GoogLeNet's is)
        assert torch.equal(model.forward_features(x), reloaded.forward_features(x))


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_train_save_reload(random_images, family_dirs, family, tmp_path):
    """num_labels=3, num_channels=1, trainable_stages=1, three Trainer steps: the top stage and the head change,
    every lower stage and its BatchNorm statistics stay bit-identical; save -> reload gives identical logits."""
    model = TransferModel.from_pretrained(_dir(family_dirs, family), num_labels=3, num_channels=1, trainable_stages=1)
    names = model.stage_names
    aux = [p.detach().clone() for n, p in model.named_parameters() if ".aux" in n]  # GoogLeNet: never trained
    rec = _train(model, tmp_path, random_images=random_images)
    assert all(torch.equal(a, p) for a, p in zip(aux, [p for n, p in model.named_parameters() if ".aux" in n]))
    _check_frozen_and_trained(rec, frozen=names[:-1], trained=[names[-1], "head"])
    top_bn = rec.by_step[0][names[-1]][1]
    if top_bn.numel():  # a training stage updates its BatchNorm statistics
        assert not torch.equal(top_bn, rec.by_step[3][names[-1]][1])
    _check_reload(model, tmp_path, trainable_stages=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_scheduler_unfreezes_top_stage(random_images, family_dirs, family, tmp_path):
    """FreezeScheduler(unfreeze_at_step=1, num_stages=1): the head trains from step 0, the top stage from step 1
    on, the rest never (BatchNorm statistics included); save -> reload gives identical logits."""
    from hf_transfer_cnn import FreezeScheduler

    model = TransferModel.from_pretrained(_dir(family_dirs, family), num_labels=3, num_channels=1)
    names = model.stage_names
    rec = _train(model, tmp_path, callbacks=[FreezeScheduler(unfreeze_at_step=1, num_stages=1)], random_images=random_images)
    assert torch.equal(rec.by_step[0][names[-1]][0], rec.by_step[1][names[-1]][0])  # still frozen at step 1
    assert not torch.equal(rec.by_step[0]["head"][0], rec.by_step[1]["head"][0])
    _check_frozen_and_trained(rec, frozen=names[:-1], trained=[names[-1]], start=1)
    _check_reload(model, tmp_path, trainable_stages=1)


# --- heads ------------------------------------------------------------------------------------------------------------

def test_mlp_head_last_linear_or_whole_classifier(family_dirs, tmp_path):
    """AlexNet's "DNN layers": num_labels alone replaces only the last Linear (plain transformers still loads
    it); a HeadSpec replaces the whole classifier MLP (pooled 6x6 features, or channels for max pooling)."""
    path = family_dirs["alexnet"]
    native = T.AutoModelForImageClassification.from_pretrained(path)
    last = TransferModel.from_pretrained(path, num_labels=3)
    cls = last.alexnet.classifier
    assert len(cls) == 7 and cls[6].weight.shape == (3, 4096)
    assert torch.equal(cls[1].weight, native.alexnet.classifier[1].weight)
    assert torch.equal(cls[4].weight, native.alexnet.classifier[4].weight)
    last.save_pretrained(tmp_path / "last")
    plain = T.AutoModelForImageClassification.from_pretrained(tmp_path / "last").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = plain(pixel_values=x).logits
        # the default fast frozen path (fused inference graph) matches up to float rounding...
        assert_close(last.eval()(pixel_values=x).logits, expected)
        last.freeze(0, fast=FastOptions(enabled=False))  # ...and the stored weights compute it bit for bit
        assert torch.equal(last(pixel_values=x).logits, expected)

    whole = TransferModel.from_pretrained(path, num_labels=3, head=HeadSpec(hidden_sizes=(32,), dropout=0.1))
    head = whole.alexnet.classifier
    assert isinstance(head, ClassificationHead) and head.hidden[0].in_features == 256 * 6 * 6
    assert head.out.weight.shape == (3, 32)
    whole.save_pretrained(tmp_path / "whole")
    again = TransferModel.from_pretrained(tmp_path / "whole").eval()
    with torch.no_grad():
        assert torch.equal(again(pixel_values=x).logits, whole.eval()(pixel_values=x).logits)
    pooled_max = TransferModel.from_pretrained(path, num_labels=3, head={"pooling": "max"})
    assert pooled_max.alexnet.classifier.out.in_features == 256
    with torch.no_grad():
        assert pooled_max.eval()(pixel_values=x).logits.shape == (2, 3)


def test_vgg_native_head_keeps_mlp(family_dirs):
    model = TransferModel.from_pretrained(family_dirs["vgg"], num_labels=5)
    assert [type(m).__name__ for m in model.vgg.classifier] == ["Linear", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert model.vgg.classifier[6].out_features == 5 and model.vgg.classifier[0].in_features == 512 * 7 * 7


def test_init_uses_torchvision_initialisation(family_dirs, tmp_path):
    """`init` initialises as torchvision does: VGG convs kaiming-normal (fan_out), Linear N(0, 0.01), zero biases;
    GoogLeNet N(0, 0.01) with its aux classifiers (torchvision's from-scratch default); BatchNorm 1 / 0."""
    vgg = T.AutoModelForImageClassification.from_pretrained(family_dirs["vgg"])
    conv = vgg.vgg.features[2][0]  # block 3's first conv: 128 -> 256 channels, 3x3
    assert conv.out_channels == 256 and not conv.bias.any()
    assert abs(conv.weight.std().item() / (2 / (256 * 9)) ** 0.5 - 1) < 0.02
    assert abs(vgg.vgg.classifier[3].weight.std().item() / 0.01 - 1) < 0.01
    bn = vgg.vgg.features[0][1]
    assert torch.equal(bn.weight, torch.ones(64)) and torch.equal(bn.running_var, torch.ones(64))
    google = T.AutoModelForImageClassification.from_pretrained(init_checkpoint("googlenet", tmp_path / "g", seed=0))
    assert google.config.aux_logits and not google.config.transform_input
    assert abs(google.googlenet.inception4a.branch2[1].conv.weight.std().item() / 0.01 - 1) < 0.02


# --- GoogLeNet's auxiliary classifiers ------------------------------------------------------------------------------

def test_googlenet_aux_classifiers(family_dirs, tmp_path):
    """Native forward: aux logits in training only, loss = main + 0.3 * (aux1 + aux2). TransferModel runs the main
    path; after a new head the aux heads keep their labels, are saved, and the checkpoint reloads."""
    path = family_dirs["googlenet"]
    native = T.AutoModelForImageClassification.from_pretrained(path)
    assert native.config.aux_logits and native.config.transform_input and native.config.aux_num_labels == 1000
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 7])
    torch.manual_seed(0)
    out = native.train()(pixel_values=x, labels=y)
    main, aux1, aux2 = out.logits, *out.aux_logits
    expected = F.cross_entropy(main, y) + 0.3 * (F.cross_entropy(aux1, y) + F.cross_entropy(aux2, y))
    assert torch.allclose(out.loss, expected) and aux1.shape == (2, 1000)
    assert native.eval()(pixel_values=x).aux_logits is None

    model = TransferModel.from_pretrained(path, num_labels=3)
    assert model.googlenet.aux1.fc2.out_features == 1000 and model.config.aux_num_labels == 1000
    train_out = model.train()(pixel_values=x, labels=torch.tensor([0, 2]))
    assert train_out.logits.shape == (2, 3) and not hasattr(train_out, "aux_logits")
    model.save_pretrained(tmp_path / "g3")
    plain = T.AutoModelForImageClassification.from_pretrained(tmp_path / "g3")
    assert plain.googlenet.fc.out_features == 3 and plain.googlenet.aux2.fc2.out_features == 1000
    with torch.no_grad():
        assert_close(plain.eval()(pixel_values=x).logits, model.eval()(pixel_values=x).logits)
    torch.manual_seed(0)
    out = plain.train()(pixel_values=x, labels=torch.tensor([0, 2]))  # aux heads predict another label set:
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, torch.tensor([0, 2])))  # no aux loss


def test_googlenet_input_transform_rgb_and_gray(family_dirs):
    """RGB: ImageNet-normalised input is mapped to (x - 0.5) / 0.5; gray (normalised with the RGB-averaged statistics
    the adapted processor uses) is mapped to the same scaling, so gray == gray replicated to RGB."""
    rgb = TransferModel.from_pretrained(family_dirs["googlenet"]).eval()
    pixels = torch.rand(1, 3, 8, 8)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert_close(rgb.input_transform((pixels - mean) / std), (pixels - 0.5) / 0.5)
    gray = TransferModel.from_pretrained(family_dirs["googlenet"], num_channels=1).eval()
    p = torch.rand(2, 1, 64, 64)
    m, s = gray.image_processor.image_mean[0], gray.image_processor.image_std[0]
    assert_close(gray.input_transform((p - m) / s), (p - 0.5) / 0.5)
    # the whole model: a gray image == that image replicated to RGB, each through its own processor statistics
    rgb_in = (p.expand(-1, 3, -1, -1) - mean) / std
    torch.testing.assert_close(gray((p - m) / s).logits, rgb(rgb_in).logits, rtol=1e-4, atol=1e-4)


def test_googlenet_gray_model_keeps_its_input_transform_after_reload(family_dirs, tmp_path):
    """A 1-channel GoogLeNet saved and reloaded (by TransferModel and by plain transformers) maps gray input to
    the pretrained scaling exactly as before saving; the backbone features, not only the logits, are identical."""
    gray = TransferModel.from_pretrained(family_dirs["googlenet"], num_channels=1, trainable_stages="all").eval()
    gray.save_pretrained(tmp_path / "gray")
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = gray.input_transform(x)
        assert not torch.equal(expected, x)
        for reloaded in (TransferModel.from_pretrained(tmp_path / "gray", trainable_stages="all").eval(),
                         T.AutoModelForImageClassification.from_pretrained(tmp_path / "gray").eval()):
            assert torch.equal(reloaded.input_transform(x), expected)
            assert torch.equal(reloaded.googlenet.conv1(reloaded.input_transform(x)), gray.googlenet.conv1(expected))


# --- timm ---------------------------------------------------------------------------------------------------------------

def test_timm_class_names_survive_save_and_keep_the_trained_head(family_dirs, tmp_path):
    """TimmWrapperConfig saves `label_names`, not id2label: new class names must land there (the stale ones were
    saved, plain transformers reloaded LABEL_i, and reloading with the same names replaced the trained head)."""
    labels = {0: "cat", 1: "dog", 2: "bird"}
    model = TransferModel.from_pretrained(_dir(family_dirs, "timm"), id2label=labels)
    with torch.no_grad():
        get_module(model, model.arch.head).weight.add_(0.5)  # "trained"
    model.save_pretrained(tmp_path / "ft")
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert saved["label_names"] == ["cat", "dog", "bird"] and saved["num_classes"] == 3
    assert T.AutoConfig.from_pretrained(tmp_path / "ft").id2label == labels
    again = TransferModel.from_pretrained(tmp_path / "ft", id2label=labels)
    assert torch.equal(get_module(again, again.arch.head).weight, get_module(model, model.arch.head).weight)


def test_timm_input_adapter_folder_is_refused_by_plain_transformers(family_dirs, tmp_path, caplog):
    """TimmWrapper ignores num_channels: the saved model_args carry in_chans, so plain transformers refuses the
    folder (stem size mismatch) instead of running it without the trained adapter; TransferModel reloads it bit for
    bit. A native-head family model saves without a warning (it loads with trust_remote_code)."""
    import logging

    model = TransferModel.from_pretrained(_dir(family_dirs, "timm"), num_channels=1).eval()
    with torch.no_grad():
        model.input_adapter.weight.mul_(1.7)
    with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn"):
        model.save_pretrained(tmp_path / "gray")
    assert any("adapter makes plain transformers refuse it" in r.getMessage() for r in caplog.records)
    saved = json.loads((tmp_path / "gray" / "config.json").read_text())
    assert saved["model_args"] == {"in_chans": 1} and saved["num_channels"] == 1
    assert saved["hf_transfer_cnn"]["backbone_config"] == {"num_channels": 3, "model_args": None}
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        T.AutoModelForImageClassification.from_pretrained(tmp_path / "gray")
    again = TransferModel.from_pretrained(tmp_path / "gray").eval()
    assert again.config.model_args is None and again.num_input_channels == 1
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again(x).logits, model(x).logits)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn"):
        TransferModel.from_pretrained(_dir(family_dirs, "lenet5"), num_labels=4).save_pretrained(tmp_path / "lenet")
    assert not [r for r in caplog.records if "needs hf_transfer_cnn" in r.getMessage()]


@pytest.mark.parametrize("arch", ["resnet18", "tf_efficientnet_b5"])  # 224 px / 0.875, 456 px / 0.934
def test_timm_processor_crops_like_timm_at_every_size(arch):
    """The processor built from a timm checkpoint's data config resizes the shortest edge to size / crop_pct and
    centre-crops, as timm's own eval transform does, also at 384 px and more (it used to warp the whole image):
    on a smooth non-square image both agree up to resampling differences."""
    import timm  # a test extra (make test installs it): never skipped
    import numpy as np
    from PIL import Image

    from hf_transfer_cnn.processing import timm_image_processor

    yy, xx = np.mgrid[0:300, 0:500]
    img = Image.fromarray(np.stack([127 + 120 * np.sin(xx / 40.0), 127 + 120 * np.cos(yy / 35.0),
                                    127 + 120 * np.sin((xx + yy) / 50.0)], -1).astype("uint8"))
    cfg = timm.create_model(arch, pretrained=False).pretrained_cfg
    theirs = T.TimmWrapperImageProcessor(pretrained_cfg=cfg)
    ours = timm_image_processor(theirs)
    a, b = (p(img, return_tensors="pt")["pixel_values"] for p in (theirs, ours))
    assert a.shape == b.shape == (1, 3, cfg["input_size"][-1], cfg["input_size"][-1])
    assert (a - b).abs().mean().item() < 0.1  # a warped image is off by ~1 (in std units)


def _timm_with_drop_rate(arch: str, path, x: torch.Tensor):
    """A timm `arch` built with drop_rate=0.5, saved as a TimmWrapper checkpoint; (TransferModel of it, its
    training-mode logits on `x`, timm's training-mode logits on `x` from the same seed)."""
    import timm  # a test extra (make test installs it): never skipped

    net = timm.create_model(arch, pretrained=False, num_classes=3, drop_rate=0.5)
    native = T.TimmWrapperForImageClassification(T.TimmWrapperConfig(
        architecture=arch, num_labels=3, pretrained_cfg=net.pretrained_cfg, model_args={"drop_rate": 0.5}))
    native.timm_model.load_state_dict(net.state_dict())
    native.save_pretrained(path)
    model = TransferModel.from_pretrained(path, trainable_stages="all")
    model.train()
    native.train()
    torch.manual_seed(0)
    ours = model(pixel_values=x).logits
    torch.manual_seed(0)
    return model, ours, native(pixel_values=x).logits


def test_timm_top_level_head_dropout_acts_on_pooled_features(tmp_path):
    """DenseNet keeps global_pool, head_drop and classifier at the top: head_drop is the head's dropout (on pooled
    features, as timm applies it), not part of the last stage's neck, so training-mode logits equal timm's."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model, ours, theirs = _timm_with_drop_rate("densenet121", tmp_path / "densenet", x)
    assert model.arch.head_dropout == "timm_model.head_drop" and model.arch.neck == ()
    assert_close(ours, theirs)


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet"])
def test_timm_functional_head_dropout_is_applied(arch, tmp_path):
    """ResNet and EfficientNet apply `drop_rate` with F.dropout before the classifier (no module): TransferModel applies
    it too, so training-mode logits equal timm's; a new head keeps it; eval is deterministic."""
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model, ours, theirs = _timm_with_drop_rate(arch, tmp_path / arch, x)
    assert model.arch.head_dropout is None and model.arch.head_dropout_rate == 0.5
    assert_close(ours, theirs)
    with torch.no_grad():
        assert not torch.allclose(ours, model.eval()(pixel_values=x).logits, atol=1e-3)  # dropout did act
    new = TransferModel.from_pretrained(tmp_path / arch, num_labels=2).train()  # a new head, on cached features too
    pooled = torch.ones(8, new._feature_dim())
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        runs.append(new(pooled_features=pooled).logits)
    assert not torch.allclose(*runs)
    with torch.no_grad():
        new.eval()
        assert torch.equal(new(pooled_features=pooled).logits, new(pooled_features=pooled).logits)


def test_timm_layout_that_is_no_chain_runs_through_timms_forward(tmp_path):
    """A ConvNeXt head normalises between pooling and classifier, so its modules are no chain: it runs through timm's
    own forward (it used to be refused), the head norm freezing with the last stage. (Refusals:
    tests/test_timm_sweep.py.)"""
    path = _timm_checkpoint("test_convnext", tmp_path / "convnext")
    model = TransferModel.from_pretrained(path, trainable_stages="all").eval()
    assert model.arch.forward == "native" and model.arch.neck == ("timm_model.head.norm",)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, model.timm_model(x))


def test_timm_stage_map_from_metadata(family_dirs):
    path = _dir(family_dirs, "timm_efficientnet")
    arch = TransferModel.from_pretrained(path).arch
    assert arch.stem == ("timm_model.conv_stem", "timm_model.bn1")
    assert arch.stage_paths[0] == ("timm_model.blocks.0",) and arch.stage_paths[-1] == ("timm_model.blocks.4",)
    assert arch.neck == ("timm_model.conv_head", "timm_model.bn2") and arch.head == "timm_model.classifier"
    assert arch.first_conv == "timm_model.conv_stem"


# --- LeNet-5 -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, padding", [(28, 2), (32, 0)])
def test_lenet5_layout(tmp_path, size, padding):
    out = init_checkpoint("lenet5", tmp_path / "l", image_size=size, seed=0)
    model = T.AutoModelForImageClassification.from_pretrained(out)
    assert model.config.conv1_padding == padding and model.config.num_channels == 1
    assert model.config.num_labels == 10 and sum(p.numel() for p in model.parameters()) == 61706
    hidden = model(pixel_values=torch.randn(2, 1, size, size), output_hidden_states=True).hidden_states
    assert [tuple(h.shape[1:]) for h in hidden] == [(6, 14, 14), (16, 5, 5), (120, 1, 1)]
    proc = T.AutoImageProcessor.from_pretrained(out)
    assert (proc.size["height"], proc.size["width"]) == (size, size) and list(proc.image_mean) == [0.5]


def test_lenet5_minimum_input_follows_its_padding(tmp_path):
    """A LeNet-5 built for 32 px (C1 unpadded) cannot take 28 px: the resize is refused with the minimum (a saved
    28 px config with padding 0 would not even reload); one built for 28 px (padding 2) can."""
    unpadded = init_checkpoint("lenet5", tmp_path / "l32", image_size=32, seed=0)
    with pytest.raises(ValueError, match="image_size=28 is below the minimum of 32 px for 'lenet5'"):
        TransferModel.from_pretrained(unpadded, image_size=28)
    model = TransferModel.from_pretrained(unpadded)
    with pytest.raises(ValueError, match="Input 28x28 is smaller than the minimum 32x32"):
        model(pixel_values=torch.randn(1, 1, 28, 28))
    padded = TransferModel.from_pretrained(init_checkpoint("lenet5", tmp_path / "l28", image_size=28, seed=0),
                                           image_size=28)
    assert padded(pixel_values=torch.randn(2, 1, 28, 28)).logits.shape == (2, 10)
    with pytest.raises(ValueError, match="minimum of 28 px"):
        TransferModel.from_pretrained(tmp_path / "l28", image_size=27)


class Digits(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


@pytest.mark.parametrize("size", [28, 32])
def test_lenet5_from_scratch_on_digits(tmp_path, size):
    """scikit-learn's 8x8 digits upscaled, 5 epochs from random init: >= 95% held-out accuracy."""
    import sklearn.datasets as datasets
    images, labels = datasets.load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    x = (F.interpolate(x, size=size, mode="bilinear", align_corners=False) - 0.5) / 0.5  # the processor's mean/std
    y = torch.tensor(labels)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:1300], order[1300:]
    model = T.AutoModelForImageClassification.from_pretrained(
        init_checkpoint("lenet5", tmp_path / "lenet", image_size=size, seed=0))
    args = T.TrainingArguments(output_dir=str(tmp_path / "run"), num_train_epochs=5, per_device_train_batch_size=16,
                               learning_rate=3e-3, use_cpu=True, report_to=[], save_strategy="no",
                               logging_strategy="no", disable_tqdm=True, seed=0)
    T.Trainer(model=model, args=args, train_dataset=Digits(x[train], y[train])).train()
    with torch.no_grad():
        accuracy = (model.eval()(pixel_values=x[test]).logits.argmax(-1) == y[test]).float().mean().item()
    print(f"LeNet-5 {size}px digits held-out accuracy {accuracy:.4f}")
    assert len(test) == 497 and accuracy >= 0.95


def test_timm_gradient_checkpointing_is_honoured(family_dirs, monkeypatch):
    """gradient_checkpointing_enable() on a timm TransferModel: the trainable stages run through
    torch.utils.checkpoint (activations recomputed in the backward, not kept), frozen ones do not, and the
    gradients equal those of the plain run."""
    import torch.utils.checkpoint as ckpt

    model = TransferModel.from_pretrained(family_dirs["timm"], num_labels=3, trainable_stages=2).train()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model(pixel_values=x).logits.sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    calls = []
    original = ckpt.checkpoint
    monkeypatch.setattr(ckpt, "checkpoint", lambda fn, *a, **k: calls.append(fn) or original(fn, *a, **k))
    model.gradient_checkpointing_enable()
    model(pixel_values=x).logits.sum().backward()
    trained = {id(m) for u in model.stage_units()[-2:] for m in u.modules}
    assert calls and {id(m) for m in calls} <= trained
    assert {n for n, p in model.named_parameters() if p.grad is not None} == set(plain)
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, plain[n], rtol=1e-4, atol=1e-5 * max(1.0, float(plain[n].abs().max())))
    model.eval()
    calls.clear()
    with torch.no_grad():
        model(pixel_values=x)
    assert calls == []  # inference never checkpoints
