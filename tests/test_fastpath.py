"""Frozen stages run as inference copies (BN folded, convs fused with their activations, channels_last; TorchScript
graphs and torch.compile opt-in) — exact, fresh, undone on unfreeze, and no TorchScript on the default path."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from hf_transfer_cnn import FastOptions, TransferModel
from hf_transfer_cnn.fastpath import FAST_ATTR as _FAST
from hf_transfer_cnn.fastpath import PREFIX_ATTR
from hf_transfer_cnn.fastpath import FusedConvAct, OneDNNGraph, build_inference_copy, is_inference_graph
from hf_transfer_cnn.fastpath.graphs import freeze_graph as _freeze_graph
from tolerance import OTHER_KERNELS, SAME_OPS, assert_close

BN_TYPES = ["resnet", "regnet", "efficientnet", "mobilenet_v1", "mobilenet_v2"]


def _slots(model):
    return [m.__dict__[_FAST] for m in model.modules() if _FAST in m.__dict__]


def _fused(copy_) -> int:
    return sum(isinstance(m, FusedConvAct) for m in copy_.modules()) if isinstance(copy_, torch.nn.Module) else 0


# the tiny checkpoints whose frozen stages have a conv consumed by an activation module (after folding its BN)
FUSABLE_TYPES = ["resnet", "regnet", "efficientnet", "mobilenet_v1", "mobilenet_v2"]


def test_fast_frozen_path_matches_plain(tiny_checkpoints, native_type):
    """Every execution mode (defaults: eager, folded, fused; opt-in TorchScript graphs) against the plain frozen
    modules, in training mode with a trainable top stage."""
    path = tiny_checkpoints[native_type]
    fast = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=1).train()
    models = {"fast": fast}
    for name, options in (("plain", FastOptions(enabled=False)), ("graph", FastOptions(jit=True)),
                          ("unfused", FastOptions(fuse=False))):
        models[name] = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=1)
        models[name].load_state_dict(fast.state_dict())
        models[name].freeze(1, fast=options)
        models[name].train()
    frozen = [m for u in fast.stage_units()[:-1] for m in u.modules]
    state0 = [{k: v.clone() for k, v in m.state_dict().items()} for m in frozen]
    x = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    logits = {}
    for name, model in models.items():
        torch.manual_seed(0)  # same dropout masks in the trainable part
        logits[name] = model(x).logits
    for name in ("fast", "graph", "unfused"):
        # the trainable top stage's BatchNorm normalises by a batch of 4's statistics, which magnifies rounding
        assert_close(logits[name], logits["plain"], ulps=4 * OTHER_KERNELS, msg=name)
    assert not _slots(models["plain"])
    slots = _slots(fast)
    assert slots and all(s.copy is not None and not is_inference_graph(s.copy) for s in slots)
    assert PREFIX_ATTR not in fast.__dict__ or fast.__dict__[PREFIX_ATTR].graph is None
    assert (sum(_fused(s.copy) for s in slots) > 0) == (native_type in FUSABLE_TYPES)
    assert sum(_fused(s.copy) for s in _slots(models["unfused"])) == 0
    if native_type in BN_TYPES:
        remaining = sum(isinstance(m, torch.nn.BatchNorm2d) for s in slots for m in s.copy.modules())
        original = sum(isinstance(m, torch.nn.BatchNorm2d) for u in fast.stage_units()[:-1] for mod in u.modules
                       for m in mod.modules())
        assert original > 0 and remaining < original / 2, (remaining, original)
    # Modules whose forward turns tensor shapes into Python numbers (BiT's dynamic padding, MobileNet's TF padding)
    # trace with warnings and stay eager copies, by design; the others run as frozen inference graphs (one for the
    # whole frozen prefix where it reproduces the modules, else one per module).
    prefix = models["graph"].__dict__.get(PREFIX_ATTR)
    graphs = [s.copy for s in _slots(models["graph"])] + ([prefix.graph] if prefix else [])
    if native_type in ("resnet", "regnet", "convnext", "convnextv2", "efficientnet"):
        assert any(is_inference_graph(c) for c in graphs), "no frozen inference graph on CPU"
    for m, before in zip(frozen, state0):  # frozen parameters and stats are never touched
        assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_default_path_uses_no_torchscript(tiny_checkpoints, monkeypatch):
    """With torch.jit's trace/script/freeze/optimize_for_inference raising, the defaults build their copies, fuse,
    and a training step gives the plain frozen model's result."""
    def no_jit(*args, **kwargs):
        raise AssertionError("TorchScript used on the default fast path")

    for name in ("trace", "script", "freeze", "optimize_for_inference"):
        monkeypatch.setattr(torch.jit, name, no_jit)
    path = tiny_checkpoints["mobilenet_v2"]
    fast = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=2)
    plain = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=2)
    plain.load_state_dict(fast.state_dict())
    plain.freeze(2, fast=FastOptions(enabled=False))
    x, y = torch.randn(6, 3, 40, 40), torch.tensor([0, 1, 2, 0, 1, 2])
    grads = []
    for model in (fast, plain):
        model.train()
        torch.manual_seed(0)
        torch.nn.functional.cross_entropy(model(x).logits, y).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    # some gradients are ~0 by cancellation (a BN bias feeding a training-mode BN): rounding is relative to the
    # largest gradient, not to their own size
    scale = max(float(g.abs().max()) for g in grads[1].values())
    for name, g in grads[0].items():
        assert_close(g, grads[1][name], ulps=4 * OTHER_KERNELS, scale=scale, msg=name)
    assert sum(_fused(s.copy) for s in _slots(fast)) > 0


