"""Vision Transformers (ViT, ViT-MSN, I-JEPA, DeiT, BEiT, Data2Vec-Vision, DINOv2 with and without registers, Swin,
Swin V2) as TransferModels running their own forward:
logits equal transformers', stages freeze bit-exactly through Trainer + FreezeScheduler (also on the plain model,
also under 2-rank DDP), save/load and resume are bit-identical, other sizes and channels reach plain transformers."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image

from hf_transfer_cnn import FreezeScheduler, TransferModel
from hf_transfer_cnn.freezing import units_for
from hf_transfer_cnn.registry import get_module
from tolerance import assert_close

REPO = Path(__file__).resolve().parents[1]
_VIT = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8, hidden_dropout_prob=0.1)
_DINO = {k: v for k, v in _VIT.items() if k != "intermediate_size"}  # DINOv2 sizes its MLP by mlp_ratio
_SWIN = dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=2,
             drop_path_rate=0.1, hidden_dropout_prob=0.1)
CONFIGS = {
    "vit": lambda: T.ViTConfig(**_VIT, attention_probs_dropout_prob=0.1),
    "deit": lambda: T.DeiTConfig(**_VIT, architectures=["DeiTForImageClassification"]),
    "beit": lambda: T.BeitConfig(**_VIT, use_mean_pooling=True, use_relative_position_bias=True, drop_path_rate=0.1),
    "dinov2": lambda: T.Dinov2Config(**_DINO, mlp_ratio=2, drop_path_rate=0.1),
    "vit_msn": lambda: T.ViTMSNConfig(**_VIT),
    "ijepa": lambda: T.IJepaConfig(**_VIT),
    "data2vec-vision": lambda: T.Data2VecVisionConfig(**_VIT, use_mean_pooling=False,
                                                      use_shared_relative_position_bias=True),
    "dinov2_with_registers": lambda: T.Dinov2WithRegistersConfig(**_DINO, mlp_ratio=2),
    "swin": lambda: T.SwinConfig(**_SWIN),
    "swinv2": lambda: T.Swinv2Config(**_SWIN),
}
TYPES = list(CONFIGS)


def _config(model_type: str, num_labels: int = 4):
    config = CONFIGS[model_type]()
    config.num_labels = num_labels
    return config


@pytest.fixture(scope="module")
def vit_dirs(tmp_path_factory) -> dict[str, str]:
    """model_type -> a saved tiny random checkpoint (with a 32 px image processor)."""
    root = tmp_path_factory.mktemp("vits")
    out = {}
    for t in TYPES:
        torch.manual_seed(0)
        model = T.AutoModelForImageClassification.from_config(_config(t))
        model.save_pretrained(root / t)
        T.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / t)
        out[t] = str(root / t)
    return out


def _x(channels: int = 3, size: int = 32, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _param_names(model, unit) -> list[str]:
    ids = {id(p) for p in unit.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in ids]


# --- the forward ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", TYPES)
def test_forward_is_the_native_forward(vit_dirs, model_type):
    """Same logits as transformers' own class (frozen or not); every parameter in one stage or the head."""
    path = vit_dirs[model_type]
    native = T.AutoModelForImageClassification.from_pretrained(path).eval()
    with torch.no_grad():
        expected = native(pixel_values=_x()).logits
    for trainable in ("all", 1):
        model = TransferModel.from_pretrained(path, trainable_stages=trainable).eval()
        assert model.arch.forward == "native" and model.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
        with torch.no_grad():
            assert_close(model(pixel_values=_x()).logits, expected)
    owner: dict[int, str] = {}
    for unit in model.stage_units():
        for p in unit.parameters():
            assert id(p) not in owner, f"{unit.name} shares a parameter with {owner[id(p)]}"
            owner[id(p)] = unit.name
    head = {id(p) for p in get_module(model, model.arch.head).parameters()}
    assert [n for n, p in model.named_parameters() if id(p) not in owner and id(p) not in head] == []


@pytest.mark.parametrize("model_type", TYPES)
def test_frozen_stages_run_without_grad_and_dropout(vit_dirs, model_type):
    """In training mode a frozen backbone is deterministic (dropout and drop-path off) and gets no gradient; the
    classifier's input is what `pooled_features` gives."""
    model = TransferModel.from_pretrained(vit_dirs[model_type], num_labels=3, trainable_stages=0).train()
    x = _x()
    a, b = model(pixel_values=x).logits, model(pixel_values=x).logits
    assert_close(a, b)  # float rounding of the frozen modules' inference copies only
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.classify_pooled(model.pooled_features(x)), model(pixel_values=x).logits)
    model.freeze(1)
    model.train()
    model(pixel_values=x, labels=torch.tensor([0, 1])).loss.backward()
    units = model.stage_units()
    assert all(p.grad is None for u in units[:-1] for p in u.parameters())
    assert all(p.grad is not None for p in units[-1].parameters())
    model.unfreeze()
    runs = [model(pixel_values=x).logits for _ in range(2)]
    assert not torch.allclose(*runs, rtol=1e-3, atol=1e-4)  # dropout / drop-path act again once the stages train


