"""Hardening of the recipe: each fault injected as it happens in life gives a clear error saying what happened and
what to do, or a counted, logged skip; never a wrong result, never lost work.

Checkpoint saves killed or out of disk, resuming on other classes, secrets and local paths in what is printed or
uploaded, an output_dir that cannot be written, a diverging loss, config values of the wrong type, and a resumed
run with random augmentation giving the uninterrupted run's weights."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import FakeHub, use_hub_endpoint

from hf_transfer_cnn.recipe import parse_recipe_args, run_finetune

REPO = Path(__file__).resolve().parents[1]
KILL_SCRIPT = Path(__file__).resolve().parent / "hardening_kill_during_save.py"
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """An imagefolder of 3 colour classes: train 8 per class, validation 3 per class."""
    from hf_transfer_cnn.data import write_imagefolder

    root = tmp_path_factory.mktemp("colors")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("validation", 3)):
        images, labels = [], []
        for c, rgb in enumerate(COLORS.values()):
            for _ in range(n):
                images.append(np.clip(np.array(rgb) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8))
                labels.append(c)
        write_imagefolder(root, images, labels, list(COLORS), split=split)
    return root


def _base(ckpt: str, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", ckpt, "--train_dir", str(data / "train"), "--validation_dir",
            str(data / "validation"), "--output_dir", str(out), "--use_cpu", "--report_to", "none", "--image_size",
            "32", "--per_device_train_batch_size", "8", "--strategy", "full", "--logging_steps", "1",
            "--evaluate_before_training", "false", "--eval_strategy", "no", *extra]


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def _losses(state_file: Path) -> dict[int, float]:
    state = json.loads(state_file.read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


# --- 1. a crash during a checkpoint save ---------------------------------------------------------------------

@pytest.mark.parametrize("when", ["after_weights", "mid_trainer_state"])
def test_resume_last_skips_a_checkpoint_whose_save_was_killed(tiny_checkpoints, folder, tmp_path, caplog, when):
    """SIGKILL inside Trainer's save of checkpoint-4 (after its weights, before its optimizer state; or halfway
    through trainer_state.json): `resume last` resumes checkpoint-2, the newest complete one, and moves the
    incomplete checkpoint-4 aside (not deleted), saying which and why."""
    out = tmp_path / "run"
    args = _base(tiny_checkpoints["resnet"], folder, out, "--max_steps", "6", "--save_steps", "2")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, str(KILL_SCRIPT), when, "2", *args], env=env, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (out / "checkpoint-4" / "model.safetensors").is_file()  # the kill came after the weights
    earlier = _losses(out / "checkpoint-2" / "trainer_state.json")

    with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn"):
        resumed = run_finetune(*parse_recipe_args(args + ["--resume_from_checkpoint", "last"]))
    assert resumed["train_steps"] == 6
    after = _losses(out / "checkpoint-6" / "trainer_state.json")
    assert sorted(after) == [1, 2, 3, 4, 5, 6] and all(after[k] == earlier[k] for k in earlier)
    aside = list(out.glob("incomplete-*/checkpoint-4"))
    assert len(aside) == 1 and (aside[0] / "model.safetensors").is_file()  # moved, not deleted
    skipped = [r.getMessage() for r in caplog.records if "checkpoint-4" in r.getMessage()]
    assert any("incomplete" in m and "checkpoint-2" in m and "trainer_state.json" in m for m in skipped), skipped
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()  # the resumed run saved its own step 4


def test_a_full_disk_during_a_checkpoint_save_names_the_path(tiny_checkpoints, folder, tmp_path, monkeypatch):
    """The disk fills up while checkpoint-4's optimizer state is written: the error names that path and says what
    to do; `resume last` then resumes checkpoint-2."""
    out = tmp_path / "run"
    args = _base(tiny_checkpoints["resnet"], folder, out, "--max_steps", "6", "--save_steps", "2")
    real_save = torch.save

    def filling_save(obj, f, *a, **k):
        if isinstance(f, (str, os.PathLike)) and Path(f).parent.name == "checkpoint-4" and \
                Path(f).name == "optimizer.pt":
            Path(f).write_bytes(b"PK\x03\x04 half an optimizer state")  # what fit on the disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", filling_save)
    with pytest.raises(OSError) as err:
        run_finetune(*parse_recipe_args(args))
    msg = str(err.value)
    assert str(out / "checkpoint-4") in msg and "No space left on device" in msg, msg
    assert "resume_from_checkpoint last" in msg and "checkpoint-2" in msg, msg
    assert err.value.errno == errno.ENOSPC
    monkeypatch.setattr(torch, "save", real_save)
    resumed = run_finetune(*parse_recipe_args(args + ["--resume_from_checkpoint", "last"]))
    assert resumed["train_steps"] == 6 and len(list(out.glob("incomplete-*/checkpoint-4/optimizer.pt"))) == 1


def test_resuming_an_incomplete_checkpoint_by_name_is_refused(tmp_path):
    from types import SimpleNamespace

    from hf_transfer_cnn.recipe.output import resume_point

    half = tmp_path / "run" / "checkpoint-4"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"weights")
    (half / "optimizer.pt").write_bytes(b"moments")
    (half / "trainer_state.json").write_text('{"global_step": 4, "log_hist')  # cut off
    args = SimpleNamespace(output_dir=str(tmp_path / "run"), resume_from_checkpoint=str(half), process_index=0)
    with pytest.raises(ValueError, match=r"checkpoint-4 is incomplete .*trainer_state\.json"):
        resume_point(args, False)
    args.resume_from_checkpoint = "last"
    with pytest.raises(ValueError, match=r"no complete checkpoint.*checkpoint-4 .*trainer_state\.json"):
        resume_point(args, False)


# --- 3. resuming on changed data ------------------------------------------------------------------------------

@pytest.mark.parametrize("change", ["renamed", "reordered", "added"])
def test_resuming_on_data_with_other_classes_is_refused_with_both_lists(tiny_checkpoints, folder, tmp_path, change):
    out = tmp_path / "run"
    run_finetune(*parse_recipe_args(_base(tiny_checkpoints["resnet"], folder, out, "--max_steps", "2",
                                          "--save_steps", "2")))
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    for split in ("train", "validation"):
        if change == "renamed":  # same position in the sorted class list: only the name differs
            (data / split / "blue").rename(data / split / "azure")
        elif change == "reordered":
            (data / split / "blue").rename(data / split / "violet")
        else:
            shutil.copytree(data / split / "red", data / split / "yellow")
    expected = {"renamed": "['azure', 'green', 'red']", "reordered": "['green', 'red', 'violet']",
                "added": "['blue', 'green', 'red', 'yellow']"}[change]
    before = _digest(out)
    with pytest.raises(ValueError) as err:
        run_finetune(*parse_recipe_args(_base(tiny_checkpoints["resnet"], data, out, "--max_steps", "4",
                                              "--save_steps", "2", "--resume_from_checkpoint", "last")))
    msg = str(err.value)
    assert "['blue', 'green', 'red']" in msg and expected in msg and "checkpoint-2" in msg, msg
    assert _digest(out) == before


# --- 5. secrets and local paths -------------------------------------------------------------------------------

PASSWORD, TOKEN = "s3cret-pw-4711", "hf_SecretToken0123456789abcdefXYZ"


def _leaks(text: str | bytes, *secrets: str) -> list[str]:
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return [s for s in secrets if s in text]


def test_secrets_and_local_paths_never_leave_the_machine(tiny_checkpoints, folder, tmp_path, monkeypatch, caplog):
    """A password in HF_ENDPOINT and the token appear in no message, log, results file, card or uploaded file;
    uploaded files hold no local path (the base model is named by its folder); a failed push's message says
    truly what changed locally (all_results.json records the failure)."""
    from huggingface_hub.utils import _http

    from hf_transfer_cnn.hub import HubPushError, parse_card_metadata

    hub = FakeHub().start()
    endpoint = hub.url.replace("http://", f"http://alice:{PASSWORD}@")
    use_hub_endpoint(monkeypatch, endpoint, tmp_path / "home")
    ckpt = tiny_checkpoints["resnet"]
    try:
        out = tmp_path / "pushed"
        args = _base(ckpt, folder, out, "--max_steps", "2", "--save_strategy", "no", "--push_to_hub",
                     "--hub_model_id", "fake-user/colors", "--hub_token", TOKEN)
        with caplog.at_level(logging.INFO):
            results = run_finetune(*parse_recipe_args(args))
        files = hub.files("fake-user/colors")
        assert {"config.json", "README.md", "all_results.json"} <= set(files)
        for name, data in files.items():
            assert not _leaks(data, PASSWORD, TOKEN, str(tmp_path), ckpt), name
        assert json.loads(files["config.json"])["hf_transfer_cnn"]["base_model"] == Path(ckpt).name
        card = files["README.md"].decode()  # "resnet" reads like a Hub id: the card must still call it local
        assert f"a local checkpoint (`{Path(ckpt).name}`)" in card and "base_model" not in parse_card_metadata(card)
        for name in ("README.md", "all_results.json", "config.json"):
            assert not _leaks((out / name).read_bytes(), PASSWORD, TOKEN, ckpt), name
        assert not _leaks(json.dumps(results, default=str), PASSWORD, TOKEN)
        assert any("base_model" in r.getMessage() and Path(ckpt).name in r.getMessage() for r in caplog.records)

        caplog.clear()
        hub.fail_with(500)
        out2 = tmp_path / "failing"
        with caplog.at_level(logging.INFO), pytest.raises(HubPushError) as err:
            run_finetune(*parse_recipe_args([a if a != str(out) else str(out2) for a in args]))
        msg = str(err.value)
        assert not _leaks(msg, PASSWORD, TOKEN) and not _leaks(caplog.text, PASSWORD, TOKEN)
        assert not _leaks((out2 / "all_results.json").read_text(), PASSWORD, TOKEN, str(tmp_path))
        assert "hub_error" in json.loads((out2 / "all_results.json").read_text())
        assert "Nothing local was changed" not in msg and "all_results.json" in msg  # the one local change
        assert "HF_ENDPOINT=" in err.value.retry_command and PASSWORD not in err.value.retry_command
    finally:
        _http.close_session()
        hub.stop()


def test_push_output_dir_uploads_a_portable_config_and_changes_nothing_local(checkpoint_factory, tmp_path,
                                                                            monkeypatch, caplog):
    """A folder saved by `TransferModel.save_pretrained` records its base model's absolute path: the pushed
    config.json names the folder instead (logged); the local files are untouched, also when the push fails."""
    from huggingface_hub.utils import _http

    from hf_transfer_cnn import TransferModel
    from hf_transfer_cnn.hub import HubPushError, push_output_dir

    base = checkpoint_factory("resnet", tmp_path / "bases" / "my-resnet")
    out = tmp_path / "out"
    TransferModel.from_pretrained(base, num_labels=3).save_pretrained(out)
    hub = FakeHub().start()
    use_hub_endpoint(monkeypatch, hub.url.replace("http://", f"http://bob:{PASSWORD}@"), tmp_path / "home")
    try:
        before = _digest(out)
        with caplog.at_level(logging.INFO, logger="hf_transfer_cnn"):
            commit = push_output_dir(out, "fake-user/portable", token=TOKEN)
        assert not _leaks(str(commit), PASSWORD) and not _leaks(caplog.text, PASSWORD, TOKEN)
        pushed = hub.files("fake-user/portable")
        assert json.loads(pushed["config.json"])["hf_transfer_cnn"]["base_model"] == "my-resnet"
        assert not _leaks(pushed["config.json"], str(tmp_path))
        assert any("my-resnet" in r.getMessage() and "config.json" in r.getMessage() for r in caplog.records)
        assert _digest(out) == before
        hub.fail_with(500)
        with pytest.raises(HubPushError) as err:
            push_output_dir(out, "fake-user/portable2", token=TOKEN)
        assert "Nothing local was changed" in str(err.value) and _digest(out) == before
        assert not _leaks(str(err.value), PASSWORD, TOKEN)
    finally:
        _http.close_session()
        hub.stop()


def test_card_names_a_local_base_model_by_its_folder(tmp_path):
    from hf_transfer_cnn.hub import TransferReport, build_model_card, parse_card_metadata

    local = tmp_path / "deep" / "my-base"
    local.mkdir(parents=True)
    card = build_model_card(TransferReport(base_model=str(local), model_type="resnet"))
    assert str(local) not in card and "my-base" in card
    assert "base_model" not in parse_card_metadata(card)


# --- 6. an output_dir that cannot be written ------------------------------------------------------------------

def _unwritable(kind: str, tmp_path: Path):
    """(output_dir, undo) for an output_dir that exists but cannot be written, or whose parent is a file."""
    if kind == "parent_is_a_file":
        (tmp_path / "notes.txt").write_text("a file")
        return tmp_path / "notes.txt" / "out", lambda: None
    out = tmp_path / "readonly"
    out.mkdir()
    if os.geteuid() != 0:
        out.chmod(0o555)
        return out, lambda: out.chmod(0o755)
    # root writes through any mode bits: make the directory immutable instead
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: no way to make a directory unwritable")
    return out, lambda: subprocess.run(["chattr", "-i", str(out)], check=True)


@pytest.mark.parametrize("kind", ["read_only", "parent_is_a_file"])
def test_an_output_dir_that_cannot_be_written_fails_before_training(tiny_checkpoints, folder, tmp_path, kind,
                                                                   monkeypatch):
    from transformers import Trainer

    out, undo = _unwritable(kind, tmp_path)
    trained = []
    monkeypatch.setattr(Trainer, "train", lambda self, *a, **k: trained.append(1))  # must never be reached
    try:
        with pytest.raises(OSError) as err:
            run_finetune(*parse_recipe_args(_base(tiny_checkpoints["resnet"], folder, out, "--max_steps", "2",
                                                  "--save_strategy", "no")))
    finally:
        undo()
    assert f"output_dir {out} cannot be written" in str(err.value) and not trained, str(err.value)


# --- 7. divergence --------------------------------------------------------------------------------------------

def test_a_diverging_run_stops_keeps_its_last_good_checkpoint_and_claims_nothing(tiny_checkpoints, folder,
                                                                                  tmp_path, capsys):
    """A learning rate that blows the loss up (warmed up to it, so the first steps are finite): the script exits
    non-zero naming the step and the last finite loss; the checkpoints before it are kept, none after; no final
    weights, results or card claiming a result."""
    import runpy

    out = tmp_path / "diverged"
    script = runpy.run_path(str(REPO / "recipes" / "finetune.py"))
    rc = script["main"](_base(tiny_checkpoints["resnet"], folder, out, "--max_steps", "8", "--save_steps", "1",
                              "--learning_rate", "1e12", "--warmup_steps", "6", "--optim", "sgd",
                              "--max_grad_norm", "0", "--lr_scheduler_type", "linear"))
    err = capsys.readouterr().err
    assert rc != 0
    line = next(x for x in err.splitlines() if x.startswith("error:"))
    step = int(line.split("at step ")[1].split()[0].rstrip(",;:"))
    assert 1 < step <= 8 and "last finite loss" in line, line
    kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert kept == list(range(1, step)), (kept, step)
    from safetensors.torch import load_file

    last = load_file(out / f"checkpoint-{step - 1}" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in last.values())
    for name in ("README.md", "all_results.json", "model.safetensors"):
        assert not (out / name).exists(), name
    assert f"checkpoint-{step - 1}" in line


@pytest.mark.parametrize("option,value", [("learning_rate", "nan"), ("learning_rate", "inf"),
                                          ("lr_factor", "nan"), ("lr_factor", "-inf")])
def test_non_finite_learning_rates_are_refused_when_parsed(tiny_checkpoints, folder, tmp_path, option, value):
    with pytest.raises(ValueError, match=rf"{option}=.*{value.lstrip('-')}.*finite"):
        parse_recipe_args(_base(tiny_checkpoints["resnet"], folder, tmp_path / "o", f"--{option}={value}",
                                "--strategy", "gradual"))


# --- 9. misuse: config values of the wrong type, duplicate keys ---------------------------------------------

@pytest.mark.parametrize("line,option,shown", [
    ("num_stages: two", "num_stages", "two"),
    ("schedule: 2:two", "schedule", "2:two"),
    ("head_hidden_sizes: a,b", "head_hidden_sizes", "a,b"),
    ('image_mean: "0.5"', "image_mean", "0.5"),
    ("max_steps: 2.5", "max_steps", "2.5"),
    ("gradient_accumulation_steps: 0", "gradient_accumulation_steps", "0"),
    ("image_size: 100000", "image_size", "100000"),
    ("schedule: 300:2", "schedule", "18002"),  # YAML 1.1 reads an unquoted 300:2 as a base-60 number
    ("augment: maybe", "augment", "maybe"),
    ("head_pooling: mean", "head_pooling", "mean"),
])
def test_config_values_of_the_wrong_type_name_the_option(tmp_path, line, option, shown):
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(f"model_name_or_path: x\ntrain_dir: data\noutput_dir: {tmp_path / 'o'}\n{line}\n")
    with pytest.raises(ValueError) as err:
        parse_recipe_args(["--config", str(cfg)])
    assert option in str(err.value) and shown in str(err.value), str(err.value)


def test_config_numbers_written_as_text_still_work(tmp_path):
    cfg = tmp_path / "recipe.yaml"  # YAML 1.1 reads 1e-3 (no dot) as text; num_stages: 2 is a number
    cfg.write_text(f"model_name_or_path: x\ntrain_dir: data\noutput_dir: {tmp_path / 'o'}\nlearning_rate: 1e-3\n"
                   "num_stages: 2\nimage_mean: [0.5, 0.4, 0.3]\nresume_from_checkpoint: true\nmax_steps: 10\n"
                   "save_strategy: no\n")  # YAML 1.1 reads an unquoted no as false
    model_args, _, transform_args, training_args = parse_recipe_args(["--config", str(cfg)])
    assert training_args.learning_rate == 1e-3 and model_args.stages() == 2 and training_args.max_steps == 10
    assert transform_args.image_mean == [0.5, 0.4, 0.3] and training_args.resume_from_checkpoint == "true"
    assert training_args.save_strategy == "no"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_key_given_twice_in_a_config_file_is_an_error(tmp_path, suffix):
    cfg = tmp_path / f"recipe{suffix}"
    if suffix == ".yaml":
        cfg.write_text("model_name_or_path: x\ntrain_dir: data\nlearning_rate: 0.1\noutput_dir: o\n"
                       "learning_rate: 0.001\n")
    else:
        cfg.write_text('{"model_name_or_path": "x", "train_dir": "d", "output_dir": "o", "learning_rate": 0.1, '
                       '"learning_rate": 0.001}')
    with pytest.raises(ValueError, match=r"'learning_rate' is given twice" + (r".*lines 3 and 5" if suffix == ".yaml"
                                                                              else "")):
        parse_recipe_args(["--config", str(cfg)])


# --- 13. resuming with random augmentation --------------------------------------------------------------------

def test_resume_with_augmentation_gives_the_uninterrupted_runs_weights(tiny_checkpoints, folder, tmp_path):
    """Default random augmentation, 2 epochs of 3 steps: resuming at the epoch boundary (checkpoint-3) or inside
    the second epoch (checkpoint-4), each in a fresh process state, ends with the uninterrupted run's weights, bit
    for bit (each sample's augmentation comes from (seed, epoch, index))."""
    from safetensors.torch import load_file

    def args(out: Path, *extra: str) -> list[str]:
        return _base(tiny_checkpoints["resnet"], folder, out, "--num_train_epochs", "2", "--save_steps", "1",
                     "--learning_rate", "0.01", *extra)

    full = tmp_path / "full"
    run_finetune(*parse_recipe_args(args(full)))
    reference = load_file(full / "model.safetensors")
    assert json.loads((full / "checkpoint-6" / "trainer_state.json").read_text())["epoch"] == 2
    for at in (3, 4):
        out = tmp_path / f"resumed-{at}"
        out.mkdir()
        shutil.copytree(full / f"checkpoint-{at}", out / f"checkpoint-{at}")
        torch.manual_seed(1234)  # the process's RNG is not where the uninterrupted run had it
        run_finetune(*parse_recipe_args(args(out, "--resume_from_checkpoint", "last")))
        resumed = load_file(out / "model.safetensors")
        assert set(resumed) == set(reference)
        different = [k for k in reference if not torch.equal(resumed[k], reference[k])]
        assert not different, (at, different[:5])
    assert not math.isnan(float(reference[next(iter(reference))].float().sum()))


def test_augmentation_does_not_depend_on_dataloader_workers(tiny_checkpoints, folder, tmp_path):
    """Persistent DataLoader workers see each new epoch (it is kept in shared memory): 3 epochs with 2 persistent
    workers give the weights of the run that loads in the main process."""
    from safetensors.torch import load_file

    def weights(out: Path, *extra: str) -> dict[str, torch.Tensor]:
        run_finetune(*parse_recipe_args(_base(tiny_checkpoints["resnet"], folder, out, "--num_train_epochs", "3",
                                              "--save_strategy", "no", "--learning_rate", "0.01", *extra)))
        return load_file(out / "model.safetensors")

    main = weights(tmp_path / "main")
    workers = weights(tmp_path / "workers", "--dataloader_num_workers", "2", "--dataloader_persistent_workers", "true")
    assert all(torch.equal(main[k], workers[k]) for k in main)
