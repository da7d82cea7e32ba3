"""The default fast path's conv + activation fusion and the opt-in compiled copies: exact against the plain
module, refused where a module is shared or its output reused, falling back (with one logged reason) when a build
fails, rebuilt for a new dtype; builds over a second log their duration."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn

from hf_transfer_cnn import FastOptions, TransferModel
from hf_transfer_cnn.fastpath import FAST_ATTR, FusedConvAct, build_inference_copy, fusion, runtime
from tolerance import OTHER_KERNELS, assert_close

ACTIVATIONS = [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-1.0, 2.0), nn.SiLU(), nn.Hardswish(), nn.GELU(),
               nn.GELU(approximate="tanh"), nn.LeakyReLU(0.1), nn.Sigmoid(), nn.Tanh(), nn.ReLU(inplace=True)]
CONVS = [dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),
         dict(in_channels=3, out_channels=8, kernel_size=3, stride=2, bias=False),
         dict(in_channels=3, out_channels=6, kernel_size=3, padding="same", groups=3),
         dict(in_channels=3, out_channels=8, kernel_size=1, padding="valid", dilation=2)]


def _conv_bn_act(conv_kwargs: dict, act: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv2d(**conv_kwargs)
    bn = nn.BatchNorm2d(conv.out_channels)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    return nn.Sequential(conv, bn, act).eval()


def _n_fused(module) -> int:
    return sum(isinstance(m, FusedConvAct) for m in module.modules())


@pytest.mark.skipif(not fusion.pointwise_conv_available(), reason="this torch build has no oneDNN fused conv")
@pytest.mark.parametrize("conv_kwargs", CONVS, ids=["pad1", "stride2-nobias", "same-depthwise", "valid-dilated"])
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: repr(a))
def test_conv_fused_with_its_activation_matches_the_plain_module(conv_kwargs, act):
    module = _conv_bn_act(conv_kwargs, act)
    x = torch.randn(4, 3, 12, 12)
    fast = build_inference_copy(module, x)
    assert _n_fused(fast) == 1 and not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    with torch.no_grad():
        for inp in (x, torch.randn(1, 3, 12, 12), torch.randn(5, 3, 15, 13)):  # other batch and image sizes
            expected = module(inp.clone())
            assert_close(fast(inp.contiguous(memory_format=torch.channels_last)), expected)
            assert_close(fast(inp.clone()), expected)  # NCHW input too
    assert module[1].__class__ is nn.BatchNorm2d and module[2] is act  # the original is untouched


class _SharedAct(nn.Module):  # one ReLU instance after two convs (torchvision's BasicBlock does this)
    def __init__(self):
        super().__init__()
        self.a, self.b, self.relu = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()

    def forward(self, x):
        return self.relu(self.b(self.relu(self.a(x))))


class _PreActivationReused(nn.Module):  # the conv output feeds the activation and, functionally, an add
    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        return self.act(y) + y


class _InPlaceResidual(nn.Module):  # transformers' ResNet block: conv, BN, ``h += residual``, then the activation
    def __init__(self):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()

    def forward(self, x):
        h = self.bn2(self.conv2(self.act1(self.conv1(x))))
        h += x
        return self.act2(h)


@pytest.mark.parametrize("block,fusable", [(_SharedAct, 0), (_PreActivationReused, 0), (_InPlaceResidual, 1)],
                         ids=["shared-activation", "reused-output", "in-place-residual"])
def test_a_conv_output_used_elsewhere_or_changed_in_place_is_not_fused(block, fusable, caplog):
    """Only a conv whose output goes, unchanged, to its activation alone is fused: these never even pair (nothing
    for the check against the plain module to refuse, so no fallback is logged)."""
    module = block().eval()
    x = torch.randn(3, 3, 8, 8)
    with caplog.at_level(logging.INFO, logger="hf_transfer_cnn.fastpath"):
        fast = build_inference_copy(module, x)
    assert _n_fused(fast) == fusable and "changed its output" not in caplog.text
    with torch.no_grad():
        assert_close(fast(x), module(x))


@pytest.mark.parametrize("failure", ["wrong", "raises"])
def test_a_failing_fusion_falls_back_with_one_logged_reason(monkeypatch, caplog, failure):
    original = FusedConvAct.forward

    def broken(self, x):
        if failure == "raises":
            raise RuntimeError("no oneDNN primitive for this conv")
        return original(self, x) * 1.01

    monkeypatch.setattr(FusedConvAct, "forward", broken)
    module = _conv_bn_act(CONVS[0], nn.ReLU())
    x = torch.randn(4, 3, 12, 12)
    with caplog.at_level(logging.INFO, logger="hf_transfer_cnn.fastpath"):
        fast = build_inference_copy(module, x)
    assert _n_fused(fast) == 0 and not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())  # still folded
    records = [r for r in caplog.records if "Fusing convs" in r.getMessage()]
    assert len(records) == 1
    assert ("raise RuntimeError: no oneDNN primitive" if failure == "raises" else "changed its output") in \
        records[0].getMessage()
    with torch.no_grad():
        assert_close(fast(x), module(x))


def _fast_and_plain(path: str) -> tuple[TransferModel, TransferModel]:
    """The same weights, top stage trainable: with the default fast path, and with it off."""
    fast = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=1).eval()
    plain = TransferModel.from_pretrained(path, num_labels=3, trainable_stages=1).eval()
    plain.load_state_dict(fast.state_dict())
    plain.freeze(1, fast=FastOptions(enabled=False))
    return fast, plain


def test_copies_rebuilt_for_a_new_dtype_and_under_autocast(tiny_checkpoints):
    fast, plain = _fast_and_plain(tiny_checkpoints["mobilenet_v2"])
    x = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        assert_close(fast(x).logits, plain(x).logits)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 autocast: a copy of its own, unfused
            low, expected = fast(x).logits, plain(x).logits
        assert_close(low.float(), expected.float(), ulps=OTHER_KERNELS * 4)
        for m in (fast, plain):
            m.double()
        assert_close(fast(x.double()).logits, plain(x.double()).logits)
    slots = [m.__dict__[FAST_ATTR] for m in fast.modules() if FAST_ATTR in m.__dict__]
    dtypes = {sig[0] for s in slots for sig in s.copies}
    assert dtypes == {torch.float64}  # the float32 copies were dropped with the weights' change
    assert all(_n_fused(s.copy) == 0 for s in slots)  # oneDNN's fused conv is float32 only


def test_compile_option_is_verified_and_falls_back(monkeypatch, caplog):
    module = _conv_bn_act(CONVS[0], nn.SiLU())
    x = torch.randn(4, 3, 12, 12)

    def failing_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", failing_compile)
    with caplog.at_level(logging.INFO, logger="hf_transfer_cnn.fastpath"):
        fast = build_inference_copy(module, x, FastOptions(compile=True))
    assert isinstance(fast, nn.Module) and _n_fused(fast) == 0  # the eager copy (compile fuses on its own)
    assert "torch.compile failed on Sequential (RuntimeError: no C++ compiler)" in caplog.text
    with torch.no_grad():
        assert_close(fast(x), module(x))


def test_compiled_copy_matches_the_plain_module():
    """The opt-in torch.compile copy, compiled and checked when built, at batch and image sizes it was not built for
    (a machine without a compiler falls back, verified the same way)."""
    module = _conv_bn_act(CONVS[0], nn.ReLU6())
    x = torch.randn(4, 3, 12, 12)
    fast = build_inference_copy(module, x, FastOptions(compile=True))
    with torch.no_grad():
        for inp in (x, torch.randn(6, 3, 12, 12)):
            assert_close(fast(inp.contiguous(memory_format=torch.channels_last)), module(inp))


def test_slow_builds_log_their_duration(tiny_checkpoints, monkeypatch, caplog):
    monkeypatch.setattr(runtime, "SLOW_BUILD_S", 0.0)  # every build counts as slow
    model = TransferModel.from_pretrained(tiny_checkpoints["resnet"], num_labels=3, trainable_stages=1).eval()
    with caplog.at_level(logging.INFO, logger="hf_transfer_cnn.fastpath"):
        model(torch.randn(2, 3, 40, 40))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Fast path: built")]
    n_frozen_modules = sum(len(u.modules) for u in model.stage_units()[:-1])
    pattern = r"Fast path: built the frozen \w+'s inference copy for input \(\d+, \d+, \d+\) in \d+\.\d s\."
    assert len(lines) == n_frozen_modules and all(re.fullmatch(pattern, m) for m in lines), lines
    caplog.clear()
    monkeypatch.setattr(runtime, "SLOW_BUILD_S", 1e9)
    model.freeze(1)
    with caplog.at_level(logging.INFO, logger="hf_transfer_cnn.fastpath"):
        model(torch.randn(2, 3, 40, 40))
    assert not [r for r in caplog.records if r.getMessage().startswith("Fast path: built")]


def test_copies_rebuilt_when_the_weights_move_to_new_storage(tiny_checkpoints):
    """What a device move does to the weights (new tensors, the same values), on CPU: the copies are rebuilt from the
    new tensors, never kept pointing at the old ones (a CPU stand-in: no second device here)."""
    model, plain = _fast_and_plain(tiny_checkpoints["resnet"])
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        model(x)
    slots = [m.__dict__[FAST_ATTR] for m in model.modules() if FAST_ATTR in m.__dict__]
    before = [s.copy for s in slots]
    assert all(c is not None for c in before)
    model._apply(lambda t: t.clone())  # Module.to(device) swaps every parameter and buffer for a new tensor
    with torch.no_grad():
        assert_close(model(x).logits, plain(x).logits)
    assert all(s.copy is not None and s.copy is not old for s, old in zip(slots, before))  # rebuilt, not reused


def test_a_batchnorm_with_a_forward_of_its_own_is_left_alone(caplog):
    """timm's BatchNormAct2d is a BatchNorm2d that also applies its activation: folding it would drop that, so it is
    not folded — and the plain BatchNorm in the same module still is (no fallback for the whole copy)."""
    class BatchNormReLU(nn.BatchNorm2d):
        def forward(self, x):
            return torch.relu(super().forward(x))

    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BatchNormReLU(8), _conv_bn_act(
        dict(in_channels=8, out_channels=8, kernel_size=3, padding=1), nn.ReLU())).eval()
    with torch.no_grad():
        module[1].running_mean.uniform_(-1, 1)
        module[1].running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 12, 12)
    with caplog.at_level(logging.INFO, logger="hf_transfer_cnn.fastpath"):
        fast = build_inference_copy(module, x)
    assert isinstance(fast[1], BatchNormReLU) and _n_fused(fast) == 1 and "its output" not in caplog.text
    assert sum(type(m) is nn.BatchNorm2d for m in fast.modules()) == 0
    with torch.no_grad():
        assert_close(fast(x), module(x))