def test_whole_prefix_graph_follows_freeze_and_weights(tiny_checkpoints):
    """TransferModel runs its frozen prefix as one graph; a new freeze boundary or new weights rebuild it."""
    model = TransferModel.from_pretrained(tiny_checkpoints["efficientnet"], num_labels=3, trainable_stages=2).eval()
    model.freeze(2, fast=FastOptions(jit=True))  # opt-in: TorchScript graphs
    reference = TransferModel.from_pretrained(tiny_checkpoints["efficientnet"], num_labels=3, trainable_stages=2)
    reference.load_state_dict(model.state_dict())
    reference.freeze(2, fast=FastOptions(enabled=False))
    reference.eval()
    x = torch.randn(4, 3, 40, 40)
    assert_close(model(x).logits, reference(x).logits)
    key, graph = model.__dict__[PREFIX_ATTR].key, model.__dict__[PREFIX_ATTR].graph
    assert is_inference_graph(graph) and len(key[0]) == sum(len(u.modules) for u in model.stage_units()[:-2])
    model.freeze(0, fast=FastOptions(jit=True))
    reference.freeze(0, fast=FastOptions(enabled=False))
    with torch.no_grad():
        for m in (model, reference):
            m.efficientnet.embeddings.convolution.weight.mul_(1.5)
    assert_close(model(x).logits, reference(x).logits)
    assert model.__dict__[PREFIX_ATTR].key != key


def _onednn_fuses() -> bool:
    """Whether this torch build's oneDNN Graph fuses a conv + ReLU (not every build does, e.g. some aarch64 ones)."""
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        return isinstance(_freeze_graph(m, x[:2], x, m(x)), OneDNNGraph)


requires_fusion = pytest.mark.skipif(not _onednn_fuses(), reason="this torch build's oneDNN Graph does not fuse")


@requires_fusion
def test_onednn_fused_prefix_matches_at_every_batch_size_and_restores_the_switch(tiny_checkpoints):
    """The (opt-in) frozen graph is oneDNN-fused (conv + activation + add), reproduces the plain model at batch sizes
    it was not built for, and leaves torch's process-wide fusion switch as it found it; fuse=False gives the
    prepacked graph instead."""
    path = tiny_checkpoints["efficientnet"]
    reference = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=2).eval()
    reference.freeze(2, fast=FastOptions(enabled=False))
    fused = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=2).eval()
    fused.freeze(2, fast=FastOptions(jit=True))
    prepacked = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=2).eval()
    prepacked.freeze(2, fast=FastOptions(jit=True, fuse=False))
    for m in (fused, prepacked):
        m.load_state_dict(reference.state_dict())
    g = torch.Generator().manual_seed(0)
    for batch in (4, 7, 7, 7, 1, 4):
        x = torch.randn(batch, 3, 40, 40, generator=g)
        expected = reference(x).logits
        assert_close(fused(x).logits, expected)
        assert_close(prepacked(x).logits, expected)
        assert torch.jit.onednn_fusion_enabled() is False
    assert isinstance(fused.__dict__[PREFIX_ATTR].graph, OneDNNGraph)
    fused(x)  # the last TorchScript graph run: the fused prefix, with oneDNN fusion groups in its optimised plan
    assert "oneDNNFusionGroup" in str(torch._C._last_executed_optimized_graph())
    graph = prepacked.__dict__[PREFIX_ATTR].graph
    assert isinstance(graph, torch.jit.ScriptModule)
    torch.jit.enable_onednn_fusion(True)  # a user's own setting survives our calls
    try:
        fused(torch.randn(2, 3, 40, 40))
        assert torch.jit.onednn_fusion_enabled() is True
    finally:
        torch.jit.enable_onednn_fusion(False)


