"""Frozen stages at the edges: input gradients, accelerate hooks, the whole-prefix graph cache, cache resets."""

from __future__ import annotations

import threading

import pytest
import torch

from hf_transfer_cnn import FastOptions, TransferModel
from hf_transfer_cnn import freezing as F
from hf_transfer_cnn.fastpath import FAST_ATTR, PREFIX_ATTR, OneDNNGraph, clear_inference_copies, copies, runtime
from tolerance import OTHER_KERNELS, assert_close, max_error_ulps


def _plain_reference(model: TransferModel, path) -> TransferModel:
    """The same weights, nothing frozen, run as the plain modules (frozen modules' forward untouched)."""
    reference = TransferModel.from_pretrained(path, num_labels=3, trainable_stages="all")
    reference.load_state_dict(model.state_dict())
    return reference


def _record_builds(monkeypatch) -> tuple[list, list]:
    """Record every inference-copy build: whole-prefix graphs (an nn.Sequential of frozen modules) as (input size,
    options), per-module copies as (which module, input size)."""
    prefix, per_module = [], []
    original = runtime.build_inference_copy

    def recording(module, x, options=FastOptions(), use_jit=False):
        if isinstance(module, torch.nn.Sequential):
            prefix.append((tuple(x.shape[1:]), options))
        else:
            per_module.append((id(module), tuple(x.shape[1:])))
        return original(module, x, options, use_jit=use_jit)

    monkeypatch.setattr(runtime, "build_inference_copy", recording)
    return prefix, per_module


def _run_concurrently(work, n: int = 4) -> None:
    """Run ``work(i)`` for i in 0..n-1, each in a thread, all released at once; fail on any thread's error."""
    start, errors = threading.Barrier(n), []

    def run(i):
        try:
            start.wait()
            work(i)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_input_gradient_reaches_the_input_but_not_frozen_stages_kept_for_later(tiny_checkpoints):
    """Adversarial training / input-gradient penalties: a frozen stage whose parameters keep requires_grad=True (what
    FreezeScheduler sets up) passes the gradient on to the input and gives its own parameters none."""
    path = tiny_checkpoints["resnet"]
    model = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=1)
    frozen_names = model.freeze_state.frozen_stage_names
    model.freeze(1, keep_requires_grad=frozen_names)
    reference = _plain_reference(model, path)
    frozen = [u for u in model.stage_units() if u.name in frozen_names]
    frozen_ref = [u for u in reference.stage_units() if u.name in frozen_names]
    assert frozen and all(p.requires_grad for u in frozen for p in u.parameters())
    for u in frozen_ref:
        for p in u.parameters():
            p.requires_grad_(False)
    model.train()
    reference.train()
    for u in frozen_ref:
        for m in u.modules:
            m.eval()
    params_before = [id(p) for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 40, 40, generator=g)
    labels = torch.tensor([0, 1, 2, 0])
    grads = []
    for m in (model, reference):
        inp = x.clone().requires_grad_(True)
        torch.manual_seed(0)
        m(pixel_values=inp, labels=labels).loss.backward()
        grads.append(inp.grad)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert_close(grads[0], grads[1])
    assert all(p.grad is None for u in frozen for p in u.parameters())
    trainable = dict(model.named_parameters())
    for name, p in reference.named_parameters():
        if p.requires_grad:  # the trainable stage and the head train as usual
            assert_close(trainable[name].grad, p.grad)
    assert [id(p) for p in model.parameters()] == params_before  # the real parameters are back in place
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())


def test_accelerate_hooks_run_while_frozen_and_after_unfreeze(tiny_checkpoints):
    from accelerate.hooks import ModelHook, add_hook_to_module

    class Count(ModelHook):
        def __init__(self):
            self.n = 0

        def pre_forward(self, module, *args, **kwargs):
            self.n += 1
            return args, kwargs

    path = tiny_checkpoints["resnet"]
    model = TransferModel.from_pretrained(path, num_labels=3, trainable_stages="all").eval()
    reference = _plain_reference(model, path).eval()
    stages = model.resnet.encoder.stages
    on_stage, on_block, added_late = Count(), Count(), Count()
    add_hook_to_module(stages[0], on_stage)
    add_hook_to_module(stages[1].layers[0], on_block)  # a hook inside a frozen module: no inference copy skips it
    hook_forward = stages[0].forward
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        expected = reference(x).logits
        model(x)
        model.freeze(0)
        add_hook_to_module(stages[2], added_late)  # hooked after freezing
        assert_close(model(x).logits, expected)
        assert (on_stage.n, on_block.n, added_late.n) == (2, 2, 1)
        model.unfreeze()
        assert_close(model(x).logits, expected)
    assert (on_stage.n, on_block.n, added_late.n) == (3, 3, 2)
    assert stages[0].forward is hook_forward
    model.train()
    model(x).logits.sum().backward()  # unfrozen, the late-hooked stage trains through its hook
    assert all(p.grad is not None for p in stages[2].parameters())


