"""Issue #3: FreezeScheduler — unchanged Trainer scripts, LR, resume, DDP, accumulation, bad configuration."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import transformers as T
from transformers import TrainerCallback

from hf_transfer_cnn import FreezeScheduler, TransferModel, UnsupportedArchitectureError
from hf_transfer_cnn.freezing import units_for
from tolerance import SAME_OPS, assert_close

REPO = Path(__file__).resolve().parents[1]


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in params])


def buffers(unit) -> torch.Tensor:
    bufs = [b for m in unit.modules for b in m.buffers() if b.dtype.is_floating_point]
    return torch.cat([b.reshape(-1).clone() for b in bufs]) if bufs else torch.zeros(0)


class Recorder(TrainerCallback):
    """Snapshots each stage after every optimizer step and the lr used by every optimizer step."""

    def __init__(self, model):
        self.units = units_for(model)
        self.snap = {0: {u.name: flat(u.parameters()) for u in self.units}}
        self.lr_used: dict[int, list[float]] = {}

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lr_used[state.global_step] = [g["lr"] for g in optimizer.param_groups]

    def on_step_end(self, args, state, control, **kwargs):
        self.snap[state.global_step] = {u.name: flat(u.parameters()) for u in self.units}


def targs(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4, learning_rate=0.05,
                weight_decay=0.1, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
                disable_tqdm=True, seed=0, data_seed=0)
    base.update(kw)
    return T.TrainingArguments(**base)


def first_change(rec: Recorder, name: str) -> int | None:
    steps = sorted(rec.snap)
    for s in steps[1:]:
        if not torch.equal(rec.snap[s][name], rec.snap[0][name]):
            return s
    return None


@pytest.mark.parametrize("use_transfer_model", [False, True])
def test_unchanged_trainer_script(random_images, tiny_checkpoints, tmp_path, use_transfer_model):
    """Only `callbacks=[FreezeScheduler(...)]` added: the top stage trains from the step on, the rest never."""
    path = tiny_checkpoints["resnet"]
    if use_transfer_model:
        model = TransferModel.from_pretrained(path, num_labels=4, trainable_stages=0)
    else:
        model = T.AutoModelForImageClassification.from_pretrained(path)
    units = units_for(model)
    bn0 = {u.name: buffers(u) for u in units}
    rec = Recorder(model)
    trainer = T.Trainer(model=model, args=targs(tmp_path), train_dataset=random_images(),
                        callbacks=[FreezeScheduler(unfreeze_at_step=3, num_stages=1), rec])
    trainer.train()
    top = units[-1].name
    # Updates 1..3 (global_step 0..2) leave the stage alone; update 4 (global_step 3 -> 4) is its first.
    assert first_change(rec, top) == 4
    for u in units[:-1]:
        assert torch.equal(rec.snap[6][u.name], rec.snap[0][u.name]), u.name
        assert torch.equal(buffers(u), bn0[u.name]), f"BN stats of {u.name} changed"
    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    assert all(p.requires_grad for p in head)
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["trainable_stages"] for e in logged] == [0, 0, 0, 1, 1, 1]


SCHEDULERS = ["linear", "cosine", "constant", "constant_with_warmup", "polynomial"]


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_logged_lr_is_used_lr_and_scaled(random_images, tiny_checkpoints, tmp_path, scheduler):
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["mobilenet_v2"])
    rec = Recorder(model)
    args = targs(tmp_path, max_steps=8, lr_scheduler_type=scheduler, warmup_steps=2)
    trainer = T.Trainer(model=model, args=args, train_dataset=random_images(),
                        callbacks=[FreezeScheduler(unfreeze_at_step=4, num_stages=2, lr_factor=0.1), rec])
    trainer.train()
    # The reference: the same HF scheduler, unmodified, on a dummy optimizer.
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    ref = T.get_scheduler(scheduler, dummy, num_warmup_steps=2, num_training_steps=8)
    expected = []
    for step in range(8):
        expected.append(ref.get_last_lr()[0] * (0.1 if step >= 4 else 1.0))
        dummy.step()
        ref.step()
    logged = [e["learning_rate"] for e in trainer.state.log_history if "loss" in e]
    used = [rec.lr_used[s][0] for s in range(8)]
    assert len(logged) == 8
    for step in range(8):
        assert used[step] == pytest.approx(expected[step], rel=1e-9, abs=1e-15), step
        assert logged[step] == pytest.approx(used[step], rel=1e-9, abs=1e-15), step
        assert all(lr == used[step] for lr in rec.lr_used[step])


def _resume_run(ckpt, out, resume=None, max_steps=8, *, random_images):
    torch.manual_seed(0)
    model = TransferModel.from_pretrained(ckpt, num_labels=4, head={"hidden_sizes": [16], "dropout": 0.3})
    args = T.TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4,
                               learning_rate=0.05, weight_decay=0.1, use_cpu=True, report_to=[], save_steps=2,
                               save_strategy="steps", logging_steps=1, disable_tqdm=True, seed=0, data_seed=0)
    sched = FreezeScheduler(unfreeze_at_step=5, num_stages=2, lr_factor=0.2, stage_lr_decay=0.5)
    trainer = T.Trainer(model=model, args=args, train_dataset=random_images(), callbacks=[sched])
    trainer.train(resume_from_checkpoint=resume)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_before_and_after_unfreeze_is_bit_identical(random_images, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints["mobilenet_v2"]
    full = _resume_run(ckpt, tmp_path / "full", random_images=random_images)
    for ck in ("checkpoint-4", "checkpoint-6"):  # saved before / after the unfreeze at step 5
        out = tmp_path / f"resume_{ck}"
        shutil.copytree(tmp_path / "full", out)
        for later in out.glob("checkpoint-*"):
            if int(later.name.split("-")[1]) > int(ck.split("-")[1]):
                shutil.rmtree(later)
        resumed = _resume_run(ckpt, out, resume=str(out / ck), random_images=random_images)
        for k, v in full.items():
            assert torch.equal(v, resumed[k]), f"{k} differs after resuming from {ck}"


@pytest.mark.parametrize("gas", [2, 4])
def test_gradient_accumulation_counts_optimizer_steps(random_images, tiny_checkpoints, tmp_path, gas):
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    rec = Recorder(model)
    args = targs(tmp_path, max_steps=5, per_device_train_batch_size=2, gradient_accumulation_steps=gas)
    T.Trainer(model=model, args=args, train_dataset=random_images(n=64),
              callbacks=[FreezeScheduler(unfreeze_at_step=2, num_stages=1), rec]).train()
    top = rec.units[-1].name
    assert first_change(rec, top) == 3
    assert sorted(rec.snap) == [0, 1, 2, 3, 4, 5]


def test_epoch_trigger(random_images, tiny_checkpoints, tmp_path):
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    rec = Recorder(model)
    args = targs(tmp_path, max_steps=-1, num_train_epochs=2)  # 32 images / batch 4 = 8 steps per epoch
    T.Trainer(model=model, args=args, train_dataset=random_images(),
              callbacks=[FreezeScheduler(unfreeze_at_epoch=1, num_stages="all", lr_factor=0.5), rec]).train()
    for u in rec.units:
        assert first_change(rec, u.name) == 9, u.name


def test_gradual_schedule_and_stage_lr_decay(random_images, tiny_checkpoints, tmp_path):
    """Multi-phase schedule; with SGD the effective per-stage step equals lr * decay**depth * grad."""
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    units = units_for(model)
    grads, before, after = {}, {}, {}

    class Probe(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            grads[state.global_step] = {u.name: [None if p.grad is None else p.grad.clone() for p in u.parameters()]
                                        for u in units}
            before[state.global_step] = {u.name: flat(u.parameters()) for u in units}
            before[state.global_step]["lr"] = optimizer.param_groups[0]["lr"]

        def on_optimizer_step(self, args, state, control, **kwargs):
            after[state.global_step] = {u.name: flat(u.parameters()) for u in units}

    args = targs(tmp_path, max_steps=6, optim="sgd", weight_decay=0.0, lr_scheduler_type="constant",
                 max_grad_norm=0.0)
    sched = FreezeScheduler(schedule=[(0, 0), (2, 1), (4, "all")], lr_factor=0.5, stage_lr_decay=0.5)
    trainer = T.Trainer(model=model, args=args, train_dataset=random_images(), callbacks=[sched, Probe()])
    trainer.train()
    assert before[1]["lr"] == pytest.approx(0.05) and before[2]["lr"] == pytest.approx(0.025)
    for step, n in [(0, 0), (1, 0), (2, 1), (3, 1), (4, 5), (5, 5)]:
        trainable = [u.name for u in units][len(units) - n:] if n else []
        for depth, u in enumerate(reversed(units), start=1):
            delta = after[step][u.name] - before[step][u.name]
            if u.name not in trainable:
                assert torch.count_nonzero(delta) == 0, (step, u.name)
                assert all(g is None for g in grads[step][u.name]), (step, u.name)
                continue
            g = torch.cat([x.reshape(-1) for x in grads[step][u.name]])
            expected = -before[step]["lr"] * 0.5 ** depth * g
            # delta = after - before: rounded at the parameters' magnitude, not the step's
            assert_close(delta, expected, ulps=SAME_OPS, scale=float(after[step][u.name].abs().max()))
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged[4]["learning_rate_stage4"] == pytest.approx(logged[4]["learning_rate"] * 0.5)
    assert logged[4]["learning_rate_stem"] == pytest.approx(logged[4]["learning_rate"] * 0.5 ** 5)


def test_plain_accelerate_loop(random_images, tiny_checkpoints):
    from accelerate import Accelerator

    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["convnext"])
    fs = FreezeScheduler(unfreeze_at_step=2, num_stages=1, lr_factor=0.1)
    fs.prepare_model(model)  # before the optimizer exists
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = T.get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=4)
    accelerator = Accelerator(cpu=True)
    loader = torch.utils.data.DataLoader(random_images(n=16), batch_size=4)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    fs.attach(optimizer, scheduler, max_steps=4)
    units = units_for(accelerator.unwrap_model(model))
    top0 = flat(units[-1].parameters())
    lrs, tops = [], []
    for step, batch in enumerate(loader):
        fs.update(step)
        model.train()
        loss = model(**batch).loss
        accelerator.backward(loss)
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        tops.append(not torch.equal(flat(units[-1].parameters()), top0))
    assert tops == [False, False, True, True]
    assert lrs == pytest.approx([1e-2, 0.75e-2, 0.1 * 0.5e-2, 0.1 * 0.25e-2])


def _accelerate_lr_run(ckpt, start=0, stop=8, state=None, *, random_images):
    """The README's plain Accelerate loop on optimizer steps [start, stop); returns (lr used per step, saved state)."""
    from accelerate import Accelerator

    model = T.AutoModelForImageClassification.from_pretrained(ckpt)
    fs = FreezeScheduler(unfreeze_at_step=4, num_stages=1, lr_factor=0.1)
    fs.prepare_model(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    sched = T.get_scheduler("linear", opt, num_warmup_steps=0, num_training_steps=16)
    accelerator = Accelerator(cpu=True)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    if state is not None:  # resuming: load the checkpoint, then attach at the step to continue from
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    fs.attach(opt, sched, max_steps=8, global_step=start)
    data = random_images(n=2)
    batch = {"pixel_values": data.x, "labels": data.y}
    lrs = {}
    for step in range(start, stop):
        fs.update(step)
        accelerator.backward(model(**batch).loss)
        lrs[step] = [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
        opt.zero_grad()
    return lrs, {"opt": opt.state_dict(), "sched": sched.state_dict()}


@pytest.mark.parametrize("num_processes", [1, 2])
def test_plain_accelerate_loop_lr_follows_optimizer_steps(random_images, tiny_checkpoints, monkeypatch, num_processes):
    """Under `accelerate launch --num_processes N` Accelerate steps the torch scheduler N times per optimizer step
    (split_batches=False). The lr factor must still switch at the unfreeze step, also after resuming."""
    import accelerate.scheduler

    class FakeState:  # what N processes look like to AcceleratedScheduler (the only place that reads it)
        pass

    FakeState.num_processes = num_processes
    monkeypatch.setattr(accelerate.scheduler, "AcceleratorState", FakeState)
    from accelerate import Accelerator

    # The reference: the same HF scheduler, unmodified, stepped by the same Accelerate wrapper.
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    dummy, ref = Accelerator(cpu=True).prepare(dummy, T.get_scheduler("linear", dummy, num_warmup_steps=0,
                                                                    num_training_steps=16))
    reference = []
    for _ in range(8):
        reference.append(ref.get_last_lr()[0])
        dummy.step()
        ref.step()
    assert reference == pytest.approx([1 - num_processes * s / 16 for s in range(8)], rel=1e-9)  # N steps per step
    expected = [reference[s] * (0.1 if s >= 4 else 1.0) for s in range(8)]

    ckpt = tiny_checkpoints["resnet"]
    full, _ = _accelerate_lr_run(ckpt, random_images=random_images)
    for step in range(8):
        assert full[step] == pytest.approx([expected[step]] * len(full[step]), rel=1e-9, abs=1e-15), step
    for resume_at in (2, 6):  # a checkpoint saved before / after the unfreeze at step 4
        _, state = _accelerate_lr_run(ckpt, stop=resume_at, random_images=random_images)
        resumed, _ = _accelerate_lr_run(ckpt, start=resume_at, state=state, random_images=random_images)
        for step in range(resume_at, 8):
            assert resumed[step] == pytest.approx(full[step], rel=1e-9, abs=1e-15), (resume_at, step)


def test_lr_factor_without_scheduler_is_refused(random_images, tiny_checkpoints):
    """attach(optimizer) alone cannot apply lr_factor: a clear error; the suggested constant LambdaLR works."""
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    fs = FreezeScheduler(unfreeze_at_step=2, num_stages=1, lr_factor=0.1)
    fs.prepare_model(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    with pytest.raises(ValueError, match=r"lr_factor=0.1 .*LambdaLR\(optimizer, lambda step: 1.0\)"):
        fs.attach(opt, max_steps=4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    fs.attach(opt, sched, max_steps=4)
    lrs = []
    for step in range(4):
        fs.update(step)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1], rel=1e-9)

    # stage_lr_decay works on the optimizer alone (no scheduler needed), but not without the optimizer.
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    fs = FreezeScheduler(unfreeze_at_step=0, num_stages=1, stage_lr_decay=0.5)
    fs.prepare_model(model)
    with pytest.raises(ValueError, match="stage_lr_decay=0.5 needs the optimizer"):
        fs.attach(None, max_steps=4)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    fs.attach(opt, max_steps=4)
    top = list(units_for(model)[-1].parameters())
    data = random_images(n=2)
    model(pixel_values=data.x, labels=data.y).loss.backward()
    before, grad = flat(top), torch.cat([p.grad.reshape(-1) for p in top])
    opt.step()
    assert_close(flat(top) - before, -0.5 * grad, ulps=SAME_OPS, scale=float(before.abs().max()))


def test_ddp_two_processes(tiny_checkpoints, tmp_path, torchrun):
    """torchrun --nproc_per_node 2 (gloo, CPU): ranks agree, the stage trained, frozen stages untouched."""
    from safetensors.torch import load_file

    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [*torchrun, str(REPO / "tests" / "ddp_freeze_script.py"), tiny_checkpoints["resnet"], str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world_size"] == 2 and r0["ddp"] == "DistributedDataParallel"
    ckpt = load_file(os.path.join(tiny_checkpoints["resnet"], "model.safetensors"))
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    # Parameters are all-reduced: identical on every rank. (Running stats of *trainable* BN layers follow each
    # rank's own last batch — plain DDP semantics; DDP re-broadcasts rank 0's buffers at every forward.)
    param_names = [n for n, _ in model.named_parameters()]
    for k in param_names:
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks diverged on {k}"
    units = units_for(model)
    names = {u.name: [n for n, p in model.named_parameters() if any(p is q for q in u.parameters())] for u in units}
    prefixes = {"stem": "resnet.embedder", "stage4": "resnet.encoder.stages.3"}
    for rank in (r0, r1):
        state = rank["state"]
        assert any(not torch.equal(state[n], ckpt[n]) for n in names["stage4"]), "stage4 did not train"
        frozen = [k for k in ckpt if k.startswith("resnet.") and not k.startswith(prefixes["stage4"])]
        assert frozen and all(torch.equal(state[k], ckpt[k]) for k in frozen)  # params and BN stats
        assert any("running_mean" in k for k in frozen)
        before_unfreeze = rank["at_step3"]
        assert all(torch.equal(before_unfreeze[n], ckpt[n]) for n in names["stage4"]), "stage4 moved while frozen"


# --- bad configuration ----------------------------------------------------------------------------------

def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="exactly one of"):
        FreezeScheduler(unfreeze_at_step=3, unfreeze_at_epoch=1, num_stages=1)
    with pytest.raises(ValueError, match="num_stages is required"):
        FreezeScheduler(unfreeze_at_step=3)
    with pytest.raises(ValueError, match="strictly increasing"):
        FreezeScheduler(schedule=[(0, 0), (5, 1), (3, 2)])
    with pytest.raises(ValueError, match="lr_factor"):
        FreezeScheduler(unfreeze_at_step=3, num_stages=1, lr_factor=0)


def test_too_many_stages(random_images, tiny_checkpoints, tmp_path):
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    with pytest.raises(ValueError, match="only 5 stages"):
        T.Trainer(model=model, args=targs(tmp_path), train_dataset=random_images(),
                  callbacks=[FreezeScheduler(unfreeze_at_step=1, num_stages=7)])


def test_unfreeze_after_max_steps_warns(random_images, tiny_checkpoints, tmp_path, caplog):
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    trainer = T.Trainer(model=model, args=targs(tmp_path, max_steps=2), train_dataset=random_images(),
                        callbacks=[FreezeScheduler(unfreeze_at_step=5, num_stages=1)])
    with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn"):
        trainer.train()
    assert "will never happen" in caplog.text


def test_unsupported_architecture(random_images, tmp_path):
    cfg = T.PoolFormerConfig(hidden_sizes=[8] * 4, depths=[1] * 4, num_encoder_blocks=4)
    model = T.PoolFormerForImageClassification(cfg)
    with pytest.raises(UnsupportedArchitectureError, match="'poolformer' is not supported"):
        T.Trainer(model=model, args=targs(tmp_path), train_dataset=random_images(size=32),
                  callbacks=[FreezeScheduler(unfreeze_at_step=1, num_stages=1)])


def test_unsupported_scheduler(random_images, tiny_checkpoints, tmp_path):
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    args = targs(tmp_path, lr_scheduler_type="reduce_lr_on_plateau", eval_strategy="steps", eval_steps=2)
    trainer = T.Trainer(model=model, args=args, train_dataset=random_images(), eval_dataset=random_images(n=4), callbacks=[FreezeScheduler(unfreeze_at_step=1, num_stages=1, lr_factor=0.1)])
    with pytest.raises(ValueError, match="LambdaLR-based scheduler"):
        trainer.train()


def test_added_too_late(random_images, tiny_checkpoints, tmp_path):
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    for p in model.resnet.parameters():
        p.requires_grad_(False)
    trainer = T.Trainer(model=model, args=targs(tmp_path), train_dataset=random_images())
    trainer.add_callback(FreezeScheduler(unfreeze_at_step=1, num_stages=1))
    with pytest.raises(RuntimeError, match="Trainer\\(callbacks=\\[...\\]\\)"):
        trainer.train()


def test_fsdp_and_deepspeed_refused_with_what_the_schedule_does(tiny_checkpoints):
    """Refused at Trainer(...), and the reason names what this schedule needs from the optimizer: a later unfreeze,
    per-stage learning rates (full fine-tuning with stage_lr_decay: then dropping the decay is a fix), or frozen
    stages kept out of it."""
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])

    def refused(engine, **kw):
        args = type("A", (DdpArgs,), {"world_size": 1, "fsdp": "full_shard"} if engine == "FSDP"
                    else {"world_size": 1, "deepspeed": "ds_config.json"})
        with pytest.raises(ValueError, match=f"does not support {engine}") as e:
            FreezeScheduler(**kw).on_init_end(args, None, None, model=model)
        return str(e.value)

    for engine in ("FSDP", "DeepSpeed"):
        msg = refused(engine, unfreeze_at_step=2, num_stages=1)
        assert "unfreezes stages ['stage4'] during training" in msg and "drop stage_lr_decay" not in msg
        msg = refused(engine, schedule=[(0, "all")], stage_lr_decay=0.5)
        assert "own learning rate (stage_lr_decay)" in msg and "unfreezes" not in msg
        assert "Or drop stage_lr_decay" in msg
        msg = refused(engine, schedule=[(0, 1)], stage_lr_decay=0.5)  # top-1: still needs the callback
        assert "own learning rate" in msg and "drop stage_lr_decay" not in msg
        msg = refused(engine, schedule=[(0, 1)])
        assert "keeps the frozen stages out of the optimizer" in msg


