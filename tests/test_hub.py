"""Hub publishing: model card, push_output_dir / push_to_hub against a local fake Hub, and failure handling."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from hub_server import dead_hub, fake_hub  # noqa: F401 - pytest fixtures
from PIL import Image

from hf_transfer_cnn import TransferModel
from hf_transfer_cnn.hub import (CARD_TAGS, HubPushError, TransferReport, build_model_card, parse_card_metadata,
                                 push_output_dir, write_model_card)
from tolerance import assert_close

REPO = "fake-user/tiny-resnet-transfer"


def folder_digest(path: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (and '/' for every folder) under `path`."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
    return out


def _png(path: Path, color=(200, 30, 30)) -> None:
    Image.new("RGB", (8, 8), color).save(path)


def _pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def trained_output(checkpoint_factory, tmp_path_factory):
    """A finished-run output folder: weights, config, processor, README, plots, results, plus excluded stuff."""
    root = tmp_path_factory.mktemp("hub_run")
    base = checkpoint_factory("resnet", root / "base")
    model = TransferModel.from_pretrained(base, num_labels=3).eval()
    out = root / "output"
    model.save_pretrained(out)
    _png(out / "training_curves.png")
    _png(out / "confusion_matrix.png", (30, 30, 200))
    (out / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.75, "eval_loss": 0.61}))
    (out / "checkpoint-10").mkdir()
    (out / "checkpoint-10" / "optimizer.pt").write_bytes(b"not for the hub")
    aside = out / "overwritten-20261201-000000" / "checkpoint-4"  # an earlier run's, moved aside by the recipe
    aside.mkdir(parents=True)
    (aside / "model.safetensors").write_bytes(b"an earlier run's weights")
    (out / "final").mkdir()  # a user's copy of the run's files, with the pickled args (they hold hub_token)
    (out / "final" / "training_args.bin").write_bytes(b"hub_token inside")
    (out / "final" / "checkpoint-1").mkdir()
    (out / "final" / "checkpoint-1" / "optimizer.pt").write_bytes(b"not for the hub")
    (out / "plots" / "checkpoint-summary").mkdir(parents=True)  # not a Trainer checkpoint: uploaded
    _png(out / "plots" / "checkpoint-summary" / "steps.png", (30, 200, 30))
    (out / "runs").mkdir()
    (out / "runs" / "events.out.tfevents.1").write_bytes(b"tensorboard")
    report = TransferReport.from_model(
        model, strategy="feature extraction, then gradual unfreezing",
        phases=[(0, []), (20, ["stage4"]), (40, ["stage3", "stage4"])], learning_rate=1e-3, lr_factor=0.1,
        stage_lr_decay=0.5, dataset_dir="/data/flowers", num_train_images=30, num_eval_images=12,
        metrics={"eval_accuracy": 0.75, "eval_macro_f1": 0.7, "eval_loss": 0.61},
        per_class_accuracy={"LABEL_0": 1.0, "LABEL_1": 0.5, "LABEL_2": 0.75}, license="apache-2.0", repo_id=REPO)
    write_model_card(report, out)
    with torch.no_grad():
        logits = model(pixel_values=_pixels()).logits
    return out, logits


UPLOADED = {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "training_curves.png",
            "confusion_matrix.png", "all_results.json", "plots/checkpoint-summary/steps.png"}


# --- (a) push_output_dir, then load back through the same endpoint --------------------------------------

def test_push_output_dir_round_trip(fake_hub, trained_output):  # noqa: F811
    from huggingface_hub import HfApi, hf_hub_download
    from transformers import AutoModelForImageClassification

    out, local_logits = trained_output
    before = folder_digest(out)
    commit = push_output_dir(out, REPO)
    assert commit.startswith(f"{fake_hub.url}/{REPO}/commit/")
    assert folder_digest(out) == before  # a successful push does not touch the folder either

    remote = set(HfApi().list_repo_files(REPO))
    assert remote == UPLOADED | {".gitattributes"}  # no checkpoint-*/ nor runs/
    for name in UPLOADED:
        pushed = Path(hf_hub_download(REPO, name)).read_bytes()
        if name == "config.json":  # the local base checkpoint is named by its folder there, never by its path
            local, sent = json.loads((out / name).read_bytes()), json.loads(pushed)
            local["hf_transfer_cnn"]["base_model"] = Path(local["hf_transfer_cnn"]["base_model"]).name
            assert sent == local and str(out.parent) not in pushed.decode()
            continue
        assert pushed == (out / name).read_bytes(), name

    meta = parse_card_metadata((out / "README.md").read_text())
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert set(CARD_TAGS) | {"resnet"} <= set(meta["tags"])
    assert meta["license"] == "apache-2.0"
    assert "base_model" not in meta  # the base was a local folder, not a Hub id
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"Accuracy": 0.75, "Macro F1": 0.7}

    # Each loader gives bit-identical logits from the Hub copy and from the local folder. (TransferModel runs
    # frozen stages as BN-folded inference copies, so it only matches plain transformers to float rounding.)
    x = _pixels()
    with torch.no_grad():
        ours = TransferModel.from_pretrained(REPO).eval()(pixel_values=x).logits
        plain = AutoModelForImageClassification.from_pretrained(REPO).eval()(pixel_values=x).logits
        plain_local = AutoModelForImageClassification.from_pretrained(out).eval()(pixel_values=x).logits
    assert torch.equal(ours, local_logits)
    assert torch.equal(plain, plain_local)
    assert_close(plain, local_logits)
    assert not fake_hub.unhandled


def test_push_output_dir_without_xet_uses_plain_commit(fake_hub, trained_output, monkeypatch):  # noqa: F811
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the legacy create_commit path
    out, _ = trained_output
    push_output_dir(out, "fake-user/no-xet", private=True)
    assert set(fake_hub.files("fake-user/no-xet")) == UPLOADED | {".gitattributes"}
    assert fake_hub.repos[("model", "fake-user/no-xet")].private
    assert fake_hub.files("fake-user/no-xet")["model.safetensors"] == (out / "model.safetensors").read_bytes()


# --- (b) transformers' own push_to_hub --------------------------------------------------------------------

def test_model_push_to_hub(checkpoint_factory, fake_hub, tmp_path):  # noqa: F811
    from transformers import AutoModelForImageClassification

    model = TransferModel.from_pretrained(checkpoint_factory("convnext", tmp_path / "base"), num_labels=3).eval()
    commit = model.push_to_hub("fake-user/pushed")
    assert commit.startswith(fake_hub.url)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(
        fake_hub.files("fake-user/pushed"))
    model.save_pretrained(tmp_path / "local")
    x = _pixels(1)
    with torch.no_grad():
        expected = model(pixel_values=x).logits
        assert torch.equal(TransferModel.from_pretrained("fake-user/pushed").eval()(pixel_values=x).logits, expected)
        plain = AutoModelForImageClassification.from_pretrained("fake-user/pushed").eval()(pixel_values=x).logits
        plain_local = AutoModelForImageClassification.from_pretrained(tmp_path / "local").eval()(pixel_values=x).logits
    assert torch.equal(plain, plain_local)
    assert_close(plain, expected)


def test_save_pretrained_push_to_hub_uploads_the_complete_folder(checkpoint_factory, fake_hub, tmp_path):  # noqa: F811
    """save_pretrained(dir, push_to_hub=True) uploads what the folder ends up holding: the native architecture name
    and the (1-channel, 40 px) image processor, not the state halfway through saving."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = TransferModel.from_pretrained(checkpoint_factory("resnet", tmp_path / "base"), num_labels=3, num_channels=1,
                                          image_size=40).eval()
    local = tmp_path / "local"
    model.save_pretrained(local, push_to_hub=True, repo_id="fake-user/saved-and-pushed", commit_message="first")
    files = fake_hub.files("fake-user/saved-and-pushed")
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        assert files[name] == (local / name).read_bytes(), name
    assert json.loads(files["config.json"])["architectures"] == ["ResNetForImageClassification"]
    proc = AutoImageProcessor.from_pretrained("fake-user/saved-and-pushed")
    assert len(proc.image_mean) == 1 and proc.to_dict() == AutoImageProcessor.from_pretrained(local).to_dict()
    assert proc.to_dict() == model.image_processor.to_dict()
    x = torch.randn(2, 1, 40, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = AutoModelForImageClassification.from_pretrained("fake-user/saved-and-pushed").eval()(pixel_values=x)
        assert_close(plain.logits, model(pixel_values=x).logits)
    # what is uploaded is what this call wrote: here with a caller's state_dict (the head's bias shifted by 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bias = next(k for k in reversed(list(state)) if k.endswith("bias"))
    state[bias] += 1
    model.save_pretrained(tmp_path / "shifted", push_to_hub=True, repo_id="fake-user/shifted", state_dict=state)
    uploaded = fake_hub.files("fake-user/shifted")
    assert uploaded["model.safetensors"] == (tmp_path / "shifted" / "model.safetensors").read_bytes()
    reloaded = TransferModel.from_pretrained("fake-user/shifted").state_dict()
    assert torch.equal(reloaded[bias], state[bias]) and not torch.equal(reloaded[bias], model.state_dict()[bias])


# --- (c) failures: clear error, retry hint, local files untouched -----------------------------------------

def _assert_push_error(err: HubPushError, out: Path, repo: str) -> str:
    msg = str(err)
    resolved = str(out.resolve())
    assert f"{resolved!r} is intact" in msg
    assert f"hf-transfer-cnn push {shlex.quote(resolved)} --repo-id {repo}" in msg
    assert f"push_output_dir({resolved!r}, {repo!r}, endpoint=" in msg
    assert err.retry_command in msg and err.repo_id == repo and err.output_dir == resolved
    return msg


def test_push_server_error(fake_hub, trained_output):  # noqa: F811
    out, _ = trained_output
    before = folder_digest(out)
    fake_hub.fail_with(500)
    with pytest.raises(HubPushError) as info:
        push_output_dir(out, REPO)
    msg = _assert_push_error(info.value, out, REPO)
    assert info.value.reason == "server" and info.value.status_code == 500 and "HTTP 500" in msg
    assert "commit" not in fake_hub.routes_called()
    assert folder_digest(out) == before


def test_push_auth_error_then_retry_with_token(fake_hub, trained_output, monkeypatch):  # noqa: F811
    out, _ = trained_output
    before = folder_digest(out)
    fake_hub.require_token = "hf_right_token"
    with pytest.raises(HubPushError) as info:
        push_output_dir(out, REPO, token="hf_wrong_token")
    msg = _assert_push_error(info.value, out, REPO)
    assert info.value.reason == "auth" and info.value.status_code == 401
    assert "hf auth login" in msg and "HF_TOKEN" in msg
    assert "hf_wrong_token" not in msg
    assert folder_digest(out) == before and not fake_hub.repos

    # Following the hint (a token in HF_TOKEN, then the printed Python retry) completes the push.
    monkeypatch.setenv("HF_TOKEN", "hf_right_token")
    retry = re.search(r"or from Python:\n    (.*)\n", msg).group(1)
    exec(retry, {})
    assert set(fake_hub.files(REPO)) == UPLOADED | {".gitattributes"}
    assert folder_digest(out) == before

    # Pushing again re-sends nothing: every file is already there unchanged, so no new commit is made.
    commits = len(fake_hub.repos[("model", REPO)].commits)
    push_output_dir(out, REPO)
    assert len(fake_hub.repos[("model", REPO)].commits) == commits


def test_push_forbidden_at_commit_leaves_repo_and_folder_alone(fake_hub, trained_output):  # noqa: F811
    out, _ = trained_output
    before = folder_digest(out)
    fake_hub.fail_with(403, routes={"commit"})
    with pytest.raises(HubPushError) as info:
        push_output_dir(out, REPO)
    _assert_push_error(info.value, out, REPO)
    assert info.value.reason == "auth" and info.value.status_code == 403
    assert "uploading the files" in str(info.value)
    assert set(fake_hub.files(REPO)) == {".gitattributes"}  # the repo was created, nothing committed
    assert folder_digest(out) == before


def test_push_server_down(dead_hub, trained_output):  # noqa: F811
    out, _ = trained_output
    before = folder_digest(out)
    with pytest.raises(HubPushError) as info:
        push_output_dir(out, REPO)
    msg = _assert_push_error(info.value, out, REPO)
    assert info.value.reason == "connection" and "could not reach the Hub" in msg
    assert f"HF_ENDPOINT={dead_hub}" in info.value.retry_command
    assert folder_digest(out) == before


def test_push_bad_input_sends_nothing(fake_hub, tmp_path):  # noqa: F811
    with pytest.raises(FileNotFoundError):
        push_output_dir(tmp_path / "missing", REPO)
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    (tmp_path / "empty" / "runs" / "x").write_text("x")
    with pytest.raises(ValueError, match="no files to push"):
        push_output_dir(tmp_path / "empty", REPO)
    assert not fake_hub.requests


# --- (d) model card ----------------------------------------------------------------------------------------

def _report(**overrides) -> TransferReport:
    fields = dict(
        base_model="microsoft/resnet-18", model_type="resnet", class_names=["cat", "dog", "fox"],
        strategy="gradual unfreezing", phases=[(0, []), (100, ["stage4"]), (200, ["stage3", "stage4"])],
        stage_names=["stem", "stage1", "stage2", "stage3", "stage4"], learning_rate=3e-4, lr_factor=0.1,
        stage_lr_decay=0.5, dataset_id="someone/pets", num_train_images=900, num_eval_images=300,
        metrics={"eval_accuracy": 0.8733, "eval_top5_accuracy": 1.0, "eval_macro_f1": 0.8612, "eval_loss": 0.35},
        per_class_accuracy={"cat": 0.9, "dog": 0.85, "fox": 0.87}, per_class_support={"cat": 100, "dog": 100, "fox": 100},
        plots=["curves.png", "missing.png"], license="mit", repo_id="someone/resnet-pets",
    )
    fields.update(overrides)
    return TransferReport(**fields)


def test_model_card_metadata_and_body(tmp_path):
    from huggingface_hub import ModelCard

    _png(tmp_path / "curves.png")
    report = _report()
    text = build_model_card(report, tmp_path)
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta == parse_card_metadata(text)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert meta["base_model"] == "microsoft/resnet-18" and meta["datasets"] == ["someone/pets"]
    assert meta["license"] == "mit"
    assert set(meta["tags"]) >= {"hf-transfer-cnn", "image-classification", "transfer-learning", "resnet"}

    (entry,) = meta["model-index"]
    assert entry["name"] == "resnet-pets"
    (result,) = entry["results"]
    assert result["task"]["type"] == "image-classification"
    assert result["dataset"] == {"name": "someone/pets", "type": "someone/pets", "split": "validation"}
    values = {m["name"]: m["value"] for m in result["metrics"]}
    assert values == {"Accuracy": 0.8733, "Top-5 Accuracy": 1.0, "Macro F1": 0.8612}
    parsed = ModelCard(text, ignore_metadata_errors=False).data.eval_results
    assert sorted(r.metric_value for r in parsed) == sorted(values.values())

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["curves.png"]  # missing.png is left out
    assert all((tmp_path / link).is_file() for link in links)

    for needle in ("microsoft/resnet-18", "gradual unfreezing", "| 100 | stage4 | stem, stage1, stage2, stage3 |",
                   "| 0 | none (head only) |", "3e-05", "stage_lr_decay:** 0.5", "900", "300", "`cat`, `dog`, `fox`",
                   "| dog | 0.8500 | 100 |", "| Accuracy | 0.8733 |", "| eval_loss | 0.3500 |",
                   'pipeline("image-classification", model="someone/resnet-pets")'):
        assert needle in text, needle


def test_model_card_variants(tmp_path):
    _png(tmp_path / "b_plot.png")
    _png(tmp_path / "a_plot.png")
    local_base = tmp_path / "base_ckpt"
    local_base.mkdir()
    text = build_model_card(_report(base_model=str(local_base), plots=None, loadable_with_transformers=False,
                                    dataset_id=None, dataset_dir="/data/pets", metrics={"accuracy": 0.5},
                                    license=None, repo_id=None), tmp_path)
    meta = parse_card_metadata(text)
    assert "base_model" not in meta and "license" not in meta and "datasets" not in meta
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "imagefolder"
    assert [m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]] == [0.5]
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text) == ["a_plot.png", "b_plot.png"]
    assert "TransferModel.from_pretrained(" in text and "pipeline(" not in text
    assert meta["library_name"] == "hf-transfer-cnn"  # no "Use in Transformers" for a model it cannot run
    assert "/data/pets" not in text and "- **Dataset:** local data `pets`" in text
    gray = build_model_card(_report(num_channels=1))
    assert parse_card_metadata(gray)["library_name"] == "transformers"
    assert 'processor(Image.open("image.jpg").convert("L"), return_tensors="pt")' in gray
    assert 'pipeline("image-classification"' not in gray
    gray = build_model_card(_report(num_channels=1, loadable_with_transformers=False))
    assert "processor = model.image_processor" in gray
    assert 'processor(Image.open("image.jpg").convert("L"), return_tensors="pt")' in gray
    rgb = build_model_card(_report(num_channels=3))
    assert 'print(classifier("image.jpg"))' in rgb

    bare = parse_card_metadata(build_model_card(_report(metrics={}, plots=[])))
    assert "model-index" not in bare and bare["pipeline_tag"] == "image-classification"