def test_prefix_graph_follows_fast_options(tiny_checkpoints, monkeypatch):
    path = tiny_checkpoints["efficientnet"]
    model = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=2).eval()
    model.freeze(2, fast=FastOptions(jit=True))  # the whole-prefix graph is TorchScript's, opt-in
    reference = _plain_reference(model, path).eval()
    builds = _record_builds(monkeypatch)[0]
    x = torch.randn(4, 3, 40, 40)
    with torch.no_grad():
        model(x)
        options = FastOptions(jit=True, fuse=False, fold_bn=False)
        model.freeze(2, fast=options)
        assert_close(model(x).logits, reference(x).logits)
    assert [o for _, o in builds] == [FastOptions(jit=True), options]
    graph = model.__dict__[PREFIX_ATTR].graph
    assert isinstance(graph, torch.jit.ScriptModule) and not isinstance(graph, OneDNNGraph)


def _two_size_setup(tiny_checkpoints, monkeypatch):
    """(model with a frozen prefix, its plain reference, the recorded prefix builds, inputs of two sizes)."""
    path = tiny_checkpoints["efficientnet"]
    model = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=1).eval()
    model.freeze(1, fast=FastOptions(jit=True))
    reference = _plain_reference(model, path).eval()
    return model, reference, _record_builds(monkeypatch)[0], [torch.randn(3, 3, 40, 40), torch.randn(3, 3, 48, 48)]


def test_prefix_graph_per_input_size_built_once(tiny_checkpoints, monkeypatch):
    """Alternating input sizes (multi-scale, TTA, train vs eval size) reuse one graph per size."""
    model, reference, builds, xs = _two_size_setup(tiny_checkpoints, monkeypatch)
    with torch.no_grad():
        for i in range(6):
            x = xs[i % 2]
            assert_close(model(x).logits, reference(x).logits)
        assert sorted(s for s, _ in builds) == [(3, 40, 40), (3, 48, 48)]
        monkeypatch.setattr(runtime, "MAX_SHAPES", 2)  # bounded: a third size starts afresh
        model(torch.randn(3, 3, 56, 56))
    _, graphs = model.__dict__[PREFIX_ATTR].entry
    assert list(graphs) == [((3, 56, 56), torch.float32)]


def test_default_copies_are_built_once_whatever_the_input_sizes(tiny_checkpoints, monkeypatch):
    """The default (eager) copies do not depend on the input size: a last partial batch, an evaluation batch size or
    a new image size reuse them, so a shape that occurs once costs no build."""
    path = tiny_checkpoints["efficientnet"]
    model = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=1).eval()
    reference = _plain_reference(model, path).eval()
    prefix, per_module = _record_builds(monkeypatch)
    with torch.no_grad():
        for shape in ((4, 3, 40, 40), (3, 3, 40, 40), (7, 3, 40, 40), (1, 3, 48, 48), (5, 3, 56, 56)):
            x = torch.randn(*shape)
            assert_close(model(x).logits, reference(x).logits)
    n_frozen_modules = sum(len(u.modules) for u in model.stage_units()[:-1])
    assert not prefix and len(per_module) == len({m for m, _ in per_module}) == n_frozen_modules


def test_prefix_graph_built_once_under_concurrent_calls(tiny_checkpoints, monkeypatch):
    model, reference, builds, xs = _two_size_setup(tiny_checkpoints, monkeypatch)
    with torch.no_grad():
        expected = [reference(x).logits for x in xs]
    results = {}

    def work(i):
        with torch.no_grad():
            results[i] = [model(xs[(i + k) % 2]).logits for k in range(3)]

    _run_concurrently(work)
    assert sorted(s for s, _ in builds) == [(3, 40, 40), (3, 48, 48)]
    for i, outs in results.items():
        for k, out in enumerate(outs):
            assert_close(out, expected[(i + k) % 2])