def test_tf_style_bn_momentum_in_trained_stages_is_converted(tiny_checkpoints, caplog, random_images, tmp_path):
    """A plain transformers MobileNetV2 keeps TensorFlow's BN decay (0.997) as PyTorch momentum: its running stats
    would follow the last batch once a stage trains. FreezeScheduler converts it in the stages it trains (one INFO
    line), so two lines suffice; with fix_batchnorm_momentum=False it only warns, with the fix."""
    from hf_transfer_cnn import fix_tf_bn_momentum

    def bns(model, unit=-1):
        return [m for mod in units_for(model)[unit].modules for m in mod.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    def prepare(model, **kw) -> str:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hf_transfer_cnn"):
            FreezeScheduler(**kw).prepare_model(model)
        return caplog.text

    plain = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["mobilenet_v2"])
    assert bns(plain) and all(m.momentum == pytest.approx(0.997) for m in bns(plain))
    text = prepare(plain, unfreeze_at_step=2, num_stages=1, fix_batchnorm_momentum=False)
    assert "fix_tf_bn_momentum(model)" in text and "momentum 0.997" in text
    assert all(m.momentum == pytest.approx(0.997) for m in bns(plain))
    text = prepare(plain, schedule=[(0, 0)])  # feature extraction: no BN layer trains, nothing converted
    assert "converted" not in text and all(m.momentum == pytest.approx(0.997) for m in bns(plain))
    text = prepare(plain, unfreeze_at_step=2, num_stages=1)
    assert text.count("BatchNorm momentum of") == 1 and "fix_tf_bn_momentum(model)" not in text
    assert all(m.momentum == pytest.approx(0.003) for m in bns(plain))
    assert all(m.momentum == pytest.approx(0.997) for m in bns(plain, unit=0))  # frozen throughout: untouched
    assert fix_tf_bn_momentum(plain) > 0  # the rest, by hand, is still possible
    assert "converted" not in prepare(TransferModel.from_pretrained(tiny_checkpoints["mobilenet_v2"]),
                                      unfreeze_at_step=2, num_stages="all")

    # the two-line script: running statistics of a trained stage move by the PyTorch momentum, not to the last batch
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["mobilenet_v2"])
    top = bns(model)
    before = [m.running_var.clone() for m in top]
    args = T.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=4,
                               use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True)
    T.Trainer(model=model, args=args, train_dataset=random_images(n=4, size=64, num_labels=4),
              callbacks=[FreezeScheduler(unfreeze_at_step=0, num_stages=1)]).train()
    moved = max(float(((m.running_var - b).abs() / b.abs().clamp_min(1e-3)).max()) for m, b in zip(top, before))
    assert 0 < moved < 0.05  # with momentum 0.997 the stats jump to the batch's (23-73 % measured)