@pytest.mark.parametrize("num_channels", [1, 3, 4])
def test_card_snippet_runs_with_plain_transformers(checkpoint_factory, tmp_path, num_channels):
    """The card's "How to use" code, run as written in a process without hf_transfer_cnn on a saved model (the
    repo id pointed at the folder): it prints the class the model predicts. For gray or 4-channel models it is not
    pipeline(), which converts images to RGB and fails on them (4 channels: a normalised tensor)."""
    import os
    import subprocess
    import sys

    path = checkpoint_factory("resnet", tmp_path / "base", num_labels=2)
    model = TransferModel.from_pretrained(path, id2label={0: "cat", 1: "dog"}, num_channels=num_channels,
                                          image_size=32).eval()
    model.save_pretrained(tmp_path / "out")
    card = build_model_card(TransferReport.from_model(model, repo_id=str(tmp_path / "out")))
    code = re.search(r"## How to use.*?```python\n(.*?)```", card, re.S).group(1)
    assert ("pipeline(" in code) == (num_channels == 3)
    Image.fromarray(torch.randint(0, 256, (40, 50, 3), generator=torch.Generator().manual_seed(1),
                                  dtype=torch.uint8).numpy()).save(tmp_path / "image.jpg")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    seeded = "import sys, torch; sys.modules['hf_transfer_cnn'] = None; torch.manual_seed(0)\n"  # 4 channels: torch.rand
    res = subprocess.run([sys.executable, "-c", seeded + code],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    printed = res.stdout.strip().splitlines()[-1]
    with torch.no_grad():
        if num_channels == 4:  # the snippet's stand-in pixels, from the same seed, normalised as it says
            torch.manual_seed(0)
            pixels = torch.rand(1, 4, 32, 32)
            mean, std = (torch.tensor(v)[:, None, None] for v in (model.image_processor.image_mean,
                                                                   model.image_processor.image_std))
            inputs = {"pixel_values": (pixels - mean) / std}
        else:
            inputs = model.image_processor(Image.open(tmp_path / "image.jpg").convert("L" if num_channels == 1 else
                                                                                      "RGB"), return_tensors="pt")
        expected = model.config.id2label[model(**inputs).logits.argmax(-1).item()]
    assert (printed == expected) if num_channels != 3 else (f"'label': '{expected}'" in printed)


def test_push_rejected_readme_and_offline_mode(fake_hub, tmp_path, monkeypatch):  # noqa: F811
    from huggingface_hub import constants

    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "README.md").write_text("---\nlicense: [mit\n---\n# broken metadata\n")
    before = folder_digest(out)
    with pytest.raises(HubPushError) as info:
        push_output_dir(out, REPO)
    assert info.value.reason == "rejected" and "README.md" in str(info.value)
    assert "commit" not in fake_hub.routes_called()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubPushError) as info:
        push_output_dir(out, REPO)
    assert info.value.reason == "offline" and "Unset HF_HUB_OFFLINE" in str(info.value)
    _assert_push_error(info.value, out, REPO)
    assert folder_digest(out) == before
