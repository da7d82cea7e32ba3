"""A family is one file: a toy CNN defined here alone, registered with one `register_family` call, works with
`TransferModel.from_pretrained` and `FreezeScheduler` (no edit anywhere else in the package)."""

from __future__ import annotations

import dataclasses

import logging

import pytest
import torch
import transformers as T
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

import hf_transfer_cnn
from hf_transfer_cnn import ArchSpec, Family, FreezeScheduler, TransferModel, register_family
from hf_transfer_cnn.registry import arch as registry_arch
from hf_transfer_cnn.registry import family as registry_family
from hf_transfer_cnn.registry import get_arch, get_family
from tolerance import SAME_OPS, assert_close

MODEL_TYPE = "toy_cnn_plugin"


# --- the family: config, model, one registration ---------------------------------------------------------------

class ToyPluginConfig(T.PreTrainedConfig):
    model_type = MODEL_TYPE

    num_channels: int = 3
    widths: list[int] | tuple[int, ...] = (8, 12, 16)
    image_size: int = 32


class ToyPluginForImageClassification(T.PreTrainedModel):
    """stem -> stages (each halves the resolution) -> global average pool -> classifier."""

    config_class = ToyPluginConfig
    base_model_prefix = "toy"
    main_input_name = "pixel_values"

    def __init__(self, config: ToyPluginConfig):
        super().__init__(config)
        w = list(config.widths)
        self.stem = nn.Sequential(nn.Conv2d(config.num_channels, w[0], 3, padding=1), nn.BatchNorm2d(w[0]), nn.ReLU())
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU())
            for a, b in zip(w, w[1:] + w[-1:]))
        self.pooler = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(w[-1], config.num_labels)
        self.post_init()

    def pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixel_values)
        for stage in self.stages:
            x = stage(x)
        return self.pooler(x).flatten(1)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                **kwargs) -> ImageClassifierOutput:
        logits = self.classifier(self.pooled(pixel_values))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


register_family(Family(
    ArchSpec(MODEL_TYPE, stem=("stem",), stages="stages", first_conv="stem.0", pooler="pooler", min_image_size=16),
    config_class=ToyPluginConfig, model_class=ToyPluginForImageClassification,
))


# --- tests ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("toy_plugin")
    torch.manual_seed(0)
    model = ToyPluginForImageClassification(ToyPluginConfig(num_labels=5))
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a pretrained model has
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    T.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class StepSnapshots(T.TrainerCallback):
    """`module`'s state after each optimizer step."""

    def __init__(self, module: nn.Module):
        self.module, self.after_step = module, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.after_step[state.global_step] = _snapshot(self.module)


def test_registered_with_the_package_and_transformers():
    assert hf_transfer_cnn.register_family is register_family
    assert get_arch(MODEL_TYPE).stages == "stages"
    assert get_family(MODEL_TYPE).model_class is ToyPluginForImageClassification
    assert T.AutoConfig.for_model(MODEL_TYPE).__class__ is ToyPluginConfig


def test_transfer_model_matches_the_native_model(toy_checkpoint):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    native = ToyPluginForImageClassification.from_pretrained(toy_checkpoint).eval()
    same_head = TransferModel.from_pretrained(toy_checkpoint).eval()
    model = TransferModel.from_pretrained(toy_checkpoint, num_labels=3, trainable_stages=1).eval()
    assert isinstance(model, ToyPluginForImageClassification) and isinstance(model, TransferModel)
    assert model.stage_names == ["stem", "stage1", "stage2", "stage3"]
    assert model.image_processor.size == {"height": 32, "width": 32}
    with torch.no_grad():
        assert_close(same_head(pixel_values=x).logits, native(pixel_values=x).logits, ulps=SAME_OPS)
        pooled = model.pooled_features(x)
        assert_close(pooled, native.pooled(x), ulps=SAME_OPS)
        assert model(pixel_values=x).logits.shape == (2, 3)
        assert_close(model(pixel_values=x).logits, model.classifier(pooled), ulps=SAME_OPS)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("stages.2.", "classifier."))}