class DdpArgs:  # what a 2-process Trainer run looks like to the callback
    deepspeed = deepspeed_plugin = fsdp = ddp_static_graph = parallel_mode = None
    n_gpu = 0
    world_size = 2
    ddp_find_unused_parameters = None
    activation_checkpointing = gradient_checkpointing = False


def test_trainer_ddp_needs_find_unused_parameters_only_for_stages_kept_for_later(tiny_checkpoints):
    """Stages registered for a later unfreeze get no gradient until then: Trainer's DDP must find unused params.
    It does by default; ddp_find_unused_parameters=False, or activation checkpointing with it unset (Trainer then
    turns it off), is refused at Trainer(...). With nothing kept for later (fine_tuning) False is allowed."""
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])

    def init(args, **kw):
        FreezeScheduler(**kw).on_init_end(args, None, None, model=model)

    gradual, fixed = dict(unfreeze_at_step=2, num_stages=1), dict(schedule=[(0, 1)])
    init(type("A", (DdpArgs,), {}), **gradual)  # unset, no checkpointing: Trainer uses find_unused=True
    init(type("A", (DdpArgs,), {"ddp_find_unused_parameters": False}), **fixed)
    with pytest.raises(ValueError, match=r"stages \['stage4'\] without gradients.*ddp_find_unused_parameters=True"):
        init(type("A", (DdpArgs,), {"ddp_find_unused_parameters": False}), **gradual)
    with pytest.raises(ValueError, match="With activation checkpointing on, Trainer turns"):
        init(type("A", (DdpArgs,), {"activation_checkpointing": True}), **gradual)
    init(type("A", (DdpArgs,), {"activation_checkpointing": True, "ddp_find_unused_parameters": True}), **gradual)
    init(type("A", (DdpArgs,), {"ddp_find_unused_parameters": False, "world_size": 1}), **gradual)  # no DDP
    # a stage trained first and frozen again later gets no gradient from then on: the same check applies
    with pytest.raises(ValueError, match=r"stages \['stage4'\] without gradients in part of the schedule"):
        init(type("A", (DdpArgs,), {"ddp_find_unused_parameters": False}), schedule=[(0, 1), (3, 0)])
    with pytest.raises(ValueError, match=r"stages \['stage3'\] without gradients"):
        init(type("A", (DdpArgs,), {"ddp_find_unused_parameters": False}), schedule=[(0, 1), (3, 2), (6, 1)])