def test_keep_requires_grad_refuses_a_bare_string(tiny_checkpoints):
    model = TransferModel.from_pretrained(tiny_checkpoints["resnet"], num_labels=3, trainable_stages=0)
    with pytest.raises(TypeError, match=r"keep_requires_grad=\['stage4'\]"):
        model.freeze(0, keep_requires_grad="stage4")
    state = model.freeze(0, keep_requires_grad=["stage4"])
    assert state.keep_requires_grad == {"stage4"}


def test_refrozen_stage_drops_its_grads_so_the_optimizer_cannot_move_it(tiny_checkpoints):
    """A plain loop zeroing grads in place (set_to_none=False) after freeze(0): the frozen stage's old .grad would
    let AdamW's momentum and weight decay keep moving it. Freezing drops those grads; the stage stays bit-exact
    while the head still trains."""
    torch.manual_seed(0)
    model = TransferModel.from_pretrained(tiny_checkpoints["resnet"], num_labels=3, trainable_stages=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    model.train()
    model(pixel_values=x, labels=y).loss.backward()
    opt.step()
    model.freeze(0, keep_requires_grad=["stage4"])  # also for a stage kept in the optimizer for later
    top = [p for u in model.stage_units()[-1:] for p in u.parameters()]
    assert top and all(p.grad is None for p in top)
    before = [p.detach().clone() for p in top]
    head = model.classifier[-1].weight.detach().clone()
    for _ in range(3):
        opt.zero_grad(set_to_none=False)
        model(pixel_values=x, labels=y).loss.backward()
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(top, before))
    assert not torch.equal(model.classifier[-1].weight, head)


@pytest.mark.parametrize("model_type", ["resnet", "mobilenet_v2", "efficientnet"])
def test_forward_hooks_on_frozen_stages_fire_once_per_call_on_the_real_module(tiny_checkpoints, model_type):
    """Hooks on a frozen stage and inside it, registered before the first call or between calls, fire exactly once
    per forward, with the user's module (copies and whole-prefix graphs would run them on the probe batches, twice,
    on clones, or not at all). Without hooks the fast path comes back; outputs match the plain model throughout."""
    path = tiny_checkpoints[model_type]
    model = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=1).eval()
    reference = _plain_reference(model, path).eval()
    stage = model.stage_units()[1].modules[0]
    inner = next(m for m in stage.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    handles = [stage.register_forward_hook(lambda mod, i, o: seen.append(("stage", mod is stage))),
               inner.register_forward_hook(lambda mod, i, o: seen.append(("inner", mod is inner)))]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(x).logits
        for _ in range(4):  # first calls build copies/graphs, later ones use them
            seen.clear()
            assert_close(model(x).logits, want)
            assert sorted(seen) == [("inner", True), ("stage", True)]
        for h in handles:
            h.remove()
        model(x)
        late = []
        handle = stage.register_forward_hook(lambda mod, i, o: late.append(o.shape))
        for _ in range(3):
            model(x)
        assert len(late) == 3
        handle.remove()
        assert_close(model(x).logits, want)
    fast = [m for m in stage.modules() if FAST_ATTR in m.__dict__]
    assert fast and any(m.__dict__[FAST_ATTR].copies for m in fast)  # copies in use again once unhooked


def test_clear_inference_copies_picks_up_data_writes(tiny_checkpoints):
    """Writes through .data leave the version counter alone; clear_inference_copies makes the copies follow."""
    for model_type in ("resnet", "efficientnet"):  # per-module copies and the whole-prefix graph
        path = tiny_checkpoints[model_type]
        model = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=0).eval()
        x = torch.randn(4, 3, 40, 40)
        with torch.no_grad():
            model(x)
            for p in model.base_model.parameters():
                p.data.mul_(0.5)
            clear_inference_copies(model)
            got = model(x).logits
        reference = _plain_reference(model, path).eval()
        with torch.no_grad():
            assert_close(got, reference(x).logits)