# --- training ---------------------------------------------------------------------------------------------------------

def _args(out, **kw) -> T.TrainingArguments:
    base = dict(output_dir=str(out), max_steps=3, per_device_train_batch_size=4, learning_rate=0.05, weight_decay=0.1,
                use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, data_seed=0)
    return T.TrainingArguments(**{**base, **kw})


@pytest.mark.parametrize("model_type", TYPES)
def test_trainer_with_freeze_scheduler_keeps_frozen_stages_bit_exact(vit_dirs, model_type, random_images, tmp_path):
    """Top stage + head train from step 0, stage3 from step 2 (FreezeScheduler); stem, stage1, stage2 never move."""
    model = TransferModel.from_pretrained(vit_dirs[model_type], num_labels=4, trainable_stages=1)
    before = _state(model)
    trainer = T.Trainer(model=model, args=_args(tmp_path), train_dataset=random_images(n=12, size=32),
                        callbacks=[FreezeScheduler(unfreeze_at_step=2, num_stages=2)])
    trainer.train()
    units = model.stage_units()
    frozen = [n for u in units[:3] for n in _param_names(model, u)]
    assert frozen and all(torch.equal(model.get_parameter(n), before[n]) for n in frozen)
    for unit in units[3:]:
        assert any(not torch.equal(model.get_parameter(n), before[n]) for n in _param_names(model, unit)), unit.name
    assert not torch.equal(get_module(model, model.arch.head).weight, before[f"{model.arch.head}.weight"])
    model.train()
    assert not any(m.training for u in units[:3] for mod in u.modules for m in mod.modules())


@pytest.mark.parametrize("model_type", TYPES)
def test_resume_from_a_trainer_checkpoint_is_bit_identical(vit_dirs, model_type, random_images, tmp_path):
    def run(out, resume=None):
        torch.manual_seed(0)
        model = TransferModel.from_pretrained(vit_dirs[model_type], num_labels=4, trainable_stages=1)
        args = _args(out, max_steps=6, save_strategy="steps", save_steps=2)
        trainer = T.Trainer(model=model, args=args, train_dataset=random_images(n=32, size=32),  # 8 steps an epoch
                            callbacks=[FreezeScheduler(unfreeze_at_step=3, num_stages=2, lr_factor=0.5)])
        trainer.train(resume_from_checkpoint=resume)
        return _state(model)

    full = run(tmp_path / "full")
    for ck in ("checkpoint-2", "checkpoint-4"):  # before / after the unfreeze at step 3
        out = tmp_path / f"resume_{ck}"
        shutil.copytree(tmp_path / "full", out)
        for later in out.glob("checkpoint-*"):
            if int(later.name.split("-")[1]) > int(ck.split("-")[1]):
                shutil.rmtree(later)
        resumed = run(out, resume=str(out / ck))
        assert all(torch.equal(v, resumed[k]) for k, v in full.items()), ck


# --- saving, sizes, channels ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", TYPES)
def test_save_load_round_trip_and_pipeline(vit_dirs, model_type, tmp_path):
    labels = {0: "cat", 1: "dog", 2: "fox"}
    model = TransferModel.from_pretrained(vit_dirs[model_type], id2label=labels, trainable_stages=2).eval()
    with torch.no_grad():
        get_module(model, model.arch.head).weight.normal_(generator=torch.Generator().manual_seed(3))
        logits = model(pixel_values=_x()).logits
    model.save_pretrained(tmp_path / "saved")
    again = TransferModel.from_pretrained(tmp_path / "saved").eval()
    state, reloaded = _state(model), _state(again)
    assert state.keys() == reloaded.keys() and all(torch.equal(v, reloaded[k]) for k, v in state.items())
    plain = T.AutoModelForImageClassification.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        assert torch.equal(again(pixel_values=_x()).logits, logits)
        assert_close(plain(pixel_values=_x()).logits, logits)
    image = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8"))
    predictions = T.pipeline("image-classification", model=str(tmp_path / "saved"), device="cpu")(image)
    assert {p["label"] for p in predictions} == set(labels.values())


@pytest.mark.parametrize("model_type", TYPES)
def test_other_size_and_channels_reach_plain_transformers(vit_dirs, model_type, tmp_path):
    """48 px grayscale: ViT/DeiT position embeddings are resampled (the config says 48), the others interpolate at
    run time (their config keeps 32); plain transformers gives the same logits from the saved folder."""
    model = TransferModel.from_pretrained(vit_dirs[model_type], image_size=48, num_channels=1).eval()
    assert model.config.num_channels == 1 and model.image_processor.size["height"] == 48
    assert model.config.image_size == (48 if model_type in ("vit", "deit", "vit_msn", "ijepa") else 32)
    x = _x(channels=1, size=48)
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    model.save_pretrained(tmp_path / "gray48")
    plain = T.AutoModelForImageClassification.from_pretrained(tmp_path / "gray48").eval()
    with torch.no_grad():
        assert_close(plain(pixel_values=x).logits, logits)