def test_dataparallel_is_refused_only_when_stages_change(tiny_checkpoints):
    """Several GPUs without a launcher (nn.DataParallel): a schedule that freezes or unfreezes stages during the run
    is refused; fixed stages (fine_tuning's, full fine-tuning with stage_lr_decay) run, as plain freezing does."""
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    dp = type("A", (DdpArgs,), {"n_gpu": 2, "world_size": 1, "parallel_mode": "not_distributed"})
    with pytest.raises(ValueError, match="nn.DataParallel"):
        FreezeScheduler(unfreeze_at_step=2, num_stages=1).on_init_end(dp, None, None, model=model)
    with pytest.raises(ValueError, match="nn.DataParallel"):
        FreezeScheduler(schedule=[(0, 2), (3, 1)]).on_init_end(dp, None, None, model=model)  # stage3 refrozen
    FreezeScheduler(schedule=[(0, 1)], stage_lr_decay=0.5).on_init_end(dp, None, None, model=model)
    FreezeScheduler(schedule=[(0, "all")], stage_lr_decay=0.5).on_init_end(dp, None, None, model=model)


def test_trainer_ddp_check_uses_the_flag_trainer_fixed_at_init(tiny_checkpoints):
    """Trainer picks DDP's find_unused_parameters when it is created. Checkpointing turned on in the model after
    that does not change it, so on_train_begin must not refuse; turned on before, it is refused at on_init_end."""
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    args = type("A", (DdpArgs,), {})
    fs = FreezeScheduler(unfreeze_at_step=2, num_stages=1)
    fs.on_init_end(args, None, None, model=model)  # no checkpointing: Trainer's DDP finds unused params
    model.resnet.encoder.gradient_checkpointing = True  # what gradient_checkpointing_enable() sets
    assert model.is_activation_checkpointing
    fs._check_trainer_ddp(args, model)  # on_train_begin's check: Trainer's flag is still True
    with pytest.raises(ValueError, match="With activation checkpointing on, Trainer turns"):
        FreezeScheduler(unfreeze_at_step=2, num_stages=1).on_init_end(args, None, None, model=model)


