"""Shared fixtures: tiny checkpoints built locally, loaded by path (no Hub access in tests)."""

from __future__ import annotations

import os
import socket
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest
import torch
import transformers as T

T.logging.disable_progress_bar()
# One intra-op thread: the models here are tiny, and on a busy 2-core machine OpenMP's second thread spins waiting
# for a core (100x slower steps were measured). Multi-process tests (torchrun) use both cores.
torch.set_num_threads(1)

# One tiny config per transformers-native architecture (a few thousand parameters each).
TINY_CONFIGS = {
    "resnet": lambda: T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                     layer_type="basic"),
    "convnext": lambda: T.ConvNextConfig(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1]),
    "convnextv2": lambda: T.ConvNextV2Config(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1]),
    "regnet": lambda: T.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                     groups_width=8),
    "bit": lambda: T.BitConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], num_groups=4),
    "efficientnet": lambda: T.EfficientNetConfig(width_coefficient=0.1, depth_coefficient=0.2, hidden_dim=128),
    "mobilenet_v1": lambda: T.MobileNetV1Config(depth_multiplier=0.1),
    "mobilenet_v2": lambda: T.MobileNetV2Config(depth_multiplier=0.1),
}
NATIVE_TYPES = list(TINY_CONFIGS)


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Give BatchNorm layers non-trivial running stats/affine params, like a pretrained model has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def make_checkpoint(model_type: str, path, seed: int = 0, num_labels: int = 4, **config_overrides) -> str:
    """Save a randomly initialised tiny `model_type` checkpoint (with image processor) to `path`."""
    from hf_transfer_cnn.processing import default_image_processor

    config = TINY_CONFIGS[model_type]()
    config.num_labels = num_labels
    for k, v in config_overrides.items():
        setattr(config, k, v)
    torch.manual_seed(seed)
    model = T.AutoModelForImageClassification.from_config(config).eval()
    randomize_bn(model, seed)
    model.save_pretrained(path)
    default_image_processor(model_type, 64).save_pretrained(path)
    return str(path)


class RandomImages(torch.utils.data.Dataset):
    """Seeded random images and labels in Trainer's format (``pixel_values``, ``labels``)."""

    def __init__(self, n: int = 32, channels: int = 3, size: int = 40, num_labels: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, channels, size, size, generator=g)
        self.y = torch.randint(0, num_labels, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


@pytest.fixture(scope="session")
def random_images() -> type[RandomImages]:
    """The `RandomImages` dataset class: ``random_images(n=8, channels=1, size=64, num_labels=3)``."""
    return RandomImages


@pytest.fixture(scope="session")
def checkpoint_factory():
    """`make_checkpoint(model_type, path, seed=0, num_labels=4, **config_overrides)`: a saved tiny checkpoint."""
    return make_checkpoint


@pytest.fixture(params=NATIVE_TYPES)
def native_type(request) -> str:
    """Each transformers-native model type, one test per type."""
    return request.param


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """model_type -> directory of a saved tiny checkpoint (built once per test session)."""
    root = tmp_path_factory.mktemp("tiny_ckpts")
    return {t: make_checkpoint(t, root / t) for t in NATIVE_TYPES}


@pytest.fixture
def torchrun() -> list[str]:
    """The command that launches a script on 2 CPU processes (gloo), on a port free right now: concurrent test
    runs on one machine must not share a rendezvous port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(port)]


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("timm_sweep")``: a script of benchmarks/ imported as a module (benchmarks is no package)."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