def test_position_embeddings_resample_as_the_model_interpolates(vit_dirs):
    """Resampling once equals ViT's own interpolation at every forward (interpolate_pos_encoding=True)."""
    native = T.AutoModelForImageClassification.from_pretrained(vit_dirs["vit"]).eval()
    model = TransferModel.from_pretrained(vit_dirs["vit"], image_size=48, trainable_stages="all").eval()
    assert model.vit.embeddings.position_embeddings.shape[1] == 1 + 6 * 6
    with torch.no_grad():
        expected = native(pixel_values=_x(size=48), interpolate_pos_encoding=True).logits
        assert_close(model(pixel_values=_x(size=48)).logits, expected)


def test_custom_head_and_what_is_refused(vit_dirs, tmp_path):
    model = TransferModel.from_pretrained(vit_dirs["vit"], num_labels=3, head={"hidden_sizes": [16], "dropout": 0.1})
    assert model(pixel_values=_x()).logits.shape == (2, 3)
    model.save_pretrained(tmp_path / "custom")
    again = TransferModel.from_pretrained(tmp_path / "custom").eval()
    model.eval()
    with torch.no_grad():
        assert_close(again(pixel_values=_x()).logits, model(pixel_values=_x()).logits)
    with pytest.raises(ValueError, match="pooling='max' is not available.*Use pooling='avg'"):
        TransferModel.from_pretrained(vit_dirs["vit"], num_labels=3, head={"pooling": "max"})
    with pytest.raises(ValueError, match="forward_features is not available.*runs its own forward"):
        model.forward_features(_x())
    with pytest.raises(ValueError, match="minimum of 8 px"):
        TransferModel.from_pretrained(vit_dirs["vit"], image_size=4)


def test_distilled_deit_with_two_heads_is_refused_with_the_fix(tmp_path):
    config = _config("deit")
    config.architectures = ["DeiTForImageClassificationWithTeacher"]
    T.DeiTForImageClassificationWithTeacher(config).save_pretrained(tmp_path / "distilled")
    with pytest.raises(ValueError, match="two heads.*transfer_class_for"):
        TransferModel.from_pretrained(tmp_path / "distilled", num_labels=3)


# --- DDP -------------------------------------------------------------------------------------------------------------

_DDP_SCRIPT = '''
import os, sys
import torch
import transformers as T
from hf_transfer_cnn import FreezeScheduler


class Data(torch.utils.data.Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 4, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


ckpt, out = sys.argv[1], sys.argv[2]
model = T.AutoModelForImageClassification.from_pretrained(ckpt)  # the plain transformers model
args = T.TrainingArguments(output_dir=out, max_steps=4, per_device_train_batch_size=2, learning_rate=0.05,
                           weight_decay=0.1, use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, seed=0)
trainer = T.Trainer(model=model, args=args, train_dataset=Data(),
                    callbacks=[FreezeScheduler(unfreeze_at_step=2, num_stages=1)])
trainer.train()
torch.save({"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "world_size": trainer.args.world_size, "ddp": type(trainer.model_wrapped).__name__},
           os.path.join(out, f"rank{os.environ.get('RANK', 0)}.pt"))
from hf_transfer_cnn.recipe import end_process

end_process(0)  # closes the process group and skips teardown, where gloo's threads can abort a finished process
'''


def test_ddp_two_ranks_on_a_plain_vit(vit_dirs, tmp_path, torchrun):
    """torchrun --nproc_per_node 2 (gloo, CPU) with the plain transformers ViT and FreezeScheduler: ranks agree, the
    stage unfrozen at step 2 and the head trained, the frozen stages are bit-identical to the checkpoint."""
    script = tmp_path / "ddp_vit.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [*torchrun, str(script), vit_dirs["vit"], str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world_size"] == 2 and r0["ddp"] == "DistributedDataParallel"
    model = T.AutoModelForImageClassification.from_pretrained(vit_dirs["vit"])
    start = _state(model)
    params = [n for n, _ in model.named_parameters()]
    assert all(torch.equal(r0["state"][n], r1["state"][n]) for n in params)
    units = units_for(model)
    frozen = [n for u in units[:-1] for n in _param_names(model, u)]
    top = _param_names(model, units[-1])
    assert all(torch.equal(r0["state"][n], start[n]) for n in frozen)
    assert any(not torch.equal(r0["state"][n], start[n]) for n in top)
    assert not torch.equal(r0["state"]["classifier.weight"], start["classifier.weight"])