def test_plain_ddp_loop_checks_find_unused_parameters(random_images, tiny_checkpoints, caplog, monkeypatch):
    """A plain loop under DDP (what `accelerate launch` builds, find_unused_parameters=False by default): attach(...,
    model=ddp) refuses it with the fix, instead of DDP failing at step 2; with find_unused_parameters=True the
    kept stage runs frozen, then trains from its step. One gloo process, real DDP."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        data = random_images(n=8)
        batch = {"pixel_values": data.x, "labels": data.y}
        for find_unused in (False, True):
            model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
            fs = FreezeScheduler(unfreeze_at_step=2, num_stages=1)
            fs.prepare_model(model)
            ddp = DDP(model, find_unused_parameters=find_unused)
            opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.1)
            if not find_unused:
                with pytest.raises(ValueError, match=r"stages \['stage4'\].*DistributedDataParallelKwargs\("
                                                     r"find_unused_parameters=True\)"):
                    fs.attach(opt, model=ddp)
                with pytest.raises(RuntimeError, match="Expected to have finished reduction"):
                    for _ in range(2):  # what the check prevents: DDP fails at the second step
                        ddp(**batch).loss.backward()
                        opt.step()
                        opt.zero_grad()
                continue
            fs.attach(opt, model=ddp)
            top = units_for(model)[-1]
            changed = []
            for step in range(4):
                fs.update(step)
                before = flat(top.parameters())
                ddp(**batch).loss.backward()
                opt.step()
                opt.zero_grad()
                changed.append(not torch.equal(flat(top.parameters()), before))
            assert changed == [False, False, True, True]
        # given the unwrapped model (or none) in a run of several processes: a warning with the fix
        monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
        with caplog.at_level(logging.WARNING, logger="hf_transfer_cnn"):
            fs.attach(opt, model=model)
        assert "find_unused_parameters=True" in caplog.text and "stage4" in caplog.text
    finally:
        dist.destroy_process_group()


def test_lr_factor_follows_optimizer_steps_when_the_scheduler_skips_one(tiny_checkpoints):
    """fp16's grad scaler can skip an optimizer step; Trainer then skips scheduler.step() too. The factor must
    still switch at the optimizer step of the unfreeze."""
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    fs = FreezeScheduler(unfreeze_at_step=3, num_stages=1, lr_factor=0.1)
    fs.prepare_model(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    sched = T.get_scheduler("constant", opt, num_warmup_steps=0, num_training_steps=10)
    fs.attach(opt, sched, max_steps=10)
    state = T.TrainerState()
    lrs = {0: opt.param_groups[0]["lr"]}
    for gs in range(1, 6):
        if gs != 2:  # the update that became global step 2 was skipped by the scaler: no scheduler.step()
            opt.step()  # (no gradients: a no-op, keeps torch's step-order check quiet)
            sched.step()
        state.global_step = gs
        fs.on_step_end(None, state, None)
        lrs[gs] = opt.param_groups[0]["lr"]  # the lr the next update (global step gs) will use
    assert lrs == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0, 3: 0.1, 4: 0.1, 5: 0.1})


def test_unfreeze_at_step_zero_trains_from_the_start(random_images, tiny_checkpoints, tmp_path):
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    rec = Recorder(model)
    T.Trainer(model=model, args=targs(tmp_path, max_steps=2), train_dataset=random_images(),
              callbacks=[FreezeScheduler(unfreeze_at_step=0, num_stages=1, lr_factor=0.5), rec]).train()
    assert first_change(rec, rec.units[-1].name) == 1
    assert rec.lr_used[0] == [pytest.approx(0.025)] * len(rec.lr_used[0])


# --- misuse (hardening) ---------------------------------------------------------------------------------------

def test_two_freeze_schedulers_in_one_trainer_are_refused(random_images, tiny_checkpoints, tmp_path):
    """Both would freeze/unfreeze the same stages and fold their factors into one scheduler: refused at Trainer
    creation. A new scheduler for a new Trainer on the same model (a second run) is fine."""
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    first = FreezeScheduler(unfreeze_at_step=2, num_stages=1)
    with pytest.raises(ValueError, match=r"Two FreezeSchedulers.*one Trainer.*schedule=\[\(step, stages\)"):
        T.Trainer(model=model, args=targs(tmp_path), train_dataset=random_images(),
                  callbacks=[first, FreezeScheduler(unfreeze_at_step=4, num_stages=2, lr_factor=0.1)])
    with pytest.raises(ValueError, match="Two FreezeSchedulers"):  # the same instance twice as well
        T.Trainer(model=model, args=targs(tmp_path), train_dataset=random_images(), callbacks=[first, first])
    kept = T.Trainer(model=model, args=targs(tmp_path, max_steps=1), train_dataset=random_images(), callbacks=[first])
    second = T.Trainer(model=model, args=targs(tmp_path, max_steps=3), train_dataset=random_images(),
                       callbacks=[FreezeScheduler(unfreeze_at_step=1, num_stages=1)])
    second.train()
    assert kept is not None


class Stream(torch.utils.data.IterableDataset):  # a streaming dataset: no __len__
    def __init__(self, data):
        self.data = data

    def __iter__(self):
        for i in range(len(self.data)):
            yield self.data[i]


def test_unfreeze_at_epoch_with_an_iterable_dataset_names_the_fix(random_images, tiny_checkpoints, tmp_path):
    model = T.AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    trainer = T.Trainer(model=model, args=targs(tmp_path, max_steps=4), train_dataset=Stream(random_images()),
                        callbacks=[FreezeScheduler(unfreeze_at_epoch=1, num_stages=1)])
    with pytest.raises(ValueError, match=r"unfreeze_at_epoch=1 .*no length.*IterableDataset.*unfreeze_at_step"):
        trainer.train()


@pytest.mark.parametrize("kw, name", [
    (dict(lr_factor=float("inf")), "lr_factor=inf"), (dict(lr_factor=float("nan")), "lr_factor=nan"),
    (dict(stage_lr_decay=float("nan")), "stage_lr_decay=nan"),
    (dict(stage_lr_decay=float("inf")), "stage_lr_decay=inf"),
])
def test_non_finite_lr_settings_are_refused_at_construction(kw, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        FreezeScheduler(unfreeze_at_step=3, num_stages=1, **kw)
    with pytest.raises(ValueError, match=r"^unfreeze_at_epoch=(nan|inf) must be"):
        FreezeScheduler(unfreeze_at_epoch=float(name.split("=")[1]), num_stages=1)