@requires_fusion
def test_fused_graph_checks_new_batch_sizes_and_falls_back_to_the_plain_module(tiny_checkpoints, caplog):
    """oneDNN compiles kernels per batch size after the graph was verified; the first calls at each new size are
    checked against the plain module, and a wrong or failing kernel makes the graph hand over to it for good."""
    model = TransferModel.from_pretrained(tiny_checkpoints["efficientnet"], num_labels=3, trainable_stages=2).eval()
    model.freeze(2, fast=FastOptions(jit=True))
    reference = TransferModel.from_pretrained(tiny_checkpoints["efficientnet"], num_labels=3, trainable_stages=2)
    reference.load_state_dict(model.state_dict())
    reference.freeze(2, fast=FastOptions(enabled=False))
    reference.eval()
    x = torch.randn(4, 3, 40, 40)
    assert_close(model(x).logits, reference(x).logits)
    graph = model.__dict__[PREFIX_ATTR].graph
    assert isinstance(graph, OneDNNGraph) and graph.reference is not None and not graph.failed
    for _ in range(OneDNNGraph.WARMUP):
        model(x)
    assert graph.checked[4] == OneDNNGraph.WARMUP  # checked calls at batch 4; later calls run unchecked

    fused_module = graph.module

    class WrongAtBatch6:  # a kernel that goes wrong only at a batch size the graph was never checked at
        graph = fused_module.graph

        def __call__(self, inp):
            out = fused_module(inp)
            return out * 1.01 if len(inp) == 6 else out

    graph.module = WrongAtBatch6()
    x6 = torch.randn(6, 3, 40, 40)
    with caplog.at_level("WARNING", logger="hf_transfer_cnn.freezing"):
        got = model(x6).logits
    assert_close(got, reference(x6).logits)  # the plain module's answer
    assert graph.failed and "does not reproduce the module at batch size 6" in caplog.text
    assert_close(model(x).logits, reference(x).logits)

    def broken(inp):
        raise RuntimeError("could not compile partition")

    fresh = TransferModel.from_pretrained(tiny_checkpoints["efficientnet"], num_labels=3, trainable_stages=2).eval()
    fresh.load_state_dict(model.state_dict())
    fresh.freeze(2, fast=FastOptions(jit=True))
    fresh(x)
    fresh.__dict__[PREFIX_ATTR].graph.module = broken
    assert_close(fresh(x6).logits, reference(x6).logits)
    assert fresh.__dict__[PREFIX_ATTR].graph.failed and "raised RuntimeError" in caplog.text


def test_unfreeze_drops_copies_and_refreeze_rebuilds(tiny_checkpoints):
    model = TransferModel.from_pretrained(tiny_checkpoints["mobilenet_v2"], num_labels=3).eval()
    x = torch.randn(2, 3, 40, 40)
    model(x)
    assert _slots(model)
    model.unfreeze()
    assert not _slots(model)
    assert all(p.requires_grad for p in model.parameters())
    model.freeze(2)
    assert len(_slots(model)) > 0 and all(s.copy is None for s in _slots(model))


def test_copy_follows_weight_changes(tiny_checkpoints):
    """Loading new weights into a frozen stage (e.g. a checkpoint) is picked up at the next forward."""
    model = TransferModel.from_pretrained(tiny_checkpoints["resnet"], num_labels=3).eval()
    x = torch.randn(2, 3, 40, 40)
    model(x)
    state = model.state_dict()
    state = {k: (v + 0.05 * torch.randn_like(v) if v.is_floating_point() and "running_var" not in k else v)
             for k, v in state.items()}
    model.load_state_dict(state)
    reference = TransferModel.from_pretrained(tiny_checkpoints["resnet"], num_labels=3).eval()
    reference.load_state_dict(state)
    reference.freeze(0, fast=FastOptions(enabled=False))
    assert_close(model(x).logits, reference(x).logits)


def test_deepcopy_and_pickle(tiny_checkpoints):
    model = TransferModel.from_pretrained(tiny_checkpoints["efficientnet"], num_labels=3).eval()
    x = torch.randn(2, 3, 40, 40)
    expected = model(x).logits
    clone = copy.deepcopy(model)
    assert_close(clone(x).logits, expected, ulps=SAME_OPS)
    again = pickle.loads(pickle.dumps(model))
    assert_close(again(x).logits, expected, ulps=SAME_OPS)


def test_fold_refuses_when_output_would_change():
    """A BN fed by a conv output that is also used elsewhere is not folded (checked against the original)."""

    class Tricky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    m = Tricky().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    fast = build_inference_copy(m, x)
    assert_close(fast(x), m(x), ulps=SAME_OPS)


def test_pickle_package_family(tmp_path):
    from hf_transfer_cnn.convert import init_checkpoint

    init_checkpoint("lenet5", tmp_path / "lenet", num_labels=4, num_channels=1, image_size=28, seed=0)
    model = TransferModel.from_pretrained(tmp_path / "lenet", num_labels=3).eval()
    x = torch.randn(2, 1, 28, 28)
    again = pickle.loads(pickle.dumps(model))
    assert type(again).__name__ == "TransferLeNet5ForImageClassification"
    assert_close(again(x).logits, model(x).logits, ulps=SAME_OPS)


def test_building_a_copy_never_writes_into_the_input():
    """An in-place activation that is its own frozen module (timm NFNet's SiLU(inplace=True)) ran on a view of the
    caller's batch while its copy was checked: the first frozen call applied it twice."""
    x = torch.randn(4, 3, 8, 8)
    before = x.clone()
    copy = build_inference_copy(torch.nn.SiLU(inplace=True), x)
    assert torch.equal(x, before)
    assert torch.equal(copy(x.clone()), torch.nn.functional.silu(before))