def test_freeze_scheduler_trains_the_toy_family(random_images, toy_checkpoint, tmp_path):
    model = TransferModel.from_pretrained(toy_checkpoint, num_labels=3, trainable_stages=1)
    units = {u.name: u.modules for u in model.stage_units()}
    parts = {"stem+stage1": nn.ModuleList(units["stem"] + units["stage1"]), "stage2": units["stage2"][0],
             "stage3": units["stage3"][0], "head": model.classifier}
    before = {name: _snapshot(m) for name, m in parts.items()}
    args = T.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4,
                               learning_rate=0.01, use_cpu=True, report_to=[], save_strategy="no",
                               remove_unused_columns=False, disable_tqdm=True, seed=0)
    scheduler, stage2 = FreezeScheduler(unfreeze_at_step=2, num_stages=2, lr_factor=0.1), StepSnapshots(parts["stage2"])
    T.Trainer(model=model, args=args, train_dataset=random_images(n=12, size=32, num_labels=3), callbacks=[scheduler, stage2]).train()
    after = {name: _snapshot(m) for name, m in parts.items()}
    assert _same(before["stem+stage1"], after["stem+stage1"])  # frozen throughout: bit-identical, BN stats too
    for name in ("stage2", "stage3", "head"):  # stage2 unfrozen at step 2, stage3 and the head train from step 0
        assert not _same(before[name], after[name]), name
    assert sorted(stage2.after_step) == [1, 2, 3] and model.freeze_state.trainable_stages == 2
    assert _same(stage2.after_step[2], before["stage2"])  # frozen for optimizer steps 1 and 2, trained by step 3


def test_a_transformers_model_type_is_not_shadowed(monkeypatch, caplog):
    """A family for a model type transformers defines keeps transformers' own classes in the Auto mappings."""
    for module, name in ((registry_arch, "_REGISTRY"), (registry_family, "_FAMILIES"), (registry_family, "_CLASSES"),
                         (registry_family, "_CHECKPOINTS")):  # leave the session's registry as it was
        monkeypatch.setattr(module, name, dict(getattr(module, name)))

    class FakeViTConfig(ToyPluginConfig):
        model_type = "vit"

    class FakeViTForImageClassification(ToyPluginForImageClassification):
        config_class = FakeViTConfig

    with caplog.at_level(logging.WARNING, logger=registry_family.__name__):
        register_family(Family(ArchSpec("vit", stem=("stem",), stages="stages", first_conv="stem.0"),
                               config_class=FakeViTConfig, model_class=FakeViTForImageClassification), overwrite=True)
    assert "transformers defines a model type 'vit'" in caplog.text
    assert T.AutoConfig.for_model("vit").__class__ is T.ViTConfig
    assert T.AutoModelForImageClassification.from_config(
        T.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, image_size=8,
                    patch_size=4)).__class__ is T.ViTForImageClassification


def test_another_family_for_a_registered_model_type_is_refused(monkeypatch):
    """A plugin cannot replace a built-in family (or another plugin's) by accident; the same family registered again
    (its module imported twice) refreshes it."""
    for module, name in ((registry_arch, "_REGISTRY"), (registry_family, "_FAMILIES"), (registry_family, "_CLASSES"),
                         (registry_family, "_CHECKPOINTS")):  # leave the session's registry as it was
        monkeypatch.setattr(module, name, dict(getattr(module, name)))
    builtin = registry_family._FAMILIES["resnet"]
    other = Family(ArchSpec("resnet", stem=("stem",), stages="stages", first_conv="stem.0"))
    with pytest.raises(ValueError, match=r"model_type 'resnet' is already registered \(a stage map with "
                                         r"stem=\('resnet.embedder',\).*overwrite=True"):
        register_family(other)
    assert registry_family._FAMILIES["resnet"] is builtin and registry_arch.get_arch("resnet") is builtin.arch
    again = Family(ArchSpec(**{f.name: getattr(builtin.arch, f.name) for f in dataclasses.fields(builtin.arch)}),
                   checkpoints=builtin.checkpoints)  # equal facts, as a second import of the module makes them
    assert register_family(again) is again and registry_arch.get_arch("resnet") is again.arch
    register_family(other, overwrite=True)
    assert registry_arch.get_arch("resnet") is other.arch


def test_a_family_for_a_stage_map_registered_alone(monkeypatch):
    """register_arch (what the unsupported-architecture error suggests) and then register_family with the same
    stage map is fine; a different stage map is refused unless overwrite=True."""
    for module, name in ((registry_arch, "_REGISTRY"), (registry_family, "_FAMILIES"), (registry_family, "_CLASSES"),
                         (registry_family, "_CHECKPOINTS")):
        monkeypatch.setattr(module, name, dict(getattr(module, name)))
    spec = ArchSpec("my_cnn", stem=("stem",), stages="stages", first_conv="stem.0")
    registry_arch.register_arch(spec)
    assert register_family(Family(ArchSpec("my_cnn", stem=("stem",), stages="stages", first_conv="stem.0")))
    with pytest.raises(ValueError, match="'my_cnn' is already registered"):
        register_family(Family(ArchSpec("my_cnn", stem=("stem", "pool"), stages="stages", first_conv="stem.0")))
    registry_arch.register_arch(ArchSpec("other_cnn", stem=("stem",), stages="stages", first_conv="stem.0"))
    with pytest.raises(ValueError, match="'other_cnn' is already registered"):
        register_family(Family(ArchSpec("other_cnn", stem=("body",), stages="stages", first_conv="body.0")))