def test_per_module_copies_built_once_under_concurrent_calls(tiny_checkpoints, monkeypatch):
    """Hidden states make each frozen unit run its own inference copy; threads sharing the model build each once."""
    path = tiny_checkpoints["resnet"]
    model = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=1).eval()
    reference = _plain_reference(model, path).eval()
    builds = _record_builds(monkeypatch)[1]
    x = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        expected = reference(x).logits
    results = []

    def work(i):
        with torch.no_grad():
            results.extend(model(x, output_hidden_states=True).logits for _ in range(2))

    _run_concurrently(work)
    assert len(results) == 8
    n_frozen_modules = sum(len(u.modules) for u in model.stage_units()[:-1])
    assert len(builds) == len(set(builds)) == n_frozen_modules
    for out in results:
        assert_close(out, expected)


@pytest.mark.parametrize("first_batch", [1, 2])
def test_inference_graph_checked_at_another_batch_size(tiny_checkpoints, monkeypatch, first_batch):
    """A graph traced on the first batch is checked on a batch of another size, however small the first one is,
    so a graph that baked the batch size in never goes into use."""
    seen = []
    original = copies.freeze_graph

    def recording(module, x, check, expected, fuse=True):
        seen.append((len(x), len(check), len(expected)))
        return original(module, x, check, expected, fuse=fuse)

    monkeypatch.setattr(copies, "freeze_graph", recording)
    model = TransferModel.from_pretrained(tiny_checkpoints["resnet"], num_labels=3, trainable_stages=1).eval()
    model.freeze(1, fast=FastOptions(jit=True))
    with torch.no_grad():
        model(torch.randn(first_batch, 3, 40, 40), output_hidden_states=True)  # per-module graphs
        model(torch.randn(first_batch, 3, 48, 48))  # the whole-prefix graph
    assert len(seen) >= 2
    assert all(probe == first_batch and check == expected == first_batch + 1 for probe, check, expected in seen)


def _replicate_like_data_parallel(network: torch.nn.Module) -> torch.nn.Module:
    """torch.nn.parallel.replicate for one replica on the same device (it needs CUDA): every module's
    `_replicate_for_data_parallel`, then a differentiable copy of each weight set as a plain attribute."""
    modules = list(network.modules())
    copies = [m._replicate_for_data_parallel() for m in modules]
    index = {m: i for i, m in enumerate(modules)}
    for m, r in zip(modules, copies):
        for key, child in m._modules.items():
            r._modules[key] = None if child is None else copies[index[child]]
        for key, p in m._parameters.items():
            if p is None:
                r._parameters[key] = None
            else:
                setattr(r, key, p.clone())
        for key, b in m._buffers.items():
            if b is not None:
                setattr(r, key, b.clone())
    return copies[0]


def test_data_parallel_replica_is_frozen_and_runs_its_own_weights(tiny_checkpoints, monkeypatch):
    """nn.DataParallel replicates the model at every step, each replica on its device. A replica's frozen stages must
    run the replica's weights (the original's are on another device), stay frozen, and build no inference copies
    (new weight tensors every step); gradients reach the original's trainable parameters only."""
    path = tiny_checkpoints["resnet"]
    model = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=1).train()
    prefix_builds, builds = _record_builds(monkeypatch)
    x, labels = torch.randn(4, 3, 40, 40), torch.tensor([0, 1, 2, 0])
    torch.manual_seed(0)
    expected = model(pixel_values=x).logits.detach()
    builds.clear()
    prefix_builds.clear()

    replica = _replicate_like_data_parallel(model)
    frozen_units = [u for u in replica.stage_units() if u.name in model.freeze_state.frozen_stage_names]
    assert frozen_units and all(F.is_frozen(m) and m.forward.module is m and not m.training
                                for u in frozen_units for m in u.modules)
    torch.manual_seed(0)
    out = replica(pixel_values=x, labels=labels)
    out.loss.backward()
    assert builds == [] and prefix_builds == []
    assert_close(out.logits, expected)
    trainable = set(model.freeze_state.trainable_stage_names)
    for u in model.stage_units():
        assert all((p.grad is not None) == (u.name in trainable) for p in u.parameters())

    first = frozen_units[0].modules[0]  # the replica's own weights are what runs
    conv = next(m for m in first.modules() if isinstance(m, torch.nn.Conv2d))
    conv.weight = conv.weight.detach() * 0
    with torch.no_grad():
        # farther apart than any rounding: the zeroed weights were used
        assert max_error_ulps(replica(pixel_values=x).logits, model.eval()(pixel_values=x).logits) > OTHER_KERNELS
